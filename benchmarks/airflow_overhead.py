"""Airflow's overhead: the daily DAG run through the local Airflow scheduler against `stackbook pipeline run`.

The same tasks, parameters and data on both sides: the generated daily DAG (`stackbook schedule
airflow`) run by `stackbook schedule airflow-local up --manual` (scheduler, DAG processor, API
server, LocalExecutor with parallelism 2), each DAG run triggered through the REST API and timed
from the request until the API reports it finished (polled every 0.5 s), against
`stackbook pipeline run daily -e dev --force --parallel 2`, alternating, medians of --reps.
Both run `stackbook run` once per task; what differs is who starts them: Airflow (a DAG run,
a task instance per task, a LocalExecutor worker and a task supervisor per try, the
scheduler's loop between one task's end and the next one's start) or stackbook's pipeline
runner (in one process). Airflow's start-up (about 30 s) is not counted: a scheduler runs all
the time.

The benchmark keeps to itself: STACKBOOK_DATABASE=stackbook_bench and a state folder of its
own (so its own local Airflow, with metadata database airflow_bench), as the tests do.
Every run, on either side, loads the same seeded Jaffle Shop again (jafgen's output is cached per `years`).

    .venv/bin/python benchmarks/airflow_overhead.py [--reps 3] [--profile test]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "src"))

from stackbook.core import project
from stackbook.core.privacy import TELEMETRY_OFF

DAG = "stackbook_pipeline_daily"
BENCH_ENV = {"STACKBOOK_DATABASE": "stackbook_bench", "STACKBOOK_STATE_DIR": str(project.home_dir() / "bench")}
ENV = {**os.environ, **TELEMETRY_OFF, **BENCH_ENV}
os.environ.update(BENCH_ENV)  # this process writes the DAG file for that database and state folder too


def stackbook(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "stackbook"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): stackbook {' '.join(args)}\n{proc.stderr[-3000:]}")
    return proc


def api_call(url: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def airflow_run(url: str, token: str) -> dict:
    """One DAG run, triggered and waited for; wall seconds and Airflow's own start-to-end."""
    t0 = time.perf_counter()
    run_id = api_call(url, f"/api/v2/dags/{DAG}/dagRuns", token, {"logical_date": None})["dag_run_id"]
    while True:
        doc = api_call(url, f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}", token)
        if doc["state"] in ("success", "failed"):
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if doc["state"] != "success":
        raise SystemExit(f"the DAG run {run_id} failed: see the local Airflow's task logs under "
                         f"{BENCH_ENV['STACKBOOK_STATE_DIR']}/airflow-local/logs")
    return {"wall_s": wall, "airflow_duration_s": doc.get("duration"), "run_id": run_id}


def pipeline_run(profile: list[str]) -> float:
    t0 = time.perf_counter()
    stackbook("pipeline", "run", "daily", "-e", "dev", "--force", "--parallel", "2", *profile)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", default=None, help="pipeline profile on both sides (test: small data)")
    args = ap.parse_args()
    profile = ["--profile", args.profile] if args.profile else []
    from stackbook.pipelines.spec import load_spec
    from stackbook.schedules import airflow, from_pipeline

    dags = Path(tempfile.mkdtemp(prefix="airflow-bench-"))
    item = from_pipeline(load_spec(str(ROOT / "pipelines" / "daily" / "pipeline.yaml")))
    item.profile = args.profile
    airflow.write(dags, env="dev", items=[item])
    t0 = time.perf_counter()
    status = json.loads(stackbook("schedule", "airflow-local", "up", "--dags", str(dags), "--manual", "--json",
                                  timeout=1800).stdout)
    startup = time.perf_counter() - t0
    try:
        url = status["url"]
        password = json.loads(Path(status["password_file"]).read_text())["admin"]
        token = api_call(url, "/auth/token", body={"username": "admin", "password": password})["access_token"]
        while DAG not in {d["dag_id"] for d in api_call(url, "/api/v2/dags", token)["dags"]}:
            time.sleep(1)  # parsed by the DAG processor
        pipe, flow = [], []
        for rep in range(args.reps):  # interleaved, so machine load hits both alike
            pipe.append(pipeline_run(profile))
            flow.append(airflow_run(url, token))
            print(f"rep {rep + 1}: pipeline run {pipe[-1]:.1f} s, Airflow DAG run {flow[-1]['wall_s']:.1f} s "
                  f"(Airflow's duration {flow[-1]['airflow_duration_s']:.1f} s)", file=sys.stderr)
    finally:
        stackbook("schedule", "airflow-local", "down", timeout=300)
    walls = [f["wall_s"] for f in flow]
    results = {
        "reps": args.reps, "profile": args.profile or "default", "cores": os.cpu_count(),
        "airflow_startup_s": startup,
        "pipeline_run_s": statistics.median(pipe), "airflow_dag_run_s": statistics.median(walls),
        "overhead_s": statistics.median(walls) - statistics.median(pipe),
        "ratio": statistics.median(walls) / statistics.median(pipe),
        "pipeline_runs_s": pipe, "airflow_runs_s": walls,
        "airflow_durations_s": [f["airflow_duration_s"] for f in flow],
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
