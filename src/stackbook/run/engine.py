"""Running a runbook: check, record, execute, scrub, store.

``prepare`` does everything that can fail before a kernel starts (notebook,
environment, parameters, approval, secrets) and raises a ``UsageError`` or
``RefusedError``. ``execute`` takes the lock of an exclusive runbook, writes the
ledger row, runs the notebook in a fresh kernel through nbclient (as papermill
does, with papermill's parameter injection and error markers, and an immediate
kernel shutdown), scrubs every secret from what it writes, and finishes the
ledger row. ``run`` does both.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from stackbook.core import catalog, environments, notebooks, params as params_mod, project
from stackbook.run import ledger, runstore
from stackbook.run import scrub
from stackbook.core.errors import RefusedError, UsageError  # noqa: F401 (re-exported)
from stackbook.core.privacy import TELEMETRY_OFF
from stackbook.core.results import RESULTS_ENV, read_results_file

log = logging.getLogger("stackbook.run.engine")

AUTOSAVE_EVERY_S = 10.0
TIMEOUT_GRACE_S = 10.0
KERNEL_START_TIMEOUT_S = 60
ERROR_MARKER_TAG = "papermill-error-cell-tag"  # papermill's, so its tools recognise our markers
_ERROR_STYLE = 'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
ERROR_MESSAGE_TEMPLATE = (
    f"<span {_ERROR_STYLE}>An Exception was encountered at '<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
)
ERROR_ANCHOR_MSG = (
    f'<span id="papermill-error-cell" {_ERROR_STYLE}>Execution using papermill encountered an exception here '
    "and stopped:</span>"
)
UNSAFE_NO_SCRUB_ENV = "STACKBOOK_UNSAFE_NO_SCRUB"  # tests only: proves the canary search finds secrets


def _fast_imports() -> None:
    # jsonschema imports its optional rfc3987_syntax module (1 to 1.3 s here) when
    # nbformat loads it; nothing in stackbook validates IRI formats, so skip it.
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)


@dataclass
class RunOptions:
    env: str = environments.DEFAULT_ENV
    cli_params: list[str] = field(default_factory=list)
    params_file: str | None = None
    cell_timeout: float | None = None  # seconds per cell; None: no limit
    timeout: float | None = None  # seconds for the whole run; None: the runbook's metadata timeout, else none
    log_output: bool = False  # stream cell output to standard error
    progress: str = "auto"  # "bar", "lines", "off" or "auto" (a bar on a terminal, lines otherwise)
    approved_by: str | None = None
    pipeline_run_id: str | None = None
    attempt: int = 1
    extra_params: dict[str, Any] = field(default_factory=dict)  # from pipelines: below -p, above -f


@dataclass
class Prepared:
    runbook: notebooks.Runbook
    env: environments.Environment
    params: dict[str, Any]
    secrets: dict[str, str]
    options: RunOptions


def prepare(name: str, options: RunOptions) -> Prepared:
    """Every check that needs no kernel; raises UsageError (exit 2) or RefusedError (exit 3)."""
    runbook = catalog.load(name)
    env = environments.load(options.env)
    file_values = params_mod.load_file(options.params_file) if options.params_file else {}
    file_values = {**file_values, **options.extra_params}
    values = params_mod.resolve(
        runbook,
        cli=options.cli_params,
        file_values=file_values,
        env_shared=env.shared_params,
        env_runbook=env.runbook_params(runbook.name),
    )
    check_approval(runbook, env, values, options.approved_by)
    found = scrub.collect(runbook.metadata.get("secrets", []), env.name, runbook.name)
    found.update(scrub.collect_optional(runbook.metadata.get("optional_secrets", []), env.name))
    return Prepared(runbook=runbook, env=env, params=values, secrets=found, options=options)


def check_approval(runbook: notebooks.Runbook, env: environments.Environment, values: dict, approved_by: str | None):
    if not runbook.metadata.get("destructive"):
        return
    if values.get("dry_run", False) is not False:
        return  # dry runs need no approval
    if env.require_approval and not (approved_by or "").strip():
        raise RefusedError(
            f"runbook {runbook.name!r} is destructive and dry_run is False in environment {env.name!r}, "
            "which requires approval: run again with --approved-by NAME (nothing was executed)",
            runbook=runbook.name,
            env=env.name,
        )


_git_commit: str | None | bool = False


def git_commit() -> str | None:
    global _git_commit
    if _git_commit is False:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project.root(), capture_output=True, text=True,
                                 timeout=5)
            _git_commit = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _git_commit = None
    return _git_commit


def _inject_parameters(nb, runbook: notebooks.Runbook, values: dict[str, Any], nbformat) -> None:
    """Papermill's layout: an ``injected-parameters`` cell right after the ``parameters`` cell."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nb.cells = [c for c in nb.cells if ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]
    lines = ["# Parameters"] + [f"{k} = {v!r}" for k, v in values.items()]
    cell = nbformat.v4.new_code_cell(source="\n".join(lines) + "\n")
    cell.metadata["tags"] = ["injected-parameters"]
    cell.pop("id", None)
    index = runbook.parameters_cell_index if runbook.parameters_cell_index is not None else -1
    nb.cells.insert(index + 1, cell)


