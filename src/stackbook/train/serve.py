"""Serving the champion over REST with ``mlflow models serve``, and proving it answers as the model does.

``ModelServer`` starts MLflow's scoring server (uvicorn) for one model version on 127.0.0.1 and
a free port, in the project's own environment (``--env-manager local``: no virtualenv or conda
is created, nothing is downloaded; the model's artifacts are read from the local artifact
store). It is a context manager, and the runbook uses it in one cell, so the server stops
whatever happens in that cell. Stopping is thorough: the server runs in a process group of its
own (``start_new_session``), and SIGTERM, then SIGKILL after a grace period, go to the whole
group (the ``mlflow`` command and the uvicorn process it starts). Two nets catch what the
``with`` cannot: an ``atexit`` hook stops a server left running when the interpreter exits, and
on Linux the server's first process gets SIGTERM when the process that started it dies.

``smoke_test`` sends feature rows built from the marts over HTTP, one request per row,
compares the served predictions with the in-process ones and measures the latency.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import ServingError
from stackbook.train import model as train_model

HOST = "127.0.0.1"
STOP_GRACE_S = 10.0


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # not glibc: the atexit hook and the with block still stop the server
        pass


class ModelServer:
    """``mlflow models serve`` of MODEL_URI on 127.0.0.1:PORT (0: a free one), as a context manager."""

    def __init__(self, model_uri: str, port: int = 0, startup_timeout_s: float = 120.0):
        self.model_uri, self.port = model_uri, port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.log_path = project.state_dir() / "tmp" / f"mlflow-serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        return [str(mlflow_cli), "models", "serve", "-m", self.model_uri, "--env-manager", "local", "-h", HOST,
                "-p", str(self.port), "-w", "1"]

    def start(self) -> ModelServer:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "MLFLOW_TRACKING_URI": train_model.tracking_uri(), "MLFLOW_REGISTRY_URI": train_model.tracking_uri()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        atexit.register(self.stop)
        started = time.monotonic()
        self._wait_ready()
        self.startup_s = round(time.monotonic() - started, 3)
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ServingError(f"mlflow models serve of {self.model_uri} exited with {self.process.returncode} "
                                   f"before answering: {self.log_tail()}")
            try:
                conn = HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return
            except (OSError, HTTPException):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServingError(f"mlflow models serve of {self.model_uri} did not answer /ping on {self.url} within "
                           f"{self.startup_timeout_s:g} s (raise startup_timeout_s): {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_GRACE_S; idempotent."""
        proc = self.process
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if _wait_group_gone(proc.pid, wait):  # the workers outlive the leader for a moment
                break
        atexit.unregister(self.stop)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    """True once no process of group PGID is left, False after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def predict(conn: HTTPConnection, frame) -> list[float]:
    """POST FRAME to /invocations (``dataframe_split``); the predictions."""
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise ServingError(f"POST /invocations answered {response.status}: {payload[:500]!r}")
    return [float(v) for v in json.loads(payload)["predictions"]]


@dataclass
class ServeReport:
    model_uri: str
    url: str
    pid: int | None
    requests: int
    matched: int  # served predictions equal to the in-process ones (within tolerance)
    max_abs_diff: float
    p50_ms: float
    p99_ms: float
    in_process_p50_ms: float
    in_process_p99_ms: float
    startup_s: float
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def check(self, max_p99_ms: float) -> None:
        if self.mismatches:
            raise ServingError(f"{len(self.mismatches)} of {self.requests} served predictions differ from the "
                               f"in-process ones (max difference {self.max_abs_diff:g}): {self.mismatches[:3]}")
        if self.p99_ms > max_p99_ms:
            raise ServingError(f"p99 latency {self.p99_ms:.1f} ms over {self.requests} requests is above "
                               f"max_p99_ms={max_p99_ms:g}")


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.percentile(samples_ms, 50)), float(np.percentile(samples_ms, 99))


def in_process_latency(model, rows) -> list[float]:
    """Milliseconds of ``model.predict`` on one row at a time, for each of ROWS' rows."""
    out = []
    for i in range(len(rows)):
        row = rows.iloc[[i]]
        started = time.perf_counter()
        model.predict(row)
        out.append((time.perf_counter() - started) * 1000)
    return out


def smoke_test(server: ModelServer, model, rows, tolerance: float = 1e-6) -> ServeReport:
    """One request per row of ROWS to SERVER; served against in-process predictions, and latencies."""
    import numpy as np

    expected = np.asarray(model.predict(rows), dtype=float)
    conn = HTTPConnection(HOST, server.port, timeout=30)
    served, latencies = [], []
    for i in range(len(rows)):
        started = time.perf_counter()
        served.append(predict(conn, rows.iloc[[i]])[0])
        latencies.append((time.perf_counter() - started) * 1000)
    conn.close()
    diff = np.abs(np.asarray(served) - expected)
    bad = np.flatnonzero(diff > tolerance + tolerance * np.abs(expected))
    p50, p99 = percentiles(latencies)
    local_p50, local_p99 = percentiles(in_process_latency(model, rows))
    return ServeReport(model_uri=server.model_uri, url=server.url, pid=server.pid, requests=len(rows),
                       matched=len(rows) - len(bad), max_abs_diff=float(diff.max(initial=0.0)), p50_ms=p50,
                       p99_ms=p99, in_process_p50_ms=local_p50, in_process_p99_ms=local_p99, startup_s=server.startup_s,
                       mismatches=[{"row": int(i), "served": served[i], "in_process": float(expected[i])}
                                   for i in bad[:10]])


def serving_processes(port: int) -> list[int]:
    """Pids of processes whose command line serves on PORT (``-p PORT`` of mlflow, ``--port PORT`` of uvicorn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if any(a in ("-p", "--port") and i + 1 < len(text) and text[i + 1] == str(port) for i, a in enumerate(text)) \
                and any("mlflow" in a or "uvicorn" in a for a in text):
            found.append(int(entry.name))
    return found
