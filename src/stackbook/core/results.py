"""``stackbook.record``: results a runbook reports, for the ledger and the book.

In a headless run the runner sets ``STACKBOOK_RESULTS_FILE``; each call appends
one JSON line there and the runner copies the results into the ledger row. In
JupyterLab (``stackbook lab``) the same call writes to the session's file under
``.stackbook/lab``. Either way the value is also shown in the notebook.
"""

from __future__ import annotations

import json
import os
from typing import Any

RESULTS_ENV = "STACKBOOK_RESULTS_FILE"
_session: dict[str, Any] = {}


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
    _display(name, value)
    return value


def recorded() -> dict[str, Any]:
    """The results recorded so far in this kernel."""
    return dict(_session)


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
