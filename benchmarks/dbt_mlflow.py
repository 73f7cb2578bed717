"""dbt's fixed start-up in build_warehouse, and MLflow log_model with pinned vs inferred requirements.

1. dbt: each trial is a fresh Python process that runs ``stackbook.transform.dbt.build()`` twice through the
   same in-process ``dbtRunner`` (the full project from ``raw`` into throwaway ``<prefix>staging`` and
   ``<prefix>marts``). The second build does the same SQL work without the process start-up (imports,
   adapter plugin, first parse); first minus second is the fixed start-up. The ``dbt build`` CLI of
   the same project is timed beside it as the floor people know.
2. MLflow: in one process, the default customer model is fitted once and logged alternately with
   ``pip_requirements`` pinned (what stackbook.train does) and inferred by MLflow (which loads the
   model in a subprocess to see what it imports), after one warm-up log of each.

Medians of TRIALS. Needs ``raw`` loaded (load_jaffle_shop) and the marts built (build_warehouse).
Usage: .venv/bin/python benchmarks/dbt_mlflow.py [--trials 3] [--log-trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from stackbook.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ENV = {**os.environ, **TELEMETRY_OFF}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from stackbook.transform import dbt
prefix = sys.argv[1]
times = []
for _ in range(2):
    t = time.perf_counter()
    result = dbt.build(schema_prefix=prefix, keep=False)
    times.append(time.perf_counter() - t)
print(json.dumps({"first": times[0], "second": times[1], "nodes": len(result.rows),
                  "process": time.perf_counter() - t0}))
"""


def dbt_trials(trials: int) -> dict:
    from stackbook.run import db
    from stackbook.transform import dbt

    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    rows = []
    cli = []
    try:
        for n in range(trials):
            out = subprocess.run([sys.executable, "-c", CHILD, prefix], capture_output=True, text=True, env=ENV,
                                 cwd=ROOT, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"dbt trial {n + 1}: {rows[-1]}", file=sys.stderr)
            profiles = dbt.write_profiles("dev")
            target = dbt.target_dir("dev", dbt.project_dir(), prefix + "cli")
            password = db.password(db.url()) or ""
            t = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "dbt"), "build", "--project-dir", str(dbt.project_dir()),
                            "--profiles-dir", str(profiles), "--target-path", str(target), "--log-path", str(target),
                            "--vars", json.dumps({"schema_prefix": prefix}), "--quiet"],
                           env={**ENV, dbt.PASSWORD_ENV: password}, cwd=ROOT, check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
            print(f"dbt CLI trial {n + 1}: {cli[-1]:.2f} s", file=sys.stderr)
    finally:
        with db.connect() as conn:
            for schema in ("staging", "marts"):
                conn.execute(f'drop schema if exists "{prefix}{schema}" cascade')
        for key in (prefix, prefix + "cli"):
            shutil.rmtree(dbt.target_dir("dev", dbt.project_dir(), key), ignore_errors=True)
    first = statistics.median(r["first"] for r in rows)
    second = statistics.median(r["second"] for r in rows)
    return {"nodes": rows[0]["nodes"], "first_s": round(first, 2), "second_s": round(second, 2),
            "startup_s": round(first - second, 2), "startup_share": round((first - second) / first, 2),
            "cli_s": round(statistics.median(cli), 2), "trials": trials}


def log_model_trials(trials: int) -> dict:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from stackbook.train import model as train

    trained = train.train("marts")
    experiment = f"bench_{uuid.uuid4().hex[:6]}"
    exp_id = train.experiment_id(experiment)
    signature = infer_signature(trained.X_test, trained.predictions)
    times: dict[str, list[float]] = {"pinned": [], "inferred": []}
    try:
        with mlflow.start_run(experiment_id=exp_id):
            for n in range(trials + 1):
                for mode in ("pinned", "inferred"):
                    t = time.perf_counter()
                    mlflow.sklearn.log_model(
                        trained.model, name=f"m{n}{mode}", signature=signature, input_example=trained.X_test.head(3),
                        pip_requirements=train.pinned_requirements() if mode == "pinned" else None,
                        skops_trusted_types=train.SKOPS_TRUSTED_TYPES)
                    if n:  # the first round warms up imports and caches for both
                        times[mode].append(time.perf_counter() - t)
                print(f"log_model round {n}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v and n),
                      file=sys.stderr)
    finally:
        mlflow.delete_experiment(exp_id)
        shutil.rmtree(train.artifacts_root() / experiment, ignore_errors=True)
    pinned, inferred = statistics.median(times["pinned"]), statistics.median(times["inferred"])
    return {"pinned_s": round(pinned, 2), "inferred_s": round(inferred, 2), "ratio": round(inferred / pinned, 2),
            "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--log-trials", type=int, default=5)
    parser.add_argument("--skip-dbt", action="store_true")
    parser.add_argument("--skip-mlflow", action="store_true")
    args = parser.parse_args()
    report = {}
    if not args.skip_dbt:
        report["dbt"] = dbt_trials(args.trials)
    if not args.skip_mlflow:
        report["log_model"] = log_model_trials(args.log_trials)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
