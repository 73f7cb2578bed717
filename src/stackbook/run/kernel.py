"""The kernel side of a run: its environment, its nbclient client, its watchdog, and how it ended.

``Kernel`` starts one fresh kernel for one run, as papermill's nbclient engine
does, with two differences: the kernel listens on local ``ipc`` sockets (its
connection file under ``.stackbook/tmp/``), not TCP, so nothing else on the
host can talk to it; and it is killed, not asked, when the run ends. Its pid
goes to the ledger row as soon as it is known, so a runner that dies does not
leave an orphan (the reaper kills it). ``Watchdog`` ends a run that exceeds its
whole-run timeout; ``Kernel.outcome_of`` turns what nbclient raised into the
ledger's status, reason and error, the failing cell's index as the executed
notebook stores it (after the injected cell and papermill's two error markers).
A cell that ends with ``sys.exit()``, ``sys.exit(0)`` or ``raise SystemExit``
ends the run there, successfully, as papermill has it (``clean_exit``); any other
exit status fails it.

What the kernel sees and what it leaves: ``environment`` gives it a deliberate
environment (what a Python kernel needs to run, stackbook's own variables, the
declared secrets and the names the environment file's ``kernel_env:`` lists),
never the runner's whole one, so an undeclared credential in the caller's shell
does not reach a runbook; variables whose names look like credentials are left
out unless declared or listed, and ``credential_values`` hands their values to
the scrubber anyway. ipykernel copies whatever is written to the kernel's own
file descriptors (``os.write(1, ...)``, a subprocess that prints) to the
process's stdout and stderr: ``OutputPump`` makes those one pipe and copies it,
line by line and scrubbed, to the runner's standard error, never its standard
output (which carries only the JSON document under ``--json``). At the end,
``end_run_processes`` ends every process that still carries the run's id in its
environment, also those that left the kernel's process group. The kernel runs
with umask 077: no file a runbook writes is readable by other users.

This module imports nbclient at import time: ``stackbook.run.engine`` imports it
only when a run executes, so listing and checking runbooks stays fast.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if "jsonschema" not in sys.modules:
    # jsonschema imports its optional rfc3987_syntax module (1 to 1.3 s) when nbformat loads it;
    # nothing in stackbook validates IRI formats, so skip it
    sys.modules.setdefault("rfc3987_syntax", None)

from nbclient import NotebookClient  # noqa: E402

from stackbook.core import project  # noqa: E402
from stackbook.core.errors import KernelCodeError  # noqa: E402
from stackbook.core.privacy import TELEMETRY_OFF  # noqa: E402
from stackbook.core.results import RESULTS_ENV  # noqa: E402
from stackbook.run import runstore, scrub  # noqa: E402
from stackbook.run.execution import MARKER_CELLS  # noqa: E402

KERNEL_START_TIMEOUT_S = 60
TIMEOUT_GRACE_S = 10.0  # between the watchdog's interrupt and its kill
END_GRACE_S = 2.0  # between SIGTERM and SIGKILL for the processes a run leaves behind
SETTLE_S = 10.0  # how long a cancelled or timed-out kernel has to become idle before its state is snapshotted
PUMP_JOIN_S = 2.0  # how long the end of a run waits for the last of the kernel's output
RUN_ID_ENV = "STACKBOOK_RUN_ID"
IPC_PATH_MAX = 100  # bytes of a unix socket's path: 107 on Linux, 103 on macOS, less a margin
KERNEL_UMASK = 0o077  # what a runbook writes (run store, dbt targets, artifacts, products) is its owner's only

#: what a kernel needs to run (paths, locale, time zone, terminal), and what runbooks use that holds no credential
KERNEL_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "LANG", "LANGUAGE", "TZ", "TERM", "NO_COLOR",
    "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "MPLBACKEND", "MPLCONFIGDIR", "KUBECONFIG",
    "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE", *TELEMETRY_OFF,
})
#: families of variables passed whole (less the credential-looking ones): locale, Python, Jupyter, XDG folders,
#: stackbook's own, PostgreSQL's TLS settings, MLflow's and dbt's settings, BLAS threads
KERNEL_ENV_PREFIXES = ("LC_", "PYTHON", "JUPYTER", "IPYTHON", "JPY_", "XDG_", "STACKBOOK_", "PGSSL", "MLFLOW_",
                       "DBT_", "OMP_", "OPENBLAS_", "MKL_")
#: one word of a variable's name (split at "_") that makes it look like a credential: *SECRET, *TOKEN, *PASSWORD,
#: *PASSWD, *PWD, *KEY (ACCESS_KEY, API_KEY, APIKEY), *CREDENTIAL(S), CREDS, *AUTH, AUTHORIZATION, COOKIE, PASS
_CREDENTIAL_WORD = re.compile(
    r"[A-Z0-9]*(?:SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|PWD|KEY|CREDENTIAL|CRED|AUTH|COOKIE)S?"
    r"|PASS|PRIVATE|AUTHORIZATION")
NOT_CREDENTIALS = frozenset({"PWD", "OLDPWD"})  # the working directory, not a password
AMBIENT_MIN_LENGTH = 8  # a credential-looking variable's value shorter than this is not scrubbed (1, true, ...)


def scratch_dir() -> Path:
    """``.stackbook/tmp/``: a run's results file and kernel connection file (removed by the reaper if it dies)."""
    tmp = project.state_dir() / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    return tmp