def _mark_error(nb, cell_index: int, nbformat) -> None:
    """Papermill's markers: a banner first, an anchor right before the failing cell."""
    count = nb.cells[cell_index].get("execution_count")
    anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
    anchor.metadata["tags"] = [ERROR_MARKER_TAG]
    banner = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % count)
    banner.metadata["tags"] = [ERROR_MARKER_TAG]
    nb.cells.insert(cell_index, anchor)
    nb.cells.insert(0, banner)


class _Progress:
    def __init__(self, mode: str, label: str, total: int):
        self.mode = mode
        if mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "lines"
        self.label, self.total, self.bar = label, total, None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", desc=label, file=sys.stderr, leave=False)

    def cell_done(self, index: int, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines":
            print(f"stackbook: {self.label}: cell {index + 1}/{self.total} done in {seconds:.2f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _kill(pid: int | None, sig: int) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def execute(prep: Prepared, on_start: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a prepared runbook; returns the finished ledger record. Refuses with exit 3 on a held lock."""
    _fast_imports()
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from stackbook.run import db

    opts, runbook, env = prep.options, prep.runbook, prep.env
    database_url = db.url()
    scrub_values = dict(prep.secrets)
    db_password = db.password(database_url)
    if db_password:
        scrub_values.setdefault("DATABASE_PASSWORD", db_password)
    scrubber = scrub.Scrubber(scrub_values, enabled=os.environ.get(UNSAFE_NO_SCRUB_ENV) != "1")

    conn = db.connect()
    ledger.ensure_schema(conn)
    ledger.reap(conn)
    locked = False
    if runbook.metadata.get("exclusive"):
        if not ledger.try_lock(conn, runbook.name, env.name):
            holder = ledger.running_run(conn, runbook.name, env.name)
            who = f"run {holder['id']} (pid {holder['pid']} on {holder['host']})" if holder else "another run"
            conn.close()
            raise RefusedError(
                f"runbook {runbook.name!r} is exclusive and {who} is running it in environment {env.name!r}; "
                "wait for it to finish",
                runbook=runbook.name,
                env=env.name,
            )
        locked = True

    run_id = ledger.new_run_id()
    output = runstore.location(env.name, runbook.name, run_id, env.get("run_store"))
    ledger.start_run(
        conn, run_id=run_id, runbook=runbook.name, path=str(runbook.path), env=env.name, params=prep.params,
        output=output, git_commit=git_commit(), approved_by=opts.approved_by,
        pipeline_run_id=opts.pipeline_run_id, attempt=opts.attempt,
    )
    if on_start:
        on_start(run_id)
    tmp = project.state_dir() / "tmp"
    tmp.mkdir(exist_ok=True)
    results_file = tmp / f"{run_id}.results.jsonl"
    kernel_env = {
        **os.environ,
        **TELEMETRY_OFF,
        **prep.secrets,
        "DATABASE_URL": database_url,
        "STACKBOOK_PROJECT": str(project.root()),
        "STACKBOOK_RUN_ID": run_id,
        "STACKBOOK_ENV": env.name,
        "STACKBOOK_RUNBOOK": runbook.name,
        "STACKBOOK_RUN_OUTPUT": output,
        RESULTS_ENV: str(results_file),
        "PYTHONUNBUFFERED": "1",
    }
    if opts.pipeline_run_id:
        kernel_env["STACKBOOK_PIPELINE_RUN_ID"] = opts.pipeline_run_id

    with open(runbook.path, encoding="utf-8") as fh:
        nb = nbformat.from_dict(json.load(fh))
    for cell in nb.cells:
        if isinstance(cell.get("source"), list):
            cell.source = "".join(cell.source)
    _inject_parameters(nb, runbook, prep.params, nbformat)
    started = datetime.now(timezone.utc)
    nb.metadata["papermill"] = {
        "parameters": prep.params, "input_path": str(runbook.path), "output_path": output,
        "start_time": started.isoformat(), "end_time": None, "duration": None, "exception": None,
        "environment_variables": {}, "version": "stackbook",
    }
    for cell in nb.cells:
        cell.metadata["papermill"] = {"status": "pending", "exception": None, "start_time": None,
                                      "end_time": None, "duration": None}

    state: dict[str, Any] = {"kernel_pid": None, "cell": None, "timed_out": False, "last_save": 0.0}

    def save(final: bool = False) -> None:
        nb.metadata["papermill"]["end_time"] = datetime.now(timezone.utc).isoformat() if final else None
        text = json.dumps(scrubber.obj(nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        runstore.write_text(output, text)
        state["last_save"] = time.monotonic()

    log_handler = _LogScrubber.install(scrubber, log_output=opts.log_output)

    def on_kernel(notebook=None, **_):
        pid = getattr(getattr(client.km, "provisioner", None), "pid", None)
        state["kernel_pid"] = pid
        ledger.set_kernel_pid(conn, run_id, pid)

    def on_cell_start(cell=None, cell_index=None, **_):
        state["cell"], state["cell_started"] = cell_index, time.monotonic()
        cell.metadata["papermill"].update(status="running", start_time=datetime.now(timezone.utc).isoformat())

    def on_output(out) -> None:
        text = out.get("text") or out.get("data", {}).get("text/plain") or ""
        if out.get("output_type") == "error":
            text = f"{out.get('ename')}: {out.get('evalue')}\n"
        if text:
            text = "".join(text) if isinstance(text, list) else text
            sys.stderr.write(scrubber.text(text if text.endswith("\n") else text + "\n"))
            sys.stderr.flush()

    class Client(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            out = super().output(outs, msg, display_id, cell_index)
            if out is not None and opts.log_output:
                on_output(out)
            return out

    timeout = opts.timeout if opts.timeout is not None else runbook.metadata.get("timeout")
    client = Client(
        nb, timeout=opts.cell_timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name") or "python3",
        shutdown_kernel="immediate", startup_timeout=KERNEL_START_TIMEOUT_S, allow_errors=False,
        on_notebook_start=on_kernel, on_cell_start=on_cell_start, record_timing=True,
    )
    client.km = client.create_kernel_manager()
    client.km.transport = "ipc"  # local sockets, not TCP: nothing else on the host can talk to the kernel
    client.km.connection_file = str(tmp / f"{run_id}.kernel.json")
    status, error, reason = "succeeded", None, None
    progress = _Progress(opts.progress, runbook.name, sum(1 for c in nb.cells if c.cell_type == "code"))
    watchdog = _Watchdog(timeout, state) if timeout else None
    save()
    try:
        with ledger.Heartbeat(conn, run_id):
            with client.setup_kernel(env=kernel_env, cwd=str(project.root())):
                if watchdog:
                    watchdog.start()
                code_seen = 0
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type != "code":
                        continue
                    t0 = time.monotonic()
                    try:
                        client.execute_cell(cell, index)
                    finally:
                        cell.metadata["papermill"].update(
                            status="completed", end_time=datetime.now(timezone.utc).isoformat(),
                            duration=round(time.monotonic() - t0, 3))
                    progress.cell_done(code_seen, time.monotonic() - t0)
                    code_seen += 1
                    if time.monotonic() - state["last_save"] > AUTOSAVE_EVERY_S:
                        save()
    except CellExecutionError as exc:
        idx = state["cell"]
        cell = nb.cells[idx]
        cell.metadata["papermill"].update(status="failed", exception=True)
        if state["timed_out"]:
            status, reason = "timed_out", f"run exceeded its timeout of {timeout} s"
        else:
            status = "failed"
            reason = f"cell {idx} raised {exc.ename}"
        error = {"cell_index": idx, "ename": exc.ename, "evalue": exc.evalue,
                 "traceback": exc.traceback if isinstance(exc.traceback, str) else None}
        _mark_error(nb, idx, nbformat)
        nb.metadata["papermill"]["exception"] = True
    except CellTimeoutError as exc:
        idx = state["cell"]
        status, reason = "timed_out", f"cell {idx} ran longer than --cell-timeout {opts.cell_timeout} s"
        error = {"cell_index": idx, "ename": "CellTimeoutError", "evalue": str(exc).splitlines()[0] if str(exc) else reason}
        nb.cells[idx].metadata["papermill"].update(status="failed", exception=True)
        _mark_error(nb, idx, nbformat)
    except DeadKernelError:
        idx = state["cell"]
        if state["timed_out"]:
            status, reason = "timed_out", f"run exceeded its timeout of {timeout} s (kernel killed)"
        else:
            status, reason = "failed", f"kernel died while executing cell {idx}"
        error = {"cell_index": idx, "ename": "DeadKernelError", "evalue": reason}
        if idx is not None:
            _mark_error(nb, idx, nbformat)
    except KeyboardInterrupt:
        status, reason = "cancelled", "interrupted (Ctrl-C or SIGTERM); partial notebook kept"
        error = {"cell_index": state["cell"], "ename": "KeyboardInterrupt", "evalue": "run cancelled"}
    except Exception as exc:  # kernel failed to start, lost connection ...
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
        error = {"cell_index": state["cell"], "ename": type(exc).__name__, "evalue": str(exc)}
    finally:
        if watchdog:
            watchdog.stop()
        progress.close()
        if _alive(state["kernel_pid"]):
            _kill(state["kernel_pid"], signal.SIGKILL)
        _LogScrubber.remove(log_handler)

    results = scrubber.obj(read_results_file(str(results_file)))
    results_file.unlink(missing_ok=True)
    nb.metadata["papermill"]["duration"] = (datetime.now(timezone.utc) - started).total_seconds()
    nb.metadata.setdefault("stackbook", {})
    nb.metadata["stackbook"]["run"] = {"id": run_id, "env": env.name, "status": status, "params": prep.params,
                                       "results": results, "error": error, "started_at": started.isoformat()}
    try:
        save(final=True)
    except Exception as exc:  # the run store failed; the ledger must still be finished
        reason = f"{reason + '; ' if reason else ''}executed notebook not written: {exc}"
        if status == "succeeded":
            status = "failed"
    record = ledger.finish_run(conn, run_id, status=status, results=results, error=scrubber.obj(error),
                               reason=scrubber.text(reason) if reason else None)
    if locked:
        ledger.unlock(conn, runbook.name, env.name)
    conn.close()
    if status == "cancelled":
        raise KeyboardInterrupt
    return record


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


class _Watchdog:
    """Ends a run that exceeds its timeout: interrupt the kernel, then kill it after a grace period."""

    def __init__(self, timeout: float, state: dict):
        self.timeout, self.state = float(timeout), state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-timeout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        if self._stop.wait(self.timeout):
            return
        self.state["timed_out"] = True
        _kill(self.state.get("kernel_pid"), signal.SIGINT)
        if self._stop.wait(TIMEOUT_GRACE_S):
            return
        _kill(self.state.get("kernel_pid"), signal.SIGKILL)


class _LogScrubber(logging.Filter):
    """Scrubs secrets from every log record while a run is active (all handlers of the root logger)."""

    _active: list = []

    def __init__(self, scrubber: scrub.Scrubber):
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrubber.text(record.getMessage())
        record.args = None
        return True

    @classmethod
    def install(cls, scrubber: scrub.Scrubber, log_output: bool):
        flt = cls(scrubber)
        for handler in logging.getLogger().handlers:
            handler.addFilter(flt)
        cls._active.append(flt)
        return flt

    @classmethod
    def remove(cls, flt) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(flt)
        if flt in cls._active:
            cls._active.remove(flt)


def run(name: str, options: RunOptions | None = None, on_start: Callable[[str], None] | None = None) -> dict:
    """Prepare and execute; returns the ledger record (status tells the outcome)."""
    return execute(prepare(name, options or RunOptions()), on_start=on_start)


def exit_code(record: dict) -> int:
    return 0 if record.get("status") == "succeeded" else 1


def describe_failure(record: dict) -> str:
    err = record.get("error") or {}
    where = f" at cell {err.get('cell_index')}" if err.get("cell_index") is not None else ""
    what = f": {err.get('ename')}: {err.get('evalue')}" if err.get("ename") else ""
    return f"runbook {record['runbook']!r} {record['status']}{where}{what} (run {record['id']}, notebook {record['output']})"


__all__ = ["RunOptions", "Prepared", "prepare", "execute", "run", "exit_code", "describe_failure", "UsageError"]
