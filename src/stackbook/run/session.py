"""A runbook stepped through in JupyterLab as a run (``stackbook lab NAME -e ENV``): checked, recorded, ended.

``open_session`` does what ``stackbook run`` does before a kernel starts
(``engine.prepare``: parameters, approval, secrets; the run store checked), then
opens the ledger row (``ledger.open_run``: the exclusive lock, kind
``interactive``, the heartbeat) and holds it for the session's life. It writes
the session copy (the runbook with the ``injected-parameters`` cell a headless
run gets, ``execution.NotebookExecution.from_runbook``) to
``<state>/lab/<run id>/<runbook>.ipynb`` (0600 in a 0700 folder) and starts a
Jupyter server of its own on it as a child (127.0.0.1, a token, the headless
run's kernel environment: ``kernel.environment``; ``lab_server`` has its
configuration and save hooks, ``lab_kernel`` the kernel's extension). Then it
supervises: the session ends when ``stackbook.finish()`` runs in the kernel (the
supervisor waits ``SAVE_WAIT_S`` for a save after it), ``stackbook lab end ID``
(``end``), the kernel is shut down, the kernel dies, the server stops, or
Ctrl-C / SIGTERM. The server is stopped, every process of the run ended, and the
row finished by ``evaluate``: ``succeeded`` when every code cell of the session
copy ran in order without error (a restarted kernel starts the count again),
``failed`` naming the first cell that did not (its error, or that it never
ran), ``cancelled`` when Ctrl-C ended a session that was not complete. Cells
run out of order and cells that are not the runbook's (edited or added) are
marked in the row's ``cells`` and named in its reason. The session copy as
saved last, scrubbed, with the record in ``metadata.stackbook.run``, is the
run's executed notebook. A supervisor that dies leaves its row to the reaper
(``cancelled``: the session was abandoned) and its server dies with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import LedgerUnreachable, UsageError
from stackbook.core.files import atomic_write_text, make_dirs
from stackbook.run import engine, evidence, ledger, runstore
from stackbook.run.lab_kernel import CWD_ENV, SECRET_NAMES_ENV, source_sha256
from stackbook.run.lab_server import NOTEBOOK_ENV, SAVED_ENV
from stackbook.run.record import RunRecord

SAVE_WAIT_S = float(os.environ.get("STACKBOOK_LAB_SAVE_WAIT", "15"))  # after stackbook.finish(): a save, or this
#: a kernel's pid gone this long with no new kernel: it died (a restart brings a new pid within it)
RESTART_GRACE_S = float(os.environ.get("STACKBOOK_LAB_RESTART_GRACE", "8"))
SERVER_START_S = 90.0
POLL_S = 0.4
END_WAIT_S = 60.0  # `stackbook lab end` waits this long for the supervisor to finish the row


@dataclass
class Server:
    """The session's Jupyter server: its process, port and token."""

    proc: subprocess.Popen
    port: int
    token: str
    notebook: Path
    pump: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{self.notebook.name}?token={self.token}"

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def kernels(self) -> list | None:
        try:
            return self.get("/api/kernels")
        except OSError:
            return None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UsageError(f"the session's Jupyter server exited with code {self.proc.returncode} before "
                                 "it answered (its log is above)")
            try:
                self.get("/api/status")
                return
            except (OSError, ValueError):
                time.sleep(0.3)
        raise UsageError(f"the session's Jupyter server did not answer within {SERVER_START_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if self.pump is not None:
            self.pump.close()


def free_port(port: int | None) -> int:
    """PORT when it is free on 127.0.0.1 (UsageError, exit 2, otherwise), else a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port or 0))
        except OSError:
            raise UsageError(f"--port {port}: the port is in use on 127.0.0.1; give another one or leave --port out "
                             "(nothing was started)") from None
        return sock.getsockname()[1]


def _session_child() -> None:
    """In the server's process: owner-only files, its own process group, and death with the supervisor."""
    os.umask(0o077)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_server(notebook: Path, env: dict[str, str], port: int, scrubber) -> Server:
    """A Jupyter server on NOTEBOOK's folder, as a child, its log scrubbed to our standard error."""
    from stackbook.run import kernel, lab_server

    private = notebook.parent / ".stackbook"
    config, ipython_dir = lab_server.write_config(private, env[kernel.RUN_ID_ENV])
    token = secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={notebook.parent}", f"--config={config}"]
    if os.geteuid() == 0:  # containers: Jupyter refuses root unless told
        cmd.append("--allow-root")
    pump = kernel.OutputPump(scrubber)
    env = {**env, "IPYTHONDIR": str(ipython_dir)}
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=pump.writer, stderr=pump.writer,
                            cwd=str(notebook.parent), start_new_session=True, preexec_fn=_session_child)
    pump.release()
    return Server(proc=proc, port=port, token=token, notebook=notebook, pump=pump)


