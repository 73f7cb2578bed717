"""The text of a notification: a title line a phone shows well, then short plain text.

What an on-call engineer needs first comes first: the title says which runbook,
what happened and where (``✖ load_jaffle_shop failed on prod``); the body lists
runbook, environment, status, operator, duration, the failing cell (its index
and first source line), the error, the run id, and links to the executed
notebook and the runbook's page in the book (``book_url`` in the environment
file). A ``recovered`` message names the failure it ends. Every field comes from
the ledger row, already scrubbed by the runner; the dispatcher scrubs the whole
text once more (channel secrets included) before it leaves the process.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.environments import Environment
from stackbook.notify import events
from stackbook.notify.events import RunView

MAX_ERROR_CHARS = 400
MAX_LINE_CHARS = 160
RECOVERY_LOOKBACK = 20  # earlier runs read to name the failures a recovery ends
VERBS = {"failed": "failed", "timed_out": "timed out", "cancelled": "was cancelled", "succeeded": "succeeded",
         "recovered": "recovered", "waiting": "waits for a manual step"}


@dataclass(frozen=True)
class Message:
    event: str
    title: str
    body: str

    @property
    def kind(self) -> str:
        """Apprise's notify type (info, success, warning, failure): the colour a chat client shows."""
        event = events.EVENTS.get(self.event)
        return event.kind if event else "info"


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())  # one line: the body is aligned "key: value" lines
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines(fields: list[tuple[str, Any]]) -> str:
    shown = [(k, v) for k, v in fields if v not in (None, "")]
    width = max((len(k) for k, _ in shown), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in shown)


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def when(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def operator(run: RunView | None = None) -> str:
    """Who ran it: this process's user at the run's host (and the approver and the approval's id, when the run
    consumed one: ``stackbook approve``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = os.environ.get("USER") or f"uid {os.getuid()}"
    host = (run.host if run else None) or socket.gethostname()
    approved = f" (approved by {run.approved_by})" if run and run.approved_by else ""
    if run and run.approved_by and run.approval_id:
        approved = f" (approved by {run.approved_by}, approval {run.approval_id})"
    return f"{user}@{host}{approved}"


def _first_line(source: Any) -> str | None:
    text = "".join(source) if isinstance(source, list) else str(source or "")
    line = next((s.strip() for s in text.splitlines() if s.strip()), None)
    return _clip(line, MAX_LINE_CHARS) if line else None


def _executed_cell(run: RunView) -> dict | None:
    """The failing cell of the executed notebook (local run stores only: a remote read is too slow here)."""
    from stackbook.run import runstore

    if not run.output or runstore.is_remote(run.output):
        return None
    try:
        nb = runstore.read_notebook(run.output)
    except (OSError, ValueError):
        return None
    cells = nb.get("cells") or []
    failed = [c for c in cells if (c.get("metadata", {}).get("papermill") or {}).get("status") == "failed"]
    if failed:
        return failed[0]
    index = run.error.get("cell_index")  # the index in the notebook as stored, markers included
    return cells[index] if isinstance(index, int) and 0 <= index < len(cells) else None


def _source_cell(run: RunView) -> dict | None:
    """The failing cell from the runbook's source: its index counts the injected parameters cell after the
    ``parameters`` one, as the executed notebook does, and papermill's two error markers before it (a failed or
    timed-out run's; a cancelled run has none)."""
    from stackbook.run.execution import MARKER_CELLS

    index = run.error.get("cell_index")
    if not run.path or not isinstance(index, int):
        return None
    if run.status != "cancelled":
        index -= MARKER_CELLS
    try:
        cells = json.loads(Path(run.path).read_text(encoding="utf-8")).get("cells") or []
    except (OSError, ValueError):
        return None
    tags = [c.get("metadata", {}).get("tags", []) for c in cells]
    after = next((i + 1 for i, t in enumerate(tags) if "parameters" in t), None)
    if after is not None:  # a notebook without a parameters cell (and values) gets no injected cell
        cells = cells[:after] + [{"source": "# Parameters"}] + cells[after:]
    return cells[index] if 0 <= index < len(cells) else None


def failing_cell(run: RunView) -> str | None:
    """``3: raise ValueError(message)``: the failing cell's index and first source line."""
    index = run.error.get("cell_index")
    if index is None:
        return None
    cell = _executed_cell(run) or _source_cell(run)
    line = _first_line(cell.get("source")) if cell else None
    return f"{index}: {line}" if line else str(index)


def error_text(error: dict) -> str | None:
    if not error or not error.get("ename"):
        return None
    value = error.get("evalue")
    return _clip(f"{error['ename']}: {value}" if value else error["ename"], MAX_ERROR_CHARS)


def page_url(env: Environment, runbook_path: str | None) -> str | None:
    """The runbook's page in the book (``book_url``/runbooks/AREA/NAME.html), for runbooks under runbooks/."""
    base = env.data.get("book_url")
    if not base or not runbook_path:
        return None
    try:
        rel = Path(runbook_path).resolve().relative_to(project.root().resolve())
    except ValueError:
        return None
    if not rel.parts or rel.parts[0] != "runbooks":
        return None
    return f"{str(base).rstrip('/')}/{rel.with_suffix('').as_posix()}.html"


def _status_line(run: RunView) -> str:
    err = run.error or {}
    where = f" at cell {err['cell_index']}" if err.get("cell_index") is not None else ""
    return f"{run.status}{where}" + (f" ({_clip(run.reason, MAX_LINE_CHARS)})" if run.reason and not where else "")


def for_run(event: str, run: RunView, env: Environment, ended: list[RunView] | None = None) -> Message:
    """The message of one finished run; ENDED: for ``recovered``, the failed runs since the last success."""
    title = f"{events.EVENTS[event].mark} {run.runbook} {VERBS.get(event, event)} on {run.env}"
    fields: list[tuple[str, Any]] = [
        ("runbook", run.runbook), ("environment", run.env), ("status", _status_line(run)),
        ("operator", operator(run)), ("duration", duration(run.duration_s)),
    ]
    if run.failed:
        fields += [("failing cell", failing_cell(run)), ("error", error_text(run.error))]
    if event == "recovered" and ended:
        fields.append(("ends", _ended(ended)))
    fields += [("run", run.id), ("pipeline run", run.pipeline_run_id),
               ("notebook", run.output), ("book", page_url(env, run.path))]
    return Message(event=event, title=title, body=_lines(fields))


def _ended(ended: list[RunView]) -> str:
    last = ended[0]
    count = f"{len(ended)}{'+' if len(ended) >= RECOVERY_LOOKBACK else ''} failed run{'s' if len(ended) > 1 else ''}"
    err = error_text(last.error)
    cell = f" at cell {last.error['cell_index']}" if last.error.get("cell_index") is not None else ""
    return (f"{count} since {when(ended[-1].started_at)}; the last: run {last.id} {last.status}{cell}"
            + (f": {err}" if err else ""))


def for_stale(runbook: str, env: Environment, state: str, detail: str, latest: RunView | None,
              last_success: RunView | None, runbook_path: str | None) -> Message:
    """What `stackbook check` sends for a runbook that is stale or failing."""
    title = f"{events.EVENTS['stale'].mark} {runbook} {state} on {env.name}"
    fields: list[tuple[str, Any]] = [
        ("runbook", runbook), ("environment", env.name), ("state", detail),
        ("last success", f"run {last_success.id} at {when(last_success.finished_at or last_success.started_at)}"
         if last_success else "never"),
        ("latest run", f"run {latest.id} {latest.status} at {when(latest.finished_at or latest.started_at)}"
         if latest else None),
    ]
    if latest and latest.failed:
        fields += [("failing cell", failing_cell(latest)), ("error", error_text(latest.error)),
                   ("notebook", latest.output)]
    fields += [("book", page_url(env, runbook_path)), ("found by", f"stackbook check on {socket.gethostname()}")]
    return Message(event="stale", title=title, body=_lines(fields))


def for_pipeline(summary: dict, env: Environment) -> Message:
    """The one summary of a failed pipeline run: which tasks failed, which did not run because of them."""
    failed = [t for t in summary.get("tasks", []) if t.get("name") in set(summary.get("failed") or [])]
    lines = []
    for task in failed:
        err = error_text(task.get("error") or {})
        lines.append(f"{task['name']} ({task.get('status')}" + (f", run {task['run_id']}" if task.get("run_id") else "")
                     + (f": {err}" if err else "") + ")")
    title = f"{events.EVENTS['failed'].mark} pipeline {summary.get('pipeline')} failed on {env.name}"
    fields = [
        ("pipeline", summary.get("pipeline")), ("environment", env.name), ("status", summary.get("status")),
        ("operator", operator()), ("duration", duration(summary.get("duration_s"))),
        ("failed tasks", "; ".join(lines) or None),
        ("not run", ", ".join(summary.get("upstream_failed") or []) or None),
        ("pipeline run", summary.get("pipeline_run_id")),
        ("rows", f"stackbook runs --pipeline-run {summary.get('pipeline_run_id')}"),
    ]
    return Message(event="failed", title=title, body=_lines(fields))


def for_test(env: Environment, route: Any, label: str) -> Message:
    """``stackbook notify test``: says which route and channel it tests, and nothing secret."""
    title = f"ℹ stackbook test message for {env.name}"
    fields = [
        ("environment", env.name), ("route", f"{route.index} (events: {', '.join(route.events)}; runbooks: "
                                              f"{', '.join(route.runbooks) or 'all'})"),
        ("channel", label), ("sent by", operator()), ("at", when(datetime.now(UTC))),
        ("meaning", "if you read this, failures of these runbooks will reach you here"),
    ]
    return Message(event="test", title=title, body=_lines(fields))
