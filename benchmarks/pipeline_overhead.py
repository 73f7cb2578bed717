"""Pipeline overhead, side by side with its floors (medians of several runs).

1. Ten small independent runbooks as one pipeline (`stackbook pipeline run --force`,
   a fresh kernel per task through stackbook.run.engine, tasks in parallel) against the
   same ten notebooks as ten `papermill` CLI processes one after another.
   Goal: pipeline / papermill <= 0.35.
2. A no-change rerun of a pipeline (every task skipped by ploomber's metadata)
   against the full run of the same pipeline. Goal: <= 5 s and <= 5% of the full run.
   With --daily the real `daily` pipeline (--profile test) is used; the default is
   the ten-task pipeline of part 1.

    .venv/bin/python benchmarks/pipeline_overhead.py [--reps 3] [--parallel 2] [--daily]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackbook.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "src"))
ENV = {**os.environ, **TELEMETRY_OFF}
N = 10


def make_notebooks(folder: Path) -> list[Path]:
    from stackbook.core.scaffold import write

    paths = []
    for i in range(N):
        paths.append(write(folder / f"bench_{i:02d}.ipynb", [
            ("md", f"# Benchmark step {i}\n\nA small runbook: sums a range and checks it."),
            ("params", "n: int = 1000  # numbers to add"),
            ("md", "Add them up."),
            ("code", "total = sum(range(n))\nprint(total)"),
            ("md", "Check."),
            ("code", "assert total == n * (n - 1) // 2"),
        ], {"owner": "bench", "description": "benchmark step", "schedule": None, "destructive": False,
            "exclusive": False, "timeout": 120, "freshness_hours": None, "secrets": [], "tags": ["bench"]}))
    import yaml

    tasks = [{"source": p.name, "name": p.stem, "product": f"{p.stem}.ipynb"} for p in paths]
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return paths


def timed(cmd: list[str], cwd: Path = ROOT) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def papermill_all(paths: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    for p in paths:
        timed([str(BIN / "papermill"), "--no-progress-bar", str(p), str(out / p.name)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--daily", action="store_true", help="part 2 on the real daily pipeline (--profile test)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    results: dict = {"reps": args.reps, "parallel": args.parallel, "cores": os.cpu_count()}
    try:
        paths = make_notebooks(work)
        spec = str(work / "pipeline.yaml")
        out = work / "papermill-out"
        out.mkdir()
        stackbook = str(BIN / "stackbook")
        pipe, floor = [], []
        for rep in range(args.reps):  # interleaved, so machine load hits both alike
            pipe.append(timed([stackbook, "pipeline", "run", spec, "-e", "dev", "--force", "--parallel",
                               str(args.parallel)]))
            floor.append(papermill_all(paths, out))
            print(f"rep {rep + 1}: pipeline {pipe[-1]:.1f} s, ten papermill processes {floor[-1]:.1f} s",
                  file=sys.stderr)
        results["ten_runbooks"] = {"pipeline_s": statistics.median(pipe), "papermill_s": statistics.median(floor),
                                   "ratio": statistics.median(pipe) / statistics.median(floor),
                                   "pipeline_runs_s": pipe, "papermill_runs_s": floor, "goal": 0.35}
        if args.daily:
            spec, extra = "daily", ["--profile", "test"]
        else:
            extra = []
        full = timed([stackbook, "pipeline", "run", spec, "-e", "dev", "--force", "--parallel",
                      str(args.parallel), *extra])
        noop = [timed([stackbook, "pipeline", "run", spec, "-e", "dev", *extra]) for _ in range(args.reps)]
        help_s = statistics.median(timed([stackbook, "--help"]) for _ in range(3))
        results["no_change_rerun"] = {"pipeline": "daily" if args.daily else "ten runbooks", "full_run_s": full,
                                      "rerun_s": statistics.median(noop), "rerun_runs_s": noop,
                                      "share_of_full": statistics.median(noop) / full,
                                      "stackbook_help_s": help_s, "goal_s": 5.0, "goal_share": 0.05}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
