"""GX's overhead in validate_raw: the same checks as plain SQL queries, side by side, and the runbook's wall time.

The raw tables of one simulated year (``raw``, loaded by load_jaffle_shop) are copied into a scratch
schema, so that nothing of the real ``raw`` (its validation history) changes. Then, in one process
with Great Expectations already imported, alternating:

- ``quality.validate_raw`` of every committed suite (one GX checkpoint; without and with the Data Docs),
- the same expectations translated to one plain SQL query each and run with psycopg (the floor: what
  a hand-written check script would do).

Last, the runbook itself (``stackbook run validate_raw``, a fresh process and kernel, GX's import
included) against the goal of 30 s. Medians of TRIALS; the scratch schema is dropped at the end.
Usage: .venv/bin/python benchmarks/quality_overhead.py [--trials 5] [--runbook-trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stackbook.core.privacy import TELEMETRY_OFF  # noqa: E402

TABLES = ("raw_customers", "raw_orders", "raw_items", "raw_products", "raw_stores", "raw_supplies")


def copy_raw(conn, scratch: str) -> None:
    conn.execute(f'create schema "{scratch}"')
    for table in TABLES:
        conn.execute(f'create table "{scratch}".{table} as table raw.{table}')


def plain_sql(expectation: dict, schema: str, table: str, params: dict) -> str:
    """One query per expectation, counting what GX would call unexpected."""
    kw = expectation["kwargs"]
    t = f'"{schema}".{table}'

    def value(v):
        return params[v["$PARAMETER"]] if isinstance(v, dict) else v

    kind = expectation["type"]
    if kind == "expect_column_values_to_not_be_null":
        return f"select count(*) from {t} where {kw['column']} is null"
    if kind == "expect_column_values_to_be_unique":
        return f"select count(*) from (select {kw['column']} from {t} group by 1 having count(*) > 1) d"
    if kind == "expect_compound_columns_to_be_unique":
        cols = ", ".join(kw["column_list"])
        return f"select count(*) from (select {cols} from {t} group by {cols} having count(*) > 1) d"
    if kind == "expect_column_values_to_be_between":
        low, high = value(kw.get("min_value")), value(kw.get("max_value"))
        return (f"select count(*) from {t} where {kw['column']} < '{low}' or {kw['column']} > '{high}'"
                if high is not None else f"select count(*) from {t} where {kw['column']} < '{low}'")
    if kind == "expect_column_values_to_be_in_set":
        values = ", ".join(f"'{v}'" for v in kw["value_set"])
        return f"select count(*) from {t} where {kw['column']} not in ({values})"
    if kind == "unexpected_rows_expectation":
        return f"select count(*) from ({kw['unexpected_rows_query'].replace('{batch}', t)}) q"
    if kind == "expect_table_row_count_to_be_between":
        return f"select count(*) from {t}"
    raise ValueError(f"no plain SQL for {kind}")


def plain_queries(schema: str) -> list[str]:
    from stackbook.quality import suites

    chosen = suites.load()
    params = suites.parameters(chosen, 1, {}, 0.9, 10.0)
    return [plain_sql(e, schema, s.table, params) for s in chosen for e in s.for_schema(schema)]


def run_plain(url: str, queries: list[str]) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for q in queries:
            conn.execute(q).fetchone()
    return time.perf_counter() - started


def run_gx(scratch: str, data_docs: bool) -> float:
    from stackbook import quality

    started = time.perf_counter()
    validation = quality.validate_raw(scratch, data_docs=data_docs, save_history=False)
    assert validation.success, validation.failures
    return time.perf_counter() - started


def runbook_seconds(scratch: str) -> float:
    env = {**os.environ, **TELEMETRY_OFF}
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "stackbook"), "run", "validate_raw", "-e", "dev", "-p",
                    f"raw_schema={scratch}"], check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--runbook-trials", type=int, default=3)
    args = parser.parse_args()
    import psycopg

    from stackbook.run import db

    url = db.url()
    scratch = f"bench_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    import great_expectations  # noqa: F401 (paid once per runbook; measured apart)

    gx_import = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        copy_raw(conn, scratch)
        rows = {t: conn.execute(f'select count(*) from "{scratch}".{t}').fetchone()[0] for t in TABLES}
    try:
        queries = plain_queries(scratch)
        run_gx(scratch, False)  # warm-up: GX's first checkpoint compiles its metric providers
        plain, gx, gx_docs = [], [], []
        for _ in range(args.trials):
            plain.append(run_plain(url, queries))
            gx.append(run_gx(scratch, False))
            gx_docs.append(run_gx(scratch, True))
        runbook = [runbook_seconds(scratch) for _ in range(args.runbook_trials)]
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'drop schema if exists "{scratch}" cascade')
    med = {k: statistics.median(v) for k, v in
           {"plain_sql_s": plain, "gx_s": gx, "gx_with_data_docs_s": gx_docs, "runbook_s": runbook}.items()}
    print(json.dumps({"rows": rows, "expectations": len(queries), "gx_import_s": round(gx_import, 2),
                      **{k: round(v, 3) for k, v in med.items()},
                      "ratio_gx_to_sql": round(med["gx_s"] / med["plain_sql_s"], 2),
                      "ratio_gx_docs_to_sql": round(med["gx_with_data_docs_s"] / med["plain_sql_s"], 2),
                      "runbook_under_30s": med["runbook_s"] < 30}, indent=1))


if __name__ == "__main__":
    main()
