"""``stackbook.record``: results a runbook reports, for the ledger and the book.

In a headless run the runner sets ``STACKBOOK_RESULTS_FILE``; each call appends
one JSON line there and the runner copies the results into the ledger row. In
a JupyterLab session (``stackbook lab NAME``) the session's kernel extension
(``stackbook.run.lab_kernel``) also writes each result to the session's ledger
row as it comes (a listener added with ``on_record``). Either way the value is
also shown in the notebook.

``stackbook.finish()`` is a runbook's last cell: it does nothing in a headless
run (the runner finishes the row when the last cell is done); in a session it
asks the session to finish its row now (the hook set with ``on_finish``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

RESULTS_ENV = "STACKBOOK_RESULTS_FILE"
_session: dict[str, Any] = {}
_listeners: list[Callable[[str, Any], None]] = []  # a session's ledger writer (stackbook.run.lab_kernel)
_finish_hook: list[Callable[[], Any]] = []  # set in a session only


def record(name: str, value: Any) -> Any:
    """Record a named result of this run. The value must be JSON-serialisable."""
    if not isinstance(name, str) or not name:
        raise ValueError("stackbook.record: name must be a non-empty string")
    try:
        line = json.dumps({"name": name, "value": value})
    except TypeError as exc:
        raise TypeError(f"stackbook.record({name!r}): value is not JSON-serialisable: {exc}") from exc
    _session[name] = value
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    for listener in _listeners:
        listener(name, value)
    _display(name, value)
    return value


def recorded() -> dict[str, Any]:
    """The results recorded so far in this kernel."""
    return dict(_session)


def finish() -> Any:
    """End this run: nothing in a headless run (it ends after its last cell); in a JupyterLab session the
    session's row is finished now, succeeded when every code cell ran in order without error."""
    if _finish_hook:
        return _finish_hook[-1]()
    return None


def on_record(listener: Callable[[str, Any], None]) -> None:
    """Call LISTENER(name, value) on every ``record`` (a session's kernel writes results to its row)."""
    _listeners.append(listener)


def on_finish(hook: Callable[[], Any]) -> None:
    """What ``finish()`` does in this kernel (a session's)."""
    _finish_hook.append(hook)


def read_results_file(path: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if not path or not os.path.exists(path):
        return results
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                results[item["name"]] = item["value"]
    return results


def _display(name: str, value: Any) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None:
        return
    display(
        {"text/plain": f"recorded {name} = {value!r}", "application/json": {name: value}},
        raw=True,
        metadata={"stackbook": {"result": name}},
    )
