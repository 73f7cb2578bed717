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
from datetime import UTC, datetime
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
    """One REST call; a GET that times out (the API server's one worker, on a loaded machine) is asked again."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for attempt in range(1 if body is not None else 5):
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except TimeoutError:
            print(f"{path}: no answer in 60 s (attempt {attempt + 1})", file=sys.stderr)
    raise SystemExit(f"the local Airflow's API did not answer {path}")


def task_gaps(pipeline_run_id: str, spec, started: datetime) -> dict:
    """From the ledger rows of one run: the tasks' own work (the sum of their `stackbook run` durations) and,
    per task, the wait between being ready (its upstream tasks finished, or the run requested) and its
    `stackbook run` opening its ledger row: what the orchestrator adds."""
    import psycopg

    from stackbook.run.pgcluster import database_url

    with psycopg.connect(database_url()) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "select runbook, started_at, finished_at, duration_s from stackbook.runs where pipeline_run_id = %s "
            "and status = 'succeeded'", (pipeline_run_id,))}
    gaps = {}
    for task in spec.tasks:
        ready = max([rows[spec.task(up).source][1] for up in task.upstream] or [started])
        gaps[task.name] = (rows[task.source][0] - ready).total_seconds()
    return {"work_s": sum(r[2] for r in rows.values()), "gaps_s": gaps, "gap_sum_s": sum(gaps.values())}


def airflow_run(url: str, token: str, spec) -> dict:
    """One DAG run, triggered and waited for; wall seconds and Airflow's own start-to-end."""
    started = datetime.now(UTC)
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
    return {"wall_s": wall, "airflow_duration_s": doc.get("duration"), "run_id": run_id,
            **task_gaps(f"airflow:{DAG}:{run_id}", spec, started)}


def pipeline_run(profile: list[str], spec) -> dict:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    proc = stackbook("pipeline", "run", "daily", "-e", "dev", "--force", "--parallel", "2", "--json", *profile)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, **task_gaps(json.loads(proc.stdout)["pipeline_run_id"], spec, started)}


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", default=None, help="pipeline profile on both sides (test: small data)")
    args = ap.parse_args()
    profile = ["--profile", args.profile] if args.profile else []
    from stackbook.pipelines.spec import load_spec
    from stackbook.schedules import airflow, from_pipeline

    dags = Path(tempfile.mkdtemp(prefix="airflow-bench-"))
    spec = load_spec(str(ROOT / "pipelines" / "daily" / "pipeline.yaml"))
    item = from_pipeline(spec)
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
            pipe.append(pipeline_run(profile, spec))
            flow.append(airflow_run(url, token, spec))
            print(f"rep {rep + 1}: pipeline run {pipe[-1]['wall_s']:.1f} s (tasks' work {pipe[-1]['work_s']:.1f} s, "
                  f"waits {pipe[-1]['gap_sum_s']:.1f} s), Airflow DAG run {flow[-1]['wall_s']:.1f} s (work "
                  f"{flow[-1]['work_s']:.1f} s, waits {flow[-1]['gap_sum_s']:.1f} s)", file=sys.stderr)
    finally:
        stackbook("schedule", "airflow-local", "down", timeout=300)
    results = {
        "reps": args.reps, "profile": args.profile or "default", "cores": os.cpu_count(), "tasks": len(spec.tasks),
        "load_avg": os.getloadavg(), "airflow_startup_s": startup,
        "pipeline_run_s": _med(pipe, "wall_s"), "airflow_dag_run_s": _med(flow, "wall_s"),
        "overhead_s": _med(flow, "wall_s") - _med(pipe, "wall_s"),
        "ratio": _med(flow, "wall_s") / _med(pipe, "wall_s"),
        "pairwise_ratios": [f["wall_s"] / p["wall_s"] for p, f in zip(pipe, flow)],
        "pipeline_work_s": _med(pipe, "work_s"), "airflow_work_s": _med(flow, "work_s"),
        "pipeline_waits_s": _med(pipe, "gap_sum_s"), "airflow_waits_s": _med(flow, "gap_sum_s"),
        "pipeline": pipe, "airflow": flow,
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
