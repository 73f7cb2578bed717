"""stackbook run vs the papermill CLI on the same trivial notebook, alternately.

Both execute benchmarks/fixtures/trivial.ipynb with one parameter in a fresh
process and a fresh kernel; stackbook also checks parameters, writes the ledger
row (with heartbeat), scrubs and stores the notebook. Reports medians, the
ratio stackbook/papermill and its spread; goal: ratio <= 1.0.

    .venv/bin/python benchmarks/runner_overhead.py [--repeat 7]
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
BIN = Path(sys.executable).parent
NOTEBOOK = ROOT / "benchmarks" / "fixtures" / "trivial.ipynb"
ENV = {**os.environ, **TELEMETRY_OFF}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{done.stderr[-2000:]}")
    return took


def startup(args: list[str], repeat: int) -> float:
    return statistics.median(timed([str(BIN / "stackbook"), *args]) for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each (default 7)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "out.ipynb"
    stackbook_cmd = [str(BIN / "stackbook"), "run", str(NOTEBOOK), "-p", "x=2", "--json"]
    papermill_cmd = [str(BIN / "papermill"), str(NOTEBOOK), str(out), "-p", "x", "2", "--no-progress-bar"]
    timed(stackbook_cmd), timed(papermill_cmd)  # warm the page cache
    sb, pm = [], []
    for _ in range(args.repeat):
        sb.append(timed(stackbook_cmd))
        pm.append(timed(papermill_cmd))
    ratios = sorted(s / p for s, p in zip(sb, pm))
    result = {
        "repeat": args.repeat,
        "stackbook_median_s": round(statistics.median(sb), 3),
        "papermill_median_s": round(statistics.median(pm), 3),
        "ratio_of_medians": round(statistics.median(sb) / statistics.median(pm), 3),
        "pairwise_ratio_min_median_max": [round(ratios[0], 3), round(statistics.median(ratios), 3), round(ratios[-1], 3)],
        "stackbook_runs_s": [round(x, 2) for x in sb],
        "papermill_runs_s": [round(x, 2) for x in pm],
        "startup_median_s": {
            "--help": round(startup(["--help"], args.repeat), 3),
            "list": round(startup(["list"], args.repeat), 3),
            "show platform_check": round(startup(["show", "platform_check"], args.repeat), 3),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