def connection_file(run_id: str) -> Path:
    """The kernel's connection file; its ipc sockets are named after it (``<name>.kernel-ipc-N``).

    In ``scratch_dir()``, unless that makes a socket's path longer than a unix socket allows (a deep
    ``STACKBOOK_STATE_DIR``): then in a private folder of its own under the system's temporary folder,
    removed when the kernel ends.
    """
    path = scratch_dir() / f"{run_id}.kernel.json"
    if len(os.fsencode(path.with_suffix(""))) + len("-ipc-9") <= IPC_PATH_MAX:
        return path
    return Path(tempfile.mkdtemp(prefix="stackbook-")) / f"{run_id}.kernel.json"


def looks_like_credential(name: str) -> bool:
    """Whether a variable's NAME looks like it holds a credential (``AWS_SECRET_ACCESS_KEY``, ``GITHUB_TOKEN``)."""
    upper = name.upper()
    return upper not in NOT_CREDENTIALS and any(_CREDENTIAL_WORD.fullmatch(w) for w in upper.split("_") if w)


def credential_values(environ: dict[str, str]) -> dict[str, str]:
    """The values of ENVIRON's credential-looking variables, for the scrubber: declared or not, passed or not.

    Values shorter than ``AMBIENT_MIN_LENGTH`` and values that name an existing file or folder
    (``SSH_AUTH_SOCK``, ``GOOGLE_APPLICATION_CREDENTIALS``) are left alone: scrubbing them would scrub ordinary text.
    """
    return {name: value for name, value in environ.items()
            if looks_like_credential(name) and len(value) >= AMBIENT_MIN_LENGTH and not os.path.exists(value)}


def _passed_through(environ: dict[str, str], listed: list[str]) -> dict[str, str]:
    """ENVIRON's variables a kernel gets: the allowlist less credential-looking names, and every LISTED name."""
    wanted = set(listed)
    return {name: value for name, value in environ.items()
            if name in wanted or ((name in KERNEL_ENV_NAMES or name.startswith(KERNEL_ENV_PREFIXES))
                                  and not looks_like_credential(name))}


def environment(prep: Any, *, run_id: str, output: str, database_url: str, results_file: Path) -> dict[str, str]:
    """The kernel's environment: the runner's allowlisted variables and ``kernel_env:`` names, telemetry off,
    the runbook's declared secrets, the run's identity, and the AWS credentials and endpoint only when the run
    store or the DR backup store is s3:// (``runstore.kernel_variables``). Nothing else of the runner's environment."""
    env = {
        **_passed_through(dict(os.environ), prep.env.kernel_env),
        **runstore.kernel_variables(output, dict(os.environ), prep.env),  # s3:// stores only
        **TELEMETRY_OFF,
        **prep.secrets,
        "DATABASE_URL": database_url,
        "STACKBOOK_PROJECT": str(project.root()),
        RUN_ID_ENV: run_id,
        "STACKBOOK_ENV": prep.env.name,
        "STACKBOOK_RUNBOOK": prep.runbook.name,
        "STACKBOOK_RUN_OUTPUT": output,
        RESULTS_ENV: str(results_file),
        "PYTHONUNBUFFERED": "1",
    }
    if prep.options.pipeline_run_id:
        env["STACKBOOK_PIPELINE_RUN_ID"] = prep.options.pipeline_run_id
    return env


