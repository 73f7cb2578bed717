"""The IPython extension a session's kernel loads (``stackbook lab NAME``): the row learns what ran.

``load_ipython_extension`` is called by IPython when the session's kernel starts
(the session's ``ipython_kernel_config.py`` lists this module). It writes the
kernel's pid to the session's ledger row (``$STACKBOOK_RUN_ID`` over
``$DATABASE_URL``), notes the start in the row's ``cells`` (a restarted kernel
starts the in-order count again), moves the kernel to the working directory a
headless run has (``$STACKBOOK_LAB_CWD``), and registers IPython's execution
events: after each executed cell one entry is appended to ``cells``:
``{event: "cell", sha256, cell_id, execution_count, ok, ename, evalue, at}``
(the source's hash, not its text; the error's value scrubbed of the declared
secrets named in ``$STACKBOOK_SECRET_NAMES``). ``stackbook.record`` also writes
each result to the row's ``results`` as it comes, and ``stackbook.finish()``
appends a ``finish`` entry for the cell that calls it: the session's supervisor
(``stackbook.run.session``) sees it and finishes the row.

A failed write to the ledger never fails the engineer's cell: it is said once on
standard error and the supervisor still has the results file at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

CWD_ENV = "STACKBOOK_LAB_CWD"
SECRET_NAMES_ENV = "STACKBOOK_SECRET_NAMES"
FINISH_WAIT_S = 30.0  # how long stackbook.finish() waits for the supervisor to finish the row


def source_sha256(source: str) -> str:
    """The hash a cell's source is recorded and compared by (surrounding blank space ignored)."""
    return hashlib.sha256(source.strip().encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Recorder:
    """The session's row as the kernel writes it: cells, results, the kernel's pid, the finish request."""

    def __init__(self, run_id: str, database_url: str, secrets: dict[str, str]):
        from stackbook.run import scrub

        self.run_id, self.database_url = run_id, database_url
        self.scrubber = scrub.Scrubber(secrets)
        self._conn = None
        self._warned = False
        self._cell: dict[str, Any] = {}  # the cell running now: its hash and id
        self.finished = False

    def _execute(self, sql: str, args: tuple) -> list:
        try:
            if self._conn is None or self._conn.closed:
                import psycopg

                self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=10)
            cur = self._conn.execute(sql, args)
            return cur.fetchall() if cur.description else []
        except Exception as exc:  # never fail the engineer's cell for the ledger
            self._conn = None
            if not self._warned:
                self._warned = True
                print(f"stackbook: the session's ledger row could not be written ({type(exc).__name__}); "
                      "results are kept for the end of the session", file=sys.stderr)
            return []

    def append(self, entry: dict[str, Any]) -> None:
        self._execute("update stackbook.runs set cells = coalesce(cells, '[]'::jsonb) || %s::jsonb "
                      "where id = %s and status = 'running'", (json.dumps([entry]), self.run_id))

    def started(self) -> None:
        self._execute("update stackbook.runs set kernel_pid = %s where id = %s and status = 'running'",
                      (os.getpid(), self.run_id))
        self.append({"event": "kernel_started", "pid": os.getpid(), "at": _now()})

    def pre_run_cell(self, info) -> None:
        self._cell = {"sha256": source_sha256(info.raw_cell or ""), "cell_id": getattr(info, "cell_id", None),
                      "empty": not (info.raw_cell or "").strip(), "finish": False}

    def post_run_cell(self, result) -> None:
        cell, self._cell = self._cell, {}
        if not cell or cell["empty"] or cell["finish"]:
            return
        error = result.error_in_exec or result.error_before_exec
        self.append({"event": "cell", "sha256": cell["sha256"], "cell_id": cell["cell_id"],
                     "execution_count": result.execution_count, "ok": error is None,
                     "ename": type(error).__name__ if error is not None else None,
                     "evalue": self.scrubber.text(str(error))[:500] if error is not None else None, "at": _now()})

    def record(self, name: str, value: Any) -> None:
        self._execute("update stackbook.runs set results = results || %s::jsonb where id = %s and status = 'running'",
                      (self.scrubber.text(json.dumps({name: value})), self.run_id))

    def finish(self) -> str:
        """The finish request (the calling cell counts as run, without error), then the row's outcome."""
        cell = self._cell or {"sha256": None, "cell_id": None}
        self._cell["finish"] = True
        self.append({"event": "finish", "sha256": cell["sha256"], "cell_id": cell["cell_id"], "ok": True,
                     "ename": None, "evalue": None, "at": _now()})
        print(f"stackbook: finishing run {self.run_id}: save the notebook now (Ctrl+S), the copy saved last is the "
              "run's executed notebook", flush=True)
        deadline = time.monotonic() + FINISH_WAIT_S
        while time.monotonic() < deadline:
            rows = self._execute("select status, reason from stackbook.runs where id = %s", (self.run_id,))
            if rows and rows[0][0] != "running":
                self.finished = True
                return f"run {self.run_id} {rows[0][0]}" + (f": {rows[0][1]}" if rows[0][1] else "")
            time.sleep(0.3)
        return f"run {self.run_id}: still finishing; see `stackbook runs show {self.run_id}`"


def _secrets() -> dict[str, str]:
    names = [n for n in os.environ.get(SECRET_NAMES_ENV, "").split(",") if n]
    return {n: os.environ[n] for n in names if os.environ.get(n)}


def load_ipython_extension(ip) -> None:
    """IPython's entry point: hooks registered, the kernel's start written to the session's row."""
    from stackbook.core import results

    run_id, url = os.environ.get("STACKBOOK_RUN_ID"), os.environ.get("DATABASE_URL")
    if not run_id or not url:
        return  # not a session's kernel
    recorder = Recorder(run_id, url, _secrets())
    if os.environ.get(CWD_ENV) and os.path.isdir(os.environ[CWD_ENV]):
        os.chdir(os.environ[CWD_ENV])
    recorder.started()
    ip.events.register("pre_run_cell", recorder.pre_run_cell)
    ip.events.register("post_run_cell", recorder.post_run_cell)
    results.on_record(recorder.record)
    results.on_finish(lambda: print(recorder.finish()))
