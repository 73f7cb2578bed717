"""Book generation against the size of the ledger: 1,000, 10,000 and 100,000 recent runs.

The book's evidence (run history, charts, freshness, DR and audit pages) comes
from the ledger, which only grows; building the book must not. For each size,
synthetic finished runs of the catalogue's runbooks (90 % succeeded, durations
from seconds to minutes, started within the charts' window of 30 days) are
written with COPY into an environment name of their own (``bench_book_<hex>``,
deleted afterwards: no other environment's rows are touched) and the table is
analysed, as autovacuum does for a ledger that grew over months. Then, in a fresh
Python process each time, ``stackbook.book.generate.generate(env, tmp)`` reads
the ledger and writes every page and chart of the book's source tree for that
environment: what `stackbook book -e ENV` does before it starts Sphinx. The
Sphinx build is not measured: its input (the pages, a chart of a few hundred
points) no longer depends on the ledger's size; a duration chart of 10 MB did.

Reported per size (medians of ``--repeat`` processes): wall time of
``generate``; peak RSS of the process (``ru_maxrss``) and its growth over the
RSS after the imports (stackbook, psycopg, matplotlib), i.e. what generating
costs; the size of the duration chart. Goal: memory flat (growth at 100,000
runs at most 1.3 x growth at 1,000).

    .venv/bin/python benchmarks/book_ledger_scale.py [--sizes 1000,10000,100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from stackbook.book import charts, generate
from stackbook.run import db

charts._pyplot()  # matplotlib imported before the baseline: the same in every process
with db.connect() as conn:
    conn.execute("select 1")
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
t0 = time.perf_counter()
gen = generate.generate(sys.argv[1], Path(sys.argv[2]))
seconds = time.perf_counter() - t0
svg = Path(sys.argv[2]) / "reports" / "_charts" / "duration.svg"
print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mb": round(rss(), 1),
                  "growth_mb": round(rss() - base, 1), "svg_kb": round(svg.stat().st_size / 1024, 1),
                  "written": len(gen.written)}))
"""


def fill(conn, env: str, n: int, names: list[str], now: datetime) -> None:
    """``n`` finished runs in ``env``, spread over the last 29 days, written with COPY."""
    rng = random.Random(n)
    span = timedelta(days=29).total_seconds()
    columns = "id, runbook, env, status, host, started_at, finished_at, duration_s, params, results"
    with conn.cursor().copy(f"copy stackbook.runs ({columns}) from stdin") as copy:
        for i in range(n):
            started = now - timedelta(seconds=span * (i + 0.5) / n)
            duration = round(rng.lognormvariate(2.5, 0.8), 3)
            status = "succeeded" if rng.random() < 0.9 else rng.choice(("failed", "timed_out", "cancelled"))
            copy.write_row((f"{env}-{i:07d}", names[i % len(names)], env, status, "bench", started,
                            started + timedelta(seconds=duration), duration, '{"rows": 1000}',
                            json.dumps({"rows_loaded": i})))


def measure(env: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="sb-book-scale-") as src:
        done = subprocess.run([sys.executable, "-c", CHILD, env, src], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "DO_NOT_TRACK": "1"})
    if done.returncode != 0:
        sys.exit(f"generate subprocess failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="numbers of runs, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="processes per size (medians are reported)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from stackbook.core import catalog
    from stackbook.run import db, ledger

    names = [p.stem for p in catalog.paths()]
    rows = []
    with db.connect() as conn:
        ledger.ensure_schema(conn)
        for n in sizes:
            env = f"bench_book_{uuid.uuid4().hex[:10]}"
            try:
                fill(conn, env, n, names, datetime.now(UTC))
                conn.execute("analyze stackbook.runs")  # as autovacuum does for a ledger that grew over time
                trials = [measure(env) for _ in range(args.repeat)]
            finally:
                conn.execute("delete from stackbook.runs where env = %s", (env,))
            row = {"runs": n, **{k: statistics.median(t[k] for t in trials)
                                 for k in ("seconds", "peak_rss_mb", "growth_mb", "svg_kb")},
                   "seconds_all": [t["seconds"] for t in trials]}
            rows.append(row)
            print(f"{n:>7} runs: generate {row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"(+{row['growth_mb']:.0f} MB over the imports), duration chart {row['svg_kb']:.0f} KB",
                  file=sys.stderr)
    print("\n| runs | generate (median) | peak RSS | growth over imports | duration chart |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['runs']:,} | {r['seconds']:.2f} s | {r['peak_rss_mb']:.0f} MB | {r['growth_mb']:.0f} MB "
              f"| {r['svg_kb']:,.0f} KB |")
    first, last = rows[0]["growth_mb"], rows[-1]["growth_mb"]
    print(json.dumps({"rows": rows, "growth_ratio_last_first": round(last / first, 2) if first else None}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