class OutputPump:
    """The kernel process's own stdout and stderr, as one pipe, copied line by line, scrubbed, to our stderr.

    ``writer`` is the pipe's write end, given to the kernel as both its stdout and stderr; ``release``
    closes our copy once the kernel has it, ``close`` waits (at most ``PUMP_JOIN_S``) for the last line.
    """

    def __init__(self, scrubber: scrub.Scrubber):
        self.scrubber = scrubber
        reader, self.writer = os.pipe()
        self._reader = os.fdopen(reader, "rb")
        self._released = False
        self._thread = threading.Thread(target=self._pump, name="kernel-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._reader:
            for line in iter(self._reader.readline, b""):
                try:
                    sys.stderr.write(self.scrubber.text(line.decode("utf-8", errors="replace")))
                    sys.stderr.flush()
                except (OSError, ValueError):  # our stderr is closed or gone: keep draining the kernel's pipe
                    continue

    def release(self) -> None:
        """Close our copy of the write end (the kernel and its children hold theirs); idempotent."""
        if not self._released:
            self._released = True
            os.close(self.writer)

    def close(self) -> None:
        """Release, then wait for the pipe's end: every process that held it has exited or been ended."""
        self.release()
        self._thread.join(timeout=PUMP_JOIN_S)


def _carries(pid: int, marker: bytes) -> bool:
    """Whether process PID's environment holds MARKER (``NAME=value``); False if unreadable, gone or a zombie."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


def run_processes(run_id: str) -> list[int]:
    """Pids of the processes whose environment carries ``STACKBOOK_RUN_ID=<run_id>``, this one excepted."""
    marker, me = f"{RUN_ID_ENV}={run_id}".encode(), os.getpid()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc (not Linux): nothing to find
        return []
    return [pid for pid in pids if pid != me and _carries(pid, marker)]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:  # already gone
            continue


def end_run_processes(run_id: str, grace_s: float = END_GRACE_S) -> list[int]:
    """End what run RUN_ID left running: SIGTERM, up to GRACE_S to exit, then SIGKILL; returns their pids."""
    pids = run_processes(run_id)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    deadline = time.monotonic() + grace_s
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if _carries(pid, marker)]
    _signal_all(left, signal.SIGKILL)
    return pids


class LiveLog:
    """``--log-output``: each cell output, scrubbed, on standard error as it arrives."""

    def __init__(self, scrubber: scrub.Scrubber):
        self.scrubber = scrubber

    def __call__(self, out: dict) -> None:
        text = out.get("text") or out.get("data", {}).get("text/plain") or ""
        if out.get("output_type") == "error":
            text = f"{out.get('ename')}: {out.get('evalue')}\n"
        if text:
            text = "".join(text) if isinstance(text, list) else text
            sys.stderr.write(self.scrubber.text(text if text.endswith("\n") else text + "\n"))
            sys.stderr.flush()


class RunClient(NotebookClient):
    """nbclient's client, with each output also handed to ``live_log`` (when set)."""

    live_log: Callable[[dict], None] | None = None

    def output(self, outs, msg, display_id, cell_index):
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None and self.live_log is not None:
            self.live_log(out)
        return out


class ScrubbedLogs(logging.Filter):
    """While a run is active, every record of every root logging handler has the secrets scrubbed."""

    def __init__(self, scrubber: scrub.Scrubber):
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrubber.text(record.getMessage())
        record.args = None
        return True

    def __enter__(self) -> ScrubbedLogs:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)


@dataclass
class Outcome:
    """How a run ended, for the ledger row: status, reason, error; and where papermill's markers go."""

    status: str = "succeeded"
    reason: str | None = None
    error: dict | None = None
    mark_cell: int | None = None  # index (before the markers) of the cell the error markers point at, if any
    waiting: dict | None = None  # a run stopped at a manual step: its cell_index and instruction
    snapshot: Any = None  # the kernel state kept for ``stackbook resume`` (``snapshot.Manifest``), if any


class Watchdog:
    """Ends a run that exceeds its timeout: interrupt the kernel, kill it after a grace period."""

    def __init__(self, timeout: float, kernel: Kernel):
        self.timeout, self.kernel = float(timeout), kernel
        self.fired = threading.Event()  # set once the timeout has passed: the run is timed_out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-timeout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        if self._stop.wait(self.timeout):
            return
        self.fired.set()
        self.kernel.signal(signal.SIGINT)
        if self._stop.wait(TIMEOUT_GRACE_S):
            return
        self.kernel.signal(signal.SIGKILL)


