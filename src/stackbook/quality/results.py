"""What a validation found, in stackbook's terms: one row per expectation, and the history of loads.

GX's own result objects are turned into ``ExpectationResult`` rows by ``quality.checkpoint``; this
module knows nothing of GX. It gives the runbook its table, the failures with a sample of the
unexpected values, the one error that names every failed expectation, the values for the
ledger, and the history table.

The history table ``<raw schema>._stackbook_validations`` (one row per suite per validation,
beside the loader's ``_stackbook_loads``) holds each table's row count and whether its suite
passed; the next validation accepts a row count within ``min_row_ratio`` .. ``max_row_ratio``
of the count at the last passing validation ("within a band of the previous load").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from stackbook.core.errors import ExpectationsFailed

HISTORY_TABLE = "_stackbook_validations"
SAMPLE_SIZE = 10  # unexpected values or rows shown per failed expectation


@dataclass
class ExpectationResult:
    """One expectation of one suite and how it fared."""

    suite: str
    table: str
    type: str
    description: str
    success: bool
    column: str | None = None  # the column, or the columns of a compound expectation joined by ", "
    observed: Any = None  # GX's observed value (a row count, the number of unexpected rows)
    unexpected_count: int | None = None
    element_count: int | None = None
    sample: list[Any] = field(default_factory=list)  # some unexpected values, or rows (dicts)
    error: str | None = None  # why GX could not evaluate it (a broken query, a missing column)
    query: str | None = None  # an unexpected_rows_query, schema filled in

    @property
    def name(self) -> str:
        """``suite.type(column)``: what a failure message calls it."""
        return f"{self.suite}.{self.type}" + (f"({self.column})" if self.column else "")

    def outcome(self) -> str:
        """A few words on the result: counts, the observed value or the error."""
        if self.error:
            return f"could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            return f"{self.unexpected_count}{of} rows unexpected"
        return f"observed {self.observed}"

    def summary(self) -> str:
        text = f"{self.name} ({self.description}): {self.outcome()}"
        if self.sample and not self.success:
            text += f"; e.g. {json.dumps(self.sample[:3], default=str)}"
        return text


@dataclass
class Validation:
    """A checkpoint run over the raw tables: every result, the row counts and where the Data Docs are."""

    raw_schema: str
    results: list[ExpectationResult]
    row_counts: dict[str, int]
    parameters: dict[str, Any]
    seconds: float
    docs_dir: str | None = None
    pages: dict[str, str] = field(default_factory=dict)  # suite -> its Data Docs page, relative to docs_dir

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    def suite_success(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for r in self.results:
            out[r.suite] = out.get(r.suite, True) and r.success
        return out

    def table(self):
        """Every expectation with its result, failures first (a pandas DataFrame)."""
        import pandas as pd

        rows = [{"suite": r.suite, "expectation": r.type, "column": r.column or "", "description": r.description,
                 "success": r.success, "result": r.outcome()} for r in self.results]
        frame = pd.DataFrame(rows, columns=["suite", "expectation", "column", "description", "success", "result"])
        return frame.sort_values(["success", "suite"], kind="stable").reset_index(drop=True)

    def samples(self):
        """A sample of the unexpected values (or rows) of each failed expectation, one row each."""
        import pandas as pd

        rows = [{"expectation": r.name, "description": r.description, "unexpected": r.outcome(),
                 "sample": json.dumps(r.sample[:SAMPLE_SIZE], default=str)} for r in self.failures]
        return pd.DataFrame(rows, columns=["expectation", "description", "unexpected", "sample"])

    def check(self) -> None:
        """ExpectationsFailed naming every failed expectation, unless all passed."""
        if self.success:
            return
        lines = "\n".join(f"  - {r.summary()}" for r in self.failures)
        raise ExpectationsFailed(f"{len(self.failures)} of {len(self.results)} expectations failed on "
                                 f"{self.raw_schema}.*:\n{lines}", validation=self)

    def record(self) -> dict[str, Any]:
        """What the ledger keeps: counts, the failed expectations, row counts, the Data Docs pages."""
        return {"suites": len(self.suite_success()), "expectations": len(self.results),
                "failed": [r.name for r in self.failures], "suite_success": self.suite_success(),
                "row_counts": self.row_counts, "seconds": self.seconds, "data_docs": self.docs_dir,
                "data_docs_pages": self.pages}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success": self.success}


# --------------------------------------------------------------------------- history of validated loads


def ensure_history(conn, schema: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("""
        create table if not exists {}.{} (
            id bigserial primary key,
            validated_at timestamptz not null default now(),
            run_id text,
            suite text not null,
            table_name text not null,
            row_count bigint,
            success boolean not null,
            failed text[] not null default '{{}}'
        )""").format(sql.Identifier(schema), sql.Identifier(HISTORY_TABLE)))


def previous_counts(conn, schema: str) -> dict[str, int]:
    """Each table's row count at its latest passing validation (nothing before the first)."""
    from psycopg import sql

    exists = conn.execute("select to_regclass(%s) is not null",
                          (sql.Identifier(schema, HISTORY_TABLE).as_string(conn),)).fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute(sql.SQL("""
        select distinct on (table_name) table_name, row_count from {}.{}
         where success and row_count is not null order by table_name, validated_at desc, id desc""")
                        .format(sql.Identifier(schema), sql.Identifier(HISTORY_TABLE))).fetchall()
    return {table: int(count) for table, count in rows}


def save(conn, validation: Validation, run_id: str | None) -> None:
    """One history row per suite of VALIDATION."""
    from psycopg import sql

    ensure_history(conn, validation.raw_schema)
    tables = {r.suite: r.table for r in validation.results}
    failed: dict[str, list[str]] = {}
    for r in validation.failures:
        failed.setdefault(r.suite, []).append(r.name)
    with conn.transaction():
        for suite, ok in validation.suite_success().items():
            conn.execute(sql.SQL("insert into {}.{} (run_id, suite, table_name, row_count, success, failed) "
                                 "values (%s, %s, %s, %s, %s, %s)")
                         .format(sql.Identifier(validation.raw_schema), sql.Identifier(HISTORY_TABLE)),
                         (run_id, suite, tables[suite], validation.row_counts.get(tables[suite]), ok,
                          failed.get(suite, [])))
