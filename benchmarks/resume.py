"""A resumed run against a full rerun, after a run whose last cell failed behind a long cell.

The runbook (tests/fixtures/resume/counter.ipynb) computes a value, sleeps SLEEP seconds in one cell,
then its last code cells fail until a flag file exists. Each round: a run that fails there (its kernel
snapshotted), the flag created, then, alternating which goes first, `stackbook resume` of the failed
run (snapshot restored, setup cells, the failing cells: the sleep is not executed again) and a full
`stackbook run` with the same parameters (every cell, the sleep too). Both are whole CLI processes
with a fresh kernel. Reports medians, the ratio resume / full rerun (goal <= 0.10) and the snapshot's
size and time. Works in the database ``stackbook_bench`` and a state folder of its own.

    .venv/bin/python benchmarks/resume.py [--sleep 30] [--repeat 3]
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
from pathlib import Path

from stackbook.core.privacy import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
STACKBOOK = str(Path(sys.executable).parent / "stackbook")
NOTEBOOK = ROOT / "tests" / "fixtures" / "resume" / "counter.ipynb"


def _cli(env: dict, *args: str, expect: int = 0) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run([STACKBOOK, *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != expect:
        sys.exit(f"stackbook {' '.join(args)} exited {done.returncode}, not {expect}:\n{done.stderr[-2000:]}")
    return took, json.loads(done.stdout)


def _round(env: dict, work: Path, sleep: float, resume_first: bool) -> tuple[float, float, dict]:
    params = ["-p", f"counter={work / 'counter'}", "-p", f"flag={work / 'flag'}", "-p", f"sleep_s={sleep}"]
    (work / "flag").unlink(missing_ok=True)
    _, failed = _cli(env, "run", str(NOTEBOOK), *params, expect=1)
    manifest = json.loads((Path(env["STACKBOOK_STATE_DIR"]) / "snapshots" / failed["id"] / "manifest.json")
                          .read_text())
    (work / "flag").write_text("0")
    order = ["resume", "full"] if resume_first else ["full", "resume"]
    took = {}
    for which in order:
        if which == "resume":
            took["resume"], rec = _cli(env, "resume", failed["id"])
            assert rec["status"] == "succeeded" and rec["resumed_from"] == failed["id"], rec
        else:
            took["full"], rec = _cli(env, "run", str(NOTEBOOK), *params)
            assert rec["status"] == "succeeded", rec
    return took["resume"], took["full"], manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleep", type=float, default=30.0, help="seconds of the long cell (default 30)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="stackbook_bench_resume_"))
    env = {**os.environ, **TELEMETRY_OFF, "STACKBOOK_DATABASE": "stackbook_bench", "STACKBOOK_STATE_DIR": str(state)}
    resumed, full, snaps = [], [], []
    for i in range(args.repeat):
        r, f, manifest = _round(env, state, args.sleep, resume_first=i % 2 == 0)
        resumed.append(r)
        full.append(f)
        snaps.append(manifest)
    ratios = sorted(r / f for r, f in zip(resumed, full))
    print(json.dumps({
        "sleep_s": args.sleep, "repeat": args.repeat,
        "resume_median_s": round(statistics.median(resumed), 3),
        "full_rerun_median_s": round(statistics.median(full), 3),
        "ratio_of_medians": round(statistics.median(resumed) / statistics.median(full), 3),
        "pairwise_ratio_min_median_max": [round(ratios[0], 3), round(statistics.median(ratios), 3),
                                          round(ratios[-1], 3)],
        "snapshot_seconds_median": round(statistics.median(m["seconds"] for m in snaps), 3),
        "snapshot_bytes": snaps[-1]["size_bytes"], "snapshot_saved": snaps[-1]["saved"],
        "resume_runs_s": [round(x, 2) for x in resumed], "full_runs_s": [round(x, 2) for x in full],
    }, indent=2))


if __name__ == "__main__":
    main()
