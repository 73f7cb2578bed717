"""A folder of CSV files: `psql \\copy` one after another (the floor), `load_folder`, `stackbook run load_csv_folder`.

The folder (issue 14) is generated once into ``<state dir>/bench/loader_folder``: 8 files, about 860,000
rows and 100 MB, one file of about 75 MB; integers, decimals, dates and text; a spec file giving every
column's type and a primary key per table (``keys``). Each trial, interleaved (the order rotates):

- **floor**: a fresh schema with the eight typed tables (primary keys included) created first, untimed;
  then eight ``psql -c "\\copy ..."`` processes, one after another, timed together;
- **load_folder**: in this process, into a fresh (absent) schema, default ``jobs``;
- **command**: ``.venv/bin/stackbook run load_csv_folder -e dev -p source_dir=... -p schema=... -p keys=...
  -p spec=...`` into a fresh schema, a process of its own (kernel, ledger, run store included).

Everything runs against the database ``stackbook_bench`` (``STACKBOOK_DATABASE``) of the local cluster with a
temporary ``STACKBOOK_STATE_DIR`` for the command, so no ``dev`` data is touched; every schema is dropped.
Prints medians and the ratios floor / ours (1.0 = as fast as the floor; goals: >= 0.9 for the command,
> 1.0 for load_folder).

    .venv/bin/python benchmarks/loader_folder.py [--repeat 3] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ["STACKBOOK_DATABASE"] = "stackbook_bench"  # before stackbook resolves a database name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stackbook.core import project  # noqa: E402
from stackbook.ingest import load_folder  # noqa: E402
from stackbook.run import db, pgcluster  # noqa: E402

#: table -> rows; "orders" is the big file (~75 MB), the other seven share ~25 MB
FILES = {"orders": 640_000, "customers": 60_000, "products": 20_000, "payments": 50_000, "shipments": 40_000,
         "returns": 15_000, "stores": 5_000, "visits": 45_000}
COLUMNS = ["id", "customer_id", "quantity", "amount", "discount", "order_day", "ship_day", "status", "note"]
TYPES = {"id": "bigint", "customer_id": "bigint", "quantity": "integer", "amount": "numeric(12,2)",
         "discount": "numeric(5,3)", "order_day": "date", "ship_day": "date", "status": "text", "note": "text"}
STATUS = ["placed", "shipped", "completed", "returned", "return_pending"]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo",
         "lima", "mike", "november", "oscar", "papa"]


def folder() -> Path:
    """The generated folder (cached; a ``.done`` marker says it is complete)."""
    out = project.state_dir() / "bench" / "loader_folder"
    if (out / ".done").exists():
        return out
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for n, (table, rows) in enumerate(FILES.items()):
        rnd = random.Random(n)
        with open(data / f"{table}.csv", "w", encoding="utf-8", newline="") as fh:
            fh.write(",".join(COLUMNS) + "\n")
            chunk = []
            for i in range(1, rows + 1):
                m, d = 1 + i % 12, 1 + i % 28
                note = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 9)))
                chunk.append(f"{i},{rnd.randint(1, 99999)},{rnd.randint(1, 50)},{rnd.randint(100, 9999999) / 100},"
                             f"{rnd.randint(0, 500) / 1000},2024-{m:02d}-{d:02d},2025-{m:02d}-{d:02d},"
                             f"{STATUS[i % 5]},\"{note}, ref {rnd.getrandbits(48):x}\"\n")
                if len(chunk) >= 10_000:
                    fh.write("".join(chunk))
                    chunk = []
            fh.write("".join(chunk))
    spec = {"tables": {t: {"columns": TYPES} for t in FILES}}
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    (out / "keys.json").write_text(json.dumps({t: ["id"] for t in FILES}))
    (out / ".done").touch()
    return out


def ddl(schema: str, table: str) -> str:
    cols = ", ".join(f"{c} {t}" for c, t in TYPES.items())
    return f'create table "{schema}".{table} ({cols}, primary key (id))'


def run_floor(conn, data: Path, schema: str, env: dict) -> float:
    conn.execute(f'create schema "{schema}"')
    for table in FILES:
        conn.execute(ddl(schema, table))
    conn.execute("checkpoint")
    psql = pgcluster.pg_tool("psql")
    t0 = time.perf_counter()
    for table in FILES:
        cmd = [psql, db.url(), "-v", "ON_ERROR_STOP=1", "-q", "-c",
               f"\\copy \"{schema}\".{table} ({', '.join(COLUMNS)}) from '{data / (table + '.csv')}' "
               f"with (format csv, header true)"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"psql failed: {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def run_in_process(base: Path, schema: str, jobs: int | None) -> float:
    spec = json.loads((base / "spec.json").read_text())
    keys = json.loads((base / "keys.json").read_text())
    t0 = time.perf_counter()
    report = load_folder(base / "data", schema=schema, keys=keys, spec=spec, **({"jobs": jobs} if jobs else {}))
    took = time.perf_counter() - t0
    assert report.rows_loaded == sum(FILES.values()), report
    return took


def run_command(base: Path, schema: str, env: dict, jobs: int | None) -> float:
    cmd = [str(ROOT / ".venv" / "bin" / "stackbook"), "run", "load_csv_folder", "-e", "dev",
           "-p", f"source_dir={base / 'data'}", "-p", f"schema={schema}",
           "-p", f"keys={(base / 'keys.json').read_text()}", "-p", f"spec={base / 'spec.json'}"]
    if jobs:
        cmd += ["-p", f"jobs={jobs}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"stackbook run failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return took


def check_rows(conn, schema: str) -> None:
    for table, rows in FILES.items():
        n = conn.execute(f'select count(*) from "{schema}".{table}').fetchone()[0]
        assert n == rows, f"{schema}.{table}: {n} rows, expected {rows}"


def trial(which: str, conn, base: Path, env: dict, cli_env: dict, jobs: int | None) -> float:
    schema = f"bench_folder_{uuid.uuid4().hex[:8]}"
    try:
        if which == "floor":
            took = run_floor(conn, base / "data", schema, env)
        else:
            conn.execute("checkpoint")
            took = (run_in_process(base, schema, jobs) if which == "load_folder"
                    else run_command(base, schema, cli_env, jobs))
        check_rows(conn, schema)
        return took
    finally:
        conn.execute(f'drop schema if exists "{schema}" cascade')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None, help="jobs for load_folder and the runbook (default: theirs)")
    args = ap.parse_args()
    base = folder()
    env = {**os.environ, "DO_NOT_TRACK": "1", "PGCONNECT_TIMEOUT": "10"}
    state = Path(tempfile.mkdtemp(prefix="stackbook_bench_state_"))
    cli_env = {**env, "STACKBOOK_DATABASE": "stackbook_bench", "STACKBOOK_STATE_DIR": str(state)}
    conn = db.connect()
    times: dict[str, list[float]] = {"floor": [], "load_folder": [], "command": []}
    order = list(times)
    try:
        trial("floor", conn, base, env, cli_env, args.jobs)  # warm the page cache and the server
        for n in range(args.repeat):
            for which in order[n % 3:] + order[:n % 3]:
                times[which].append(trial(which, conn, base, env, cli_env, args.jobs))
    finally:
        conn.close()
        shutil.rmtree(state, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    size = sum(p.stat().st_size for p in (base / "data").glob("*.csv"))
    print(json.dumps({
        "files": len(FILES), "rows": sum(FILES.values()), "folder_mb": round(size / 1e6, 1),
        "largest_mb": round((base / "data" / "orders.csv").stat().st_size / 1e6, 1),
        "repeat": args.repeat, "jobs": args.jobs or "default", "load_average": os.getloadavg(),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_load_folder": round(med["floor"] / med["load_folder"], 3),
        "ratio_command": round(med["floor"] / med["command"], 3),
        "trials_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "goals": {"ratio_load_folder": "> 1.0", "ratio_command": ">= 0.9"},
    }, indent=2))


if __name__ == "__main__":
    main()
