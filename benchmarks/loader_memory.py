"""Peak memory of stackbook.ingest.load_folder: 10x the rows against 1x, each in a fresh subprocess.

Each load runs in its own Python process into an empty scratch schema, and
reports its peak RSS (``ru_maxrss``). Two paths are measured: a clean file
(the COPY fast path) and the same file with one bad row near its end (the fast
path fails at the end, then the checked path reads every record and
quarantines the bad one). Goal: peak at 10x <= 1.3 x peak at 1x.

    .venv/bin/python benchmarks/loader_memory.py [--rows 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader_throughput import data_file  # noqa: E402

CHILD = r"""
import json, resource, sys
from stackbook.run import db
from stackbook.ingest import load_folder
schema = sys.argv[2]
try:
    report = load_folder(sys.argv[1], schema=schema, max_bad_ratio=0.01)
    print(json.dumps({"rows_loaded": report.rows_loaded, "rows_quarantined": report.rows_quarantined,
                      "method": report.tables[0]["method"], "seconds": round(report.seconds, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
finally:
    with db.connect() as conn:
        conn.execute(f'drop schema if exists "{schema}" cascade')
"""


def peak(folder: Path) -> dict:
    schema = f"bench_mem_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), schema], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"loader subprocess failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows at 1x (default 200,000; 10x is 2,000,000)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = {"rows_1x": args.rows, "repeat": args.repeat, "goal": "<= 1.3"}
    for label, bad in (("copy", False), ("checked", True)):
        small = data_file(args.rows, bad_at=args.rows - 10 if bad else None)
        large = data_file(args.rows * 10, bad_at=args.rows * 10 - 10 if bad else None)
        p1, p10 = [], []
        for _ in range(args.repeat):
            a = peak(small.parent)
            b = peak(large.parent)
            assert a["rows_loaded"] + a["rows_quarantined"] == args.rows, a
            assert b["rows_loaded"] + b["rows_quarantined"] == args.rows * 10, b
            p1.append(a["peak_rss_mb"])
            p10.append(b["peak_rss_mb"])
        out[label] = {"method": b["method"], "peak_1x_mb": statistics.median(p1), "peak_10x_mb": statistics.median(p10),
                      "ratio": round(statistics.median(p10) / statistics.median(p1), 3),
                      "seconds_10x_last": b["seconds"], "rows_quarantined_10x": b["rows_quarantined"]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
