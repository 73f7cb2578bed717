"""The evidence chain: what an append costs a run, and how fast ``stackbook verify`` checks a large ledger.

Two measurements, each in a scratch database of the project-local cluster (dropped afterwards):

1. append: the trivial run of ``runner_overhead.py`` (``stackbook run`` of benchmarks/fixtures/trivial.ipynb,
   a fresh process and kernel), its median wall time, side by side with the median time of one chain append
   as a run's finish does it (advisory lock, last entry, read the row, canonical JSON, hash, insert, commit), on a
   chain that already holds the entries of those runs plus 10,000 more. Goal: append <= 5% of the run.
2. verify: a ledger of ``--entries`` synthetic finished runs (default 100,000) and their chain, verified
   (rows compared, chain recomputed); goal <= 10 s without notebook hashing. ``--notebooks`` of them (default
   1,000) have an executed notebook on disk, the size of a real one, to report notebooks per second.

    .venv/bin/python benchmarks/evidence_chain.py [--repeat 7] [--entries 100000] [--notebooks 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from stackbook.core.privacy import TELEMETRY_OFF
from stackbook.run import chain, ledger, pgcluster

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "benchmarks" / "fixtures" / "trivial.ipynb"


def scratch_database() -> tuple[str, str]:
    name = f"stackbook_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgcluster.database_url(), autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    return name, psycopg.conninfo.make_conninfo(pgcluster.database_url(), dbname=name)


def drop(name: str) -> None:
    with psycopg.connect(pgcluster.database_url(), autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def synthetic_runs(conn, count: int, notebooks: int, folder: Path) -> None:
    """COUNT finished runs by COPY, NOTEBOOKS of them with an executed notebook in FOLDER; then their chain."""
    body = json.dumps(json.loads(NOTEBOOK.read_text()), indent=1) * 4  # about an executed notebook's size
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    buf = io.StringIO()
    for i in range(count):
        output, digest = f"{folder}/{i}.ipynb", ""
        if i < notebooks:
            data = body.encode()
            Path(output).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
        start = t0 + timedelta(seconds=i)
        row = [f"r{i:07d}", "load_jaffle_shop", "prod", "succeeded", json.dumps({"years": i % 5}),
               json.dumps({"rows_loaded": i}), output, start.isoformat(), (start + timedelta(seconds=2)).isoformat(),
               "bench", "alice", "t", "a" * 64, "b" * 64, "c" * 64, "f", digest or "\\N"]
        buf.write("\t".join(row) + "\n")
    cols = ("id, runbook, env, status, params, results, output, started_at, finished_at, host, operator, "
            "operator_verified, code_sha256, params_sha256, env_file_sha256, git_dirty, notebook_sha256")
    with conn.cursor() as cur, cur.copy(f"copy stackbook.runs ({cols}) from stdin") as copy:
        copy.write(buf.getvalue())
    chain_of_rows(conn)


def chain_of_rows(conn) -> None:
    """The chain entries of every run, as finish would append them, written by COPY."""
    from psycopg.rows import dict_row

    prev, buf = chain.GENESIS, io.StringIO()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"select {', '.join(chain.ROW_COLUMNS)} from stackbook.runs order by id")
        for seq, row in enumerate(cur.fetchall(), start=1):
            body = chain.canonical_json(chain.run_entry(row))
            digest = chain.sha256_text(prev + body)
            text = body.replace("\\", "\\\\")
            buf.write(f"{seq}\trun\t{row['id']}\t{text}\t{text}\t{prev}\t{digest}\n")
            prev = digest
    with conn.cursor() as cur, cur.copy("copy stackbook.chain (seq, kind, ref, entry, body, prev_hash, hash) "
                                        "from stdin") as cp:
        cp.write(buf.getvalue())


def timed_run(env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "stackbook"), "run", str(NOTEBOOK), "-p", "x=2",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"stackbook run failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def append_cost(conn, repeat: int) -> float:
    """Median seconds of one append (a run's finish transaction's share), on the existing rows."""
    ids = [r[0] for r in conn.execute("select id from stackbook.runs order by id limit %s", (repeat * 20,))]
    took = []
    for run_id in ids:
        t0 = time.perf_counter()
        with conn.transaction():
            chain.append_run(conn, run_id)
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--notebooks", type=int, default=1_000)
    args = ap.parse_args()
    from stackbook.run import evidence

    result = {}
    name, url = scratch_database()
    env = {**os.environ, **TELEMETRY_OFF, "STACKBOOK_DATABASE": name}
    env.pop("DATABASE_URL", None)
    try:
        with psycopg.connect(url, autocommit=True) as conn, tempfile.TemporaryDirectory() as folder:
            ledger.ensure_schema(conn)
            synthetic_runs(conn, 10_000, 0, Path(folder))
            timed_run(env)  # warm the page cache
            runs = [timed_run(env) for _ in range(args.repeat)]
            append = append_cost(conn, args.repeat)
            result["append"] = {"trivial_run_median_s": round(statistics.median(runs), 3),
                                "append_median_ms": round(append * 1000, 3),
                                "append_share_of_run_pct": round(100 * append / statistics.median(runs), 3)}
    finally:
        drop(name)
    name, url = scratch_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn, tempfile.TemporaryDirectory() as folder:
            ledger.ensure_schema(conn)
            synthetic_runs(conn, args.entries, args.notebooks, Path(folder))
            t0 = time.perf_counter()
            report = evidence.verify(conn)
            total = time.perf_counter() - t0
            assert report.ok, [str(p) for p in report.problems[:5]]
            result["verify"] = {"entries": report.entries, "total_s": round(total, 2),
                                "without_notebooks_s": round(total - report.notebook_seconds, 2),
                                "notebooks": report.notebooks_checked,
                                "notebooks_per_s": report.to_json()["notebooks_per_s"]}
    finally:
        drop(name)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
