"""``validate_raw``: the raw tables against their suites, the one call the quality runbook makes.

In order: the suites are read and the tables they name checked to exist (a clear error, not a
GX traceback, when the raw data was never loaded); the row-count band is computed from the
history table; one GX checkpoint validates every suite and builds the Data Docs; failed
``unexpected_rows`` expectations get a sample of their rows; the history gets a row per suite;
the Data Docs are made readable offline. Nothing raises for failed expectations here: the
runbook shows them first, then ``Validation.check()`` fails the run naming each one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stackbook.core.errors import QualityError
from stackbook.quality import checkpoint, datadocs, results
from stackbook.quality import suites as suites_mod
from stackbook.quality.results import ExpectationResult, Validation
from stackbook.run import db

log = logging.getLogger("stackbook.quality")


def _connect(url: str):
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise QualityError(f"cannot connect to {db.redact(url)} to validate ({' '.join(str(exc).split())}): "
                           "start the database (stackbook up) or fix DATABASE_URL") from None


def _check_tables(conn, schema: str, chosen: list[suites_mod.Suite]) -> None:
    present = {r[0] for r in conn.execute(
        "select table_name from information_schema.tables where table_schema = %s", (schema,))}
    missing = sorted({s.table for s in chosen} - present)
    if missing:
        raise QualityError(f"no table {', '.join(f'{schema}.{t}' for t in missing)} to validate: load the raw data "
                           f"first (stackbook run load_jaffle_shop -p schema={schema})")


def _sample_rows(conn, found: list[ExpectationResult], schema: str) -> None:
    """Up to SAMPLE_SIZE rows of each failed ``unexpected_rows`` expectation (GX's summary has only a count)."""
    import psycopg
    from psycopg import sql

    for r in found:
        if r.success or r.error or not r.query:
            continue
        table = sql.Identifier(schema, r.table).as_string(conn)
        query = r.query.replace("{batch}", table)
        try:
            cur = conn.execute(f"select * from ({query}) as unexpected limit {results.SAMPLE_SIZE}")
        except psycopg.Error as exc:
            r.sample = [f"(no sample: {' '.join(str(exc).split())[:200]})"]
            continue
        names = [c.name for c in cur.description]
        r.sample = checkpoint.plain([dict(zip(names, row)) for row in cur.fetchall()])


def _row_counts(conn, found: list[ExpectationResult], schema: str, tables: set[str]) -> dict[str, int]:
    """Each table's row count: GX's observed value where a suite checks it, else count(*)."""
    from psycopg import sql

    counts = {r.table: int(r.observed) for r in found
              if r.type == "expect_table_row_count_to_be_between" and isinstance(r.observed, int)}
    for table in sorted(tables - set(counts)):
        counts[table] = conn.execute(sql.SQL("select count(*) from {}").format(
            sql.Identifier(schema, table))).fetchone()[0]
    return counts


def validate_raw(raw_schema: str = "raw", *, years: int = 1, min_row_ratio: float = 0.9, max_row_ratio: float = 10.0,
                 suites: list[str] | None = None, suites_folder: Path | None = None, database_url: str | None = None,
                 data_docs: bool = True, save_history: bool = True) -> Validation:
    """Validate RAW_SCHEMA's tables against the suites (all, or the named ones); see the module docstring."""
    url = database_url or db.url()
    chosen = suites_mod.load(suites, suites_folder)
    suites_mod.parameters(chosen, years, {}, min_row_ratio, max_row_ratio)  # bad values fail before any query
    run_id = os.environ.get("STACKBOOK_RUN_ID") or None
    with _connect(url) as conn:
        _check_tables(conn, raw_schema, chosen)
        previous = results.previous_counts(conn, raw_schema)
    params = suites_mod.parameters(chosen, years, previous, min_row_ratio, max_row_ratio)
    folder = datadocs.prepare(datadocs.destination(run_id)) if data_docs else None
    found, seconds = checkpoint.run(chosen, raw_schema=raw_schema, parameters=params, database_url=url,
                                    docs_dir=folder, run_name=run_id or "interactive")
    with _connect(url) as conn:
        _sample_rows(conn, found, raw_schema)
        counts = _row_counts(conn, found, raw_schema, {s.table for s in chosen})
        validation = Validation(raw_schema=raw_schema, results=found, row_counts=counts, parameters=params,
                                seconds=seconds, docs_dir=str(folder) if folder else None)
        if save_history:
            results.save(conn, validation, run_id)
    if folder is not None:
        datadocs.make_offline(folder)
        validation.pages = datadocs.suite_pages(folder, [s.name for s in chosen])
        datadocs.write_index(folder, validation.pages, validation.suite_success(), raw_schema)
    log.info("validated %d suites of %s in %.1f s: %d failed", len(chosen), raw_schema, seconds,
             len(validation.failures))
    return validation
