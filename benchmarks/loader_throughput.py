"""stackbook.ingest.load_folder vs `psql \\copy` of the same CSV file into the same empty table, alternately.

The file (1,000,000 rows by default, eight columns: bigint, text, text, numeric,
bigint, boolean, date, timestamp; about 90 MB) is generated once into
``.stackbook/bench/``. Before every trial the scratch schema is dropped and the
table created empty with the same DDL; then either the loader (in this process,
its own connection, the manifest, SHA-256 of the file, checks of the table and
COPY of 1 MiB blocks) or ``psql -c "\\copy ..."`` (a fresh process) loads it.
Reports the medians and throughput ratio psql / loader (1.0 = as fast as psql;
goal >= 0.9).

    .venv/bin/python benchmarks/loader_throughput.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stackbook.core import project
from stackbook.ingest import load_folder  # noqa: E402
from stackbook.run import db, pgcluster  # noqa: E402

COLUMNS = ["id", "customer", "city", "amount", "quantity", "paid", "order_day", "ordered_at"]
DDL = ("id bigint, customer text, city text, amount numeric, quantity bigint, paid boolean, order_day date, "
       "ordered_at timestamp")
CITIES = ["Lisbon", "Porto", "Braga", "Coimbra", "Faro", "Aveiro", "Évora", "Leiria"]


def data_file(rows: int, bad_at: int | None = None) -> Path:
    """A CSV file of ``rows`` rows (cached); ``bad_at``: one row with an unparsable date at that row."""
    folder = project.state_dir() / "bench" / f"ingest_{rows}{'_bad' if bad_at else ''}"
    path = folder / "bench_rows.csv"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(rows)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        chunk = []
        for i in range(1, rows + 1):
            day = 1 + i % 28
            chunk.append(f"{i},{uuid.UUID(int=rnd.getrandbits(128), version=4)},{CITIES[i % 8]},"
                         f"{rnd.randint(100, 99999) / 100},{rnd.randint(1, 9)},{'true' if i % 3 else 'false'},"
                         f"2024-{1 + i % 12:02d}-{day:02d},2024-{1 + i % 12:02d}-{day:02d} "
                         f"{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}\n")
            if i == bad_at:
                chunk[-1] = chunk[-1].replace("2024-", "2024-13-", 1)
            if len(chunk) >= 10000:
                fh.write("".join(chunk))
                chunk = []
        fh.write("".join(chunk))
    tmp.rename(path)
    return path


def fresh_table(conn, schema: str) -> None:
    conn.execute(f'drop schema if exists "{schema}" cascade')
    conn.execute(f'create schema "{schema}"')
    conn.execute(f'create table "{schema}".bench_rows ({DDL})')
    conn.execute("checkpoint")


def run_loader(path: Path, schema: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    report = load_folder(path.parent, schema=schema)
    return time.perf_counter() - t0, report.rows_loaded


def run_psql(path: Path, schema: str, env: dict) -> float:
    cmd = [pgcluster.pg_tool("psql"), db.url(), "-v", "ON_ERROR_STOP=1", "-q", "-c",
           f"\\copy \"{schema}\".bench_rows ({', '.join(COLUMNS)}) from '{path}' with (format csv, header true)"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"psql failed: {done.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "DO_NOT_TRACK": "1", "PGCONNECT_TIMEOUT": "10"}
    path = data_file(args.rows)
    schema = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    conn = db.connect()
    ours, floor = [], []
    try:
        fresh_table(conn, schema)
        run_psql(path, schema, env)  # warm the page cache and the server
        for trial in range(args.repeat):
            order = ("ours", "psql") if trial % 2 == 0 else ("psql", "ours")
            for which in order:
                fresh_table(conn, schema)
                if which == "ours":
                    took, n = run_loader(path, schema)
                    assert n == args.rows, f"loader loaded {n} rows, expected {args.rows}"
                    ours.append(took)
                else:
                    floor.append(run_psql(path, schema, env))
                    n = conn.execute(f'select count(*) from "{schema}".bench_rows').fetchone()[0]
                    assert n == args.rows, f"psql loaded {n} rows"
    finally:
        conn.execute(f'drop schema if exists "{schema}" cascade')
        conn.close()
    ratios = sorted(f / o for f, o in zip(floor, ours))
    print(json.dumps({
        "rows": args.rows,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "repeat": args.repeat,
        "loader_median_s": round(statistics.median(ours), 3),
        "psql_median_s": round(statistics.median(floor), 3),
        "throughput_ratio_of_medians": round(statistics.median(floor) / statistics.median(ours), 3),
        "pairwise_ratio_min_median_max": [round(ratios[0], 3), round(statistics.median(ratios), 3),
                                          round(ratios[-1], 3)],
        "loader_s": [round(x, 3) for x in ours],
        "psql_s": [round(x, 3) for x in floor],
        "goal": ">= 0.9",
    }, indent=2))


if __name__ == "__main__":
    main()
