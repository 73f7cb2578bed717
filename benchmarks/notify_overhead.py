"""What notifications cost a run, side by side with the same run without them (medians of several runs).

1. No routes: the whole cost of the feature for a run in an environment without ``notify:``
   (``notify.channel_secrets`` before the run, ``notify.after_run`` after it), in process, per run;
   and `stackbook run` of a one-cell notebook in that environment. Goal: the runner-overhead
   benchmark unchanged (the in-process cost is a few microseconds; Apprise is never imported).
2. A failed run with a route to a local webhook (an HTTP server in this process on 127.0.0.1):
   what `stackbook run` does once the row is final (``channel_secrets`` and ``after_run``: the
   route, the previous run, the message, Apprise's import and the delivery, the row recorded),
   timed in a fresh interpreter that has imported what a run imports, against the same calls in
   an environment without routes. Goal: at most 0.2 s. Beside it, the whole failed run with and
   without the route, alternating, each a fresh `stackbook run` process (on a busy machine their
   difference is within the noise), and the deliveries' own time (``elapsed_s`` of their rows).

    .venv/bin/python benchmarks/notify_overhead.py [--repeat 7]

Two scratch environment files (``infra/environments/bench_notify_*.yml``) are written and removed,
with their ledger rows, notifications and executed notebooks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stackbook.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRIVIAL = ROOT / "benchmarks" / "fixtures" / "trivial.ipynb"
FAILS = ROOT / "tests" / "fixtures" / "runbooks" / "pipe_fail.ipynb"
ENV = {**os.environ, **TELEMETRY_OFF}


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.count += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Webhook(ThreadingHTTPServer):
    daemon_threads = True
    count = 0  # only the handler thread of each request increments it; read after the runs


def timed(cmd: list[str], expect: int) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != expect:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}, not {expect}:\n{done.stderr[-2000:]}")
    return took


def no_route_cost(env_name: str, loops: int = 2000) -> float:
    """Seconds per run that the feature costs in an environment without routes (both calls, in process)."""
    from stackbook import notify
    from stackbook.core import environments

    env = environments.load(env_name)
    record = {"id": "bench", "runbook": "trivial", "env": env_name, "status": "failed"}
    t0 = time.perf_counter()
    for _ in range(loops):
        notify.channel_secrets(env)
        notify.after_run(record, env)
    return (time.perf_counter() - t0) / loops


# What a `stackbook run` process does after its row is final, in a fresh interpreter that has imported what a
# run imports (so Apprise's import is paid as a run pays it): the notify calls of cli/run.py, timed.
_TAIL = """
import sys, time
import nbclient, nbformat, psycopg, yaml, stackbook.cli.run, stackbook.run.engine
from stackbook.run import ledger
env, run_id = sys.argv[1], sys.argv[2]
with ledger.session(reap_stale=False) as conn:
    record = ledger.get_run(conn, run_id)
t0 = time.perf_counter()
from stackbook import notify
notify.channel_secrets(env)
sent = notify.after_run(record, env)
print(time.perf_counter() - t0, len(sent))
"""


def tail_cost(env_name: str, run_id: str) -> float:
    done = subprocess.run([sys.executable, "-c", _TAIL, env_name, run_id], cwd=ROOT, env=ENV, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"timing the notify calls failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[0])


def last_run(env_name: str) -> str:
    from stackbook.run import ledger

    with ledger.session(reap_stale=False) as conn:
        return ledger.list_runs(conn, env=env_name, limit=1)[0].id


def write_env(name: str, routes: list | None) -> Path:
    import yaml

    from stackbook.core import project

    path = project.environments_dir() / f"{name}.yml"
    doc = {"description": "notify benchmark", "params": {}, "runbooks": {}, **({"notify": routes} if routes else {})}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cleanup(names: list[str], files: list[Path]) -> None:
    from stackbook.core import project
    from stackbook.run import ledger

    for path in files:
        path.unlink(missing_ok=True)
    with ledger.session(reap_stale=False) as conn:
        for table in ("runs", "notifications"):
            if conn.execute(f"select to_regclass('stackbook.{table}') is not null").fetchone()[0]:
                conn.execute(f"delete from stackbook.{table} where env = any(%s)", (names,))
    for name in names:
        shutil.rmtree(project.state_dir() / "runs" / name, ignore_errors=True)


def delivery_times(env_name: str) -> list[float]:
    from stackbook.run import ledger

    with ledger.session(reap_stale=False) as conn:
        rows = conn.execute("select elapsed_s from stackbook.notifications where env = %s and status = 'sent'",
                            (env_name,)).fetchall()
    return [r[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each (default 7)")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    plain, routed = f"bench_notify_none_{tag}", f"bench_notify_hook_{tag}"
    hook = Webhook(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    files = [write_env(plain, None),
             write_env(routed, [{"events": ["failed"], "channels": [f"json://127.0.0.1:{hook.server_address[1]}/b"]}])]
    try:
        per_run = no_route_cost(plain)
        trivial = [str(BIN / "stackbook"), "run", str(TRIVIAL), "-p", "x=2", "-e", plain]
        timed(trivial, 0)  # warm the page cache
        no_routes = [timed(trivial, 0) for _ in range(args.repeat)]
        fail_plain = [str(BIN / "stackbook"), "run", str(FAILS), "-e", plain]
        fail_routed = [str(BIN / "stackbook"), "run", str(FAILS), "-e", routed]
        timed(fail_plain, 1), timed(fail_routed, 1)
        without, with_route = [], []
        for _ in range(args.repeat):
            without.append(timed(fail_plain, 1))
            with_route.append(timed(fail_routed, 1))
        tail_plain, tail_routed = [], []
        runs = (last_run(plain), last_run(routed))
        for _ in range(args.repeat):
            tail_plain.append(tail_cost(plain, runs[0]))
            tail_routed.append(tail_cost(routed, runs[1]))
        sent = delivery_times(routed)
        result = {
            "repeat": args.repeat,
            "no_routes_cost_per_run_us": round(per_run * 1e6, 2),
            "no_routes_trivial_run_median_s": round(statistics.median(no_routes), 3),
            "notify_calls_no_routes_fresh_process_median_s": round(statistics.median(tail_plain), 4),
            "notify_calls_webhook_route_fresh_process_median_s": round(statistics.median(tail_routed), 3),
            "failed_run_without_routes_median_s": round(statistics.median(without), 3),
            "failed_run_with_webhook_route_median_s": round(statistics.median(with_route), 3),
            "difference_of_run_medians_s": round(statistics.median(with_route) - statistics.median(without), 3),
            "delivery_elapsed_median_s": round(statistics.median(sent), 3) if sent else None,
            "messages_received": hook.count,
            "without_runs_s": [round(x, 2) for x in without],
            "with_route_runs_s": [round(x, 2) for x in with_route],
        }
        print(json.dumps(result, indent=2))
    finally:
        hook.shutdown()
        cleanup([plain, routed], files)


if __name__ == "__main__":
    main()