@dataclass
class Copy:
    """The session copy: where it is, and the code cells a complete session runs, in order."""

    path: Path
    expected: list[dict[str, Any]] = field(default_factory=list)  # {index, sha256, cell_id}


def write_copy(prep: engine.Prepared, folder: Path, output: str, scrubber) -> Copy:
    """The runbook with its injected parameters, scrubbed, as the session copy and the run store's first copy."""
    import uuid

    from stackbook.run import execution

    notebook = execution.NotebookExecution.from_runbook(prep.runbook, prep.params, output=output, scrubber=scrubber)
    nb = notebook.nb
    nb.nbformat_minor = max(nb.get("nbformat_minor") or 0, 5)  # cell ids: JupyterLab reports the cell that ran
    for cell in nb.cells:
        cell.setdefault("id", uuid.uuid4().hex[:8])
    nb.metadata.setdefault("stackbook", {})["session"] = {"run_id": Path(folder).name, "env": prep.env.name}
    text = json.dumps(scrubber.obj(nb), indent=1, ensure_ascii=False) + "\n"
    path = folder / f"{prep.runbook.name}.ipynb"
    atomic_write_text(path, text)
    runstore.write_text(output, text)
    expected = [{"index": i, "sha256": source_sha256(c.source), "cell_id": c.get("id")}
                for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    return Copy(path=path, expected=expected)


def server_environment(prep: engine.Prepared, *, run_id: str, output: str, database_url: str,
                       results_file: Path, copy: Path) -> dict[str, str]:
    """The headless run's kernel environment, and what the session's hooks and extension read."""
    from stackbook.run import kernel

    env = kernel.environment(prep, run_id=run_id, output=output, database_url=database_url,
                             results_file=results_file)
    return {**env, CWD_ENV: prep.cwd or str(project.root()), SECRET_NAMES_ENV: ",".join(sorted(prep.secrets)),
            NOTEBOOK_ENV: str(copy), SAVED_ENV: str(copy.parent / ".stackbook" / "saved.json"),
            "STACKBOOK_RUN_KIND": "interactive"}


@dataclass
class Verdict:
    status: str
    error: dict[str, Any] | None
    reason: str | None
    cells: list[dict[str, Any]]


def _position(entry: dict[str, Any], expected: list[dict[str, Any]]) -> int | None:
    """Where ENTRY's cell is in EXPECTED: by its source's hash (the cell as written), else None."""
    return next((k for k, e in enumerate(expected) if e["sha256"] == entry.get("sha256")), None)


def _cell_index(entry: dict[str, Any], expected: list[dict[str, Any]], ids: dict[str, int]) -> int | None:
    k = _position(entry, expected)
    return expected[k]["index"] if k is not None else ids.get(entry.get("cell_id") or "")


def evaluate(expected: list[dict[str, Any]], entries: list[dict[str, Any]], ids: dict[str, int]) -> Verdict:
    """The session's outcome from the cells the kernel recorded: every EXPECTED cell run, in order, without error
    since the kernel (last) started; each entry marked ``in_order`` and ``in_runbook``. IDS: cell id -> index."""
    done, last_error, marked = 0, {}, []
    out_of_order, edited = [], []
    for entry in entries:
        entry = dict(entry)
        marked.append(entry)
        if entry.get("event") == "kernel_started":
            done, last_error = 0, {}  # a new kernel: what ran before is gone
            continue
        if entry.get("event") not in ("cell", "finish"):
            continue
        index = _cell_index(entry, expected, ids)
        entry.update(index=index, in_runbook=_position(entry, expected) is not None, in_order=False)
        if done < len(expected) and entry.get("sha256") == expected[done]["sha256"]:
            entry["in_order"] = True
            if entry.get("ok"):
                done += 1
            else:
                last_error[done] = entry
            continue
        (out_of_order if entry["in_runbook"] else edited).append(index)
    notes = []
    if out_of_order:
        notes.append("cells run out of order: " + ", ".join(str(i) for i in out_of_order))
    if edited:
        notes.append("cells not as in the runbook (edited or added) ran: "
                     + ", ".join("?" if i is None else str(i) for i in edited))
    if done == len(expected):
        return Verdict("succeeded", None, "; ".join(notes) or None, marked)
    missing = expected[done]
    failure = last_error.get(done)
    if failure:
        error = {"cell_index": missing["index"], "ename": failure.get("ename"), "evalue": failure.get("evalue")}
        why = f"cell {missing['index']} raised {failure.get('ename')}: {failure.get('evalue')}"
    else:
        error = {"cell_index": missing["index"], "ename": "CellNotRun", "evalue": "the cell did not run in order"}
        why = f"cell {missing['index']} did not run in order (cells run in order: {done} of {len(expected)})"
    return Verdict("failed", error, "; ".join([why, *notes]), marked)


def _row_state(conn, run_id: str) -> dict[str, Any] | None:
    rows = ledger._query(conn, "select status, cells, kernel_pid from stackbook.runs where id = %s", (run_id,))
    return rows[0] if rows else None


@dataclass
class Watch:
    """What the supervisor has seen of the session so far."""

    finish_at: float | None = None
    dead_pid: int | None = None
    dead_since: float = 0.0


def _ended(server: Server, state: dict[str, Any], watch: Watch, saved: Path) -> str | None:
    """Why the session ended, or None while it goes on."""
    entries = state.get("cells") or []
    events = [e.get("event") for e in entries]
    if "end" in events:
        return "ended with `stackbook lab end`"
    if "finish" in events:
        if watch.finish_at is None:
            asked = next(e for e in entries if e.get("event") == "finish").get("at")
            watch.finish_at = datetime.fromisoformat(asked).timestamp() if asked else time.time()
        saved_at = json.loads(saved.read_text())["at"] if saved.exists() else 0
        if saved_at >= watch.finish_at or time.time() - watch.finish_at > SAVE_WAIT_S:
            return "finished by stackbook.finish()"
    pid = state.get("kernel_pid")
    if pid and not ledger._pid_alive(pid):
        if watch.dead_pid != pid:
            watch.dead_pid, watch.dead_since = pid, time.monotonic()
        if server.kernels() == []:
            return "the kernel was shut down"
        if time.monotonic() - watch.dead_since > RESTART_GRACE_S:
            return f"!the session's kernel (pid {pid}) died (killed or crashed); no new kernel started"
    return None


def supervise(row: ledger.OpenRun, server: Server, saved: Path) -> str:
    """Wait for the session's end; its reason ("!" first: a failure whatever ran; "^": Ctrl-C)."""
    watch = Watch()
    try:
        while True:
            if server.proc.poll() is not None:
                return f"the Jupyter server stopped (exit code {server.proc.returncode})"
            try:
                state = row.link.run(partial(_row_state, run_id=row.run_id), budget_s=0)
            except Exception:  # the database away for a moment: the heartbeat's link reconnects
                state = None
            if state is not None:
                why = _ended(server, state, watch, saved)
                if why:
                    return why
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        return "^the session was interrupted (Ctrl-C or SIGTERM)"


def finish(row: ledger.OpenRun, copy: Copy, why: str, results: dict, scrubber) -> RunRecord:
    """The row's final state from what ran, the session copy as saved last as the run's executed notebook."""
    current = row.current()
    nb = json.loads(copy.path.read_text(encoding="utf-8"))
    ids = {c.get("id"): i for i, c in enumerate(nb.get("cells", [])) if c.get("id")}
    verdict = evaluate(copy.expected, current.cells or [], ids)
    status, reason, error = verdict.status, verdict.reason, verdict.error
    if why.startswith("!"):
        status, why = "failed", why[1:]
        error = error or {"cell_index": None, "ename": "KernelDied", "evalue": why}
    elif why.startswith("^"):
        why = why[1:]
        status = "cancelled" if status != "succeeded" else status
    reason = scrubber.text(f"{why}; {reason}" if reason else why)
    try:  # the cells marked in order or not, before the final state (whose chain entry holds them)
        row.link.run(lambda conn: conn.execute("update stackbook.runs set cells = %s where id = %s",
                                               (json.dumps(scrubber.obj(verdict.cells)), row.run_id)), budget_s=10)
    except LedgerUnreachable:  # the final state goes to the spool; the cells as the kernel wrote them stay
        pass
    record = replace(row.current(), status=status, results=results, error=error, reason=reason)
    nb.setdefault("metadata", {}).setdefault("stackbook", {})["run"] = record.to_json()
    text = json.dumps(scrubber.obj(nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    sha = None
    try:
        runstore.write_text(current.output, text)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    except Exception as exc:  # the run store failed at the end: recorded, as a headless run does
        reason = f"{reason}; executed notebook not written: {scrubber.text(str(exc))}"
        status = "failed" if status == "succeeded" else status
    return row.finish(status, results=results, error=scrubber.obj(error), reason=reason, notebook_sha256=sha)


def _clean_up(server: Server | None, run_id: str, copy: Copy, scrubber) -> None:
    """The server stopped, every process of the run ended, the checkpoints scrubbed; the session copy stays."""
    from stackbook.run import kernel

    if server is not None:
        server.stop()
    kernel.end_run_processes(run_id)
    for path in (copy.path, *copy.path.parent.glob(".ipynb_checkpoints/*")):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if scrubber.text(text) != text:
                atomic_write_text(path, scrubber.text(text))


def open_session(name: str, options: engine.RunOptions, *, port: int | None = None,
                 on_ready: Callable[[dict[str, str]], None] | None = None) -> RunRecord:
    """Check as ``stackbook run`` does, open the row, serve the session copy, supervise, finish; the record.
    Bad input: UsageError (exit 2), a held lock or a missing approval: RefusedError (exit 3); nothing started."""
    from stackbook.run import db, kernel

    prep = engine.prepare(name, replace(options, kind="interactive"))
    runbook, env = prep.runbook, prep.env
    database_url = db.url()
    scrubber = engine._scrubber(prep, database_url)
    port = free_port(port)
    run_id = ledger.new_run_id()
    output = runstore.location(env.name, runbook.name, run_id, env.get("run_store"))
    runstore.check_writable(output, env.get("s3_endpoint"))
    params = scrubber.obj(prep.params)
    with ledger.open_run(run_id=run_id, runbook=runbook.name, path=str(runbook.path), env=env.name, params=params,
                         output=output, exclusive=bool(runbook.metadata.get("exclusive")),
                         git_commit=project.git_commit(), provenance=evidence.provenance(runbook, env, params), redact=scrubber.text,
                         kind="interactive", approval_id=prep.options.approval_id) as row:
        folder = make_dirs(project.state_dir() / "lab" / run_id)
        copy = write_copy(prep, folder, output, scrubber)
        results_file = kernel.scratch_dir() / f"{run_id}.results.jsonl"
        env_vars = server_environment(prep, run_id=run_id, output=output, database_url=database_url,
                                      results_file=results_file, copy=copy.path)
        server = None
        try:
            server = start_server(copy.path, env_vars, port, scrubber)
            server.wait_ready()
            if on_ready:
                on_ready({"run_id": run_id, "url": server.url, "notebook": str(copy.path)})
            why = supervise(row, server, Path(env_vars[SAVED_ENV]))
        except KeyboardInterrupt:
            why = "^the session was interrupted (Ctrl-C or SIGTERM) while it started"
        finally:
            _clean_up(server, run_id, copy, scrubber)
        from stackbook.core.results import read_results_file

        results = {**row.current().results, **scrubber.obj(read_results_file(str(results_file)))}
        results_file.unlink(missing_ok=True)
        return finish(row, copy, why, results, scrubber)


def end(run_id: str, operator: str | None = None) -> RunRecord:
    """Ask the session RUN_ID's supervisor to finish its row (``stackbook lab end``); the finished record."""
    with ledger.session() as conn:
        rec = ledger.get_run(conn, run_id)
        if rec is None:
            raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs --kind interactive`)")
        if rec.kind != "interactive":
            raise UsageError(f"run {run_id} is a {rec.kind} run, not a JupyterLab session: `stackbook lab end` "
                             "ends sessions only (nothing was changed)")
        if rec.status != "running":
            return rec
        entry = {"event": "end", "by": operator or evidence.declared_operator(),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        conn.execute("update stackbook.runs set cells = coalesce(cells, '[]'::jsonb) || %s::jsonb "
                     "where id = %s and status = 'running'", (json.dumps([entry]), run_id))
    deadline = time.monotonic() + END_WAIT_S
    while time.monotonic() < deadline:
        with ledger.session() as conn:  # reaps a supervisor that is gone
            rec = ledger.get_run(conn, run_id)
        if rec.status != "running":
            return rec
        time.sleep(POLL_S)
    raise UsageError(f"the supervisor of session {run_id} (pid {rec.pid} on {rec.host}) did not finish it within "
                     f"{END_WAIT_S:.0f} s; the reaper ends it when its heartbeat stops")