def clean_exit(exc: BaseException) -> bool:
    """Whether EXC is a cell's ``SystemExit`` with no status or status 0, which papermill counts as success."""
    from nbclient.exceptions import CellExecutionError

    return isinstance(exc, CellExecutionError) and exc.ename == "SystemExit" and exc.evalue in ("", "0", "None")


class Kernel:
    """One run's kernel: started by ``running``, cells run by ``execute_cell``, killed when it ends."""

    def __init__(self, nb, *, connection_file: Path, run_id: str, scrubber: scrub.Scrubber,
                 cell_timeout: float | None = None, run_timeout: float | None = None,
                 live_log: Callable[[dict], None] | None = None, on_pid: Callable[[int | None], None] | None = None):
        self.pid: int | None = None
        self.run_id, self.scrubber = run_id, scrubber
        self.cell_timeout, self.run_timeout, self._on_pid = cell_timeout, run_timeout, on_pid
        self.client = RunClient(
            nb, timeout=cell_timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name") or "python3",
            shutdown_kernel="immediate", startup_timeout=KERNEL_START_TIMEOUT_S, allow_errors=False,
            on_notebook_start=self._started, record_timing=True,
        )
        self.client.live_log = live_log
        self.client.km = self.client.create_kernel_manager()
        self.client.km.transport = "ipc"  # local sockets, not TCP: nothing else on the host can talk to the kernel
        self.client.km.connection_file = str(connection_file)
        self.connection_file = connection_file
        self.watchdog = Watchdog(run_timeout, self) if run_timeout else None

    def _started(self, notebook=None, **_) -> None:
        self.pid = getattr(getattr(self.client.km, "provisioner", None), "pid", None)
        if self._on_pid:
            self._on_pid(self.pid)

    @contextmanager
    def running(self, env: dict[str, str], cwd: str) -> Iterator[Kernel]:
        """The kernel started with ENV in CWD, its output pumped, the watchdog on; on the way out, the kernel
        stopped and killed, the processes it left ended, the last of its output copied."""
        pump = OutputPump(self.scrubber)
        try:
            with self.client.setup_kernel(env=env, cwd=cwd, stdout=pump.writer, stderr=pump.writer,
                                          umask=KERNEL_UMASK):
                pump.release()
                if self.watchdog:
                    self.watchdog.start()
                yield self
        finally:
            if self.watchdog:
                self.watchdog.stop()
            self.kill()
            self._end_left_behind()
            pump.close()
            if self.connection_file.parent != scratch_dir():  # the short folder connection_file() made
                shutil.rmtree(self.connection_file.parent, ignore_errors=True)

    def _end_left_behind(self) -> None:
        ended = end_run_processes(self.run_id)
        if ended:
            print(f"stackbook: run {self.run_id}: ended {len(ended)} process{'es' if len(ended) > 1 else ''} it "
                  f"left running (pid {', '.join(map(str, ended))})", file=sys.stderr, flush=True)

    def execute_cell(self, cell, index: int) -> bool:
        """Run CELL; False when it ended the run successfully (``clean_exit``): no later cell is to run."""
        from nbclient.exceptions import CellExecutionError

        try:
            self.client.execute_cell(cell, index)
        except CellExecutionError as exc:
            if clean_exit(exc) and not self.timed_out:
                return False
            raise
        return True

    def run_code(self, code: str, timeout: float) -> None:
        """Run CODE in the kernel hidden: no cell, no output in the notebook, no execution count, no history.

        Waits at most TIMEOUT seconds for its reply; ``KernelCodeError`` if the kernel is not running, dies,
        does not answer in time, or CODE raised (its ename and evalue, scrubbed). Its output is dropped.
        """
        from nbclient.util import run_sync

        run_sync(self._run_code)(code, timeout)

    async def _run_code(self, code: str, timeout: float) -> None:
        from queue import Empty

        from nbclient.util import ensure_async

        kc = self.client.kc
        if kc is None or not self.alive():
            raise KernelCodeError("the kernel is not running")
        msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelCodeError(f"the kernel did not answer within {timeout:g} s")
            try:
                msg = await ensure_async(kc.shell_channel.get_msg(timeout=min(1.0, left)))
            except Empty:
                if not await ensure_async(kc.is_alive()):
                    raise KernelCodeError("the kernel died") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        content = msg["content"]
        if content.get("status") != "ok":
            what = self.scrubber.text(f"{content.get('ename')}: {content.get('evalue')}")
            raise KernelCodeError(f"hidden code in the kernel raised {what}")

    @property
    def timed_out(self) -> bool:
        return self.watchdog is not None and self.watchdog.fired.is_set()

    def signal(self, sig: int) -> None:
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except OSError:  # already gone
                pass

    def alive(self) -> bool:
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)

    def settle(self, exc: BaseException | None, wait_s: float = SETTLE_S) -> bool:
        """After EXC ended the cell loop, before the kernel's state is snapshotted: the watchdog stopped (no
        kill under a snapshot); after Ctrl-C or ``--cell-timeout`` (the cell still running) the kernel
        interrupted and that cell's reply received, so the kernel is idle and no stale message is left for what
        runs next. False when the kernel is gone or stays busy past WAIT_S."""
        import asyncio

        from jupyter_core.utils import ensure_event_loop
        from nbclient.exceptions import CellTimeoutError

        if self.watchdog:
            self.watchdog.stop()
        if not self.alive():
            return False
        if not isinstance(exc, (KeyboardInterrupt, CellTimeoutError)):
            return True  # the cell raised: the kernel is idle
        loop = ensure_event_loop()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]  # the cell Ctrl-C left half-awaited
        self.signal(signal.SIGINT)
        if pending:
            done, left = loop.run_until_complete(asyncio.wait(pending, timeout=wait_s))
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: the interrupted cell's error is already recorded
            return not left and self.alive()
        return self._drain_reply(loop, wait_s)

    def _drain_reply(self, loop, wait_s: float) -> bool:
        """The execute reply of a cell nbclient stopped waiting for (``--cell-timeout``), read and dropped."""
        from queue import Empty

        from jupyter_core.utils import ensure_async

        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                msg = loop.run_until_complete(ensure_async(self.client.kc.shell_channel.get_msg(timeout=0.5)))
            except Empty:
                continue
            if msg.get("msg_type") == "execute_reply":
                return self.alive()
        return False

    def outcome_of(self, exc: BaseException, cell: int | None) -> Outcome:
        """The ledger's view of EXC, raised while cell CELL ran (None: before any cell)."""
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        stored = cell + MARKER_CELLS if cell is not None else None  # where the cell is once marked
        if isinstance(exc, CellExecutionError):
            if self.timed_out:
                status, reason = "timed_out", f"run exceeded its timeout of {self.run_timeout} s"
            elif exc.ename == "SystemExit":
                status, reason = "failed", f"cell {stored} exited with status {exc.evalue} (SystemExit)"
            else:
                status, reason = "failed", f"cell {stored} raised {exc.ename}"
            error = {"cell_index": stored, "ename": exc.ename, "evalue": exc.evalue,
                     "traceback": exc.traceback if isinstance(exc.traceback, str) else None}
            return Outcome(status, reason, error, mark_cell=cell)
        if isinstance(exc, CellTimeoutError):
            reason = f"cell {stored} ran longer than --cell-timeout {self.cell_timeout} s"
            evalue = str(exc).splitlines()[0] if str(exc) else reason
            return Outcome("timed_out", reason, {"cell_index": stored, "ename": "CellTimeoutError",
                                                 "evalue": evalue}, mark_cell=cell)
        if isinstance(exc, DeadKernelError):
            if self.timed_out:
                status, reason = "timed_out", f"run exceeded its timeout of {self.run_timeout} s (kernel killed)"
            else:
                status, reason = "failed", f"kernel died while executing cell {stored}"
            return Outcome(status, reason, {"cell_index": stored, "ename": "DeadKernelError", "evalue": reason},
                           mark_cell=cell)
        if isinstance(exc, KeyboardInterrupt):
            return Outcome("cancelled", "interrupted (Ctrl-C or SIGTERM); partial notebook kept",
                           {"cell_index": cell, "ename": "KeyboardInterrupt", "evalue": "run cancelled"})
        return Outcome("failed", f"{type(exc).__name__}: {exc}",  # kernel failed to start, lost connection ...
                       {"cell_index": cell, "ename": type(exc).__name__, "evalue": str(exc)})
