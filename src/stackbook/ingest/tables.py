"""Looking at what a load left: row counts, content checksums, quarantined rows."""

from __future__ import annotations

from psycopg import sql

from stackbook.ingest import manifest


def _conn(conn):
    if conn is not None:
        return conn, False
    from stackbook.run import db

    return db.connect(), True


def table_checksum(schema: str, table: str, conn=None) -> str:
    """md5 of the table's rows in a stable order: equal checksums mean equal content."""
    c, own = _conn(conn)
    try:
        return c.execute(sql.SQL(
            "select coalesce(md5(string_agg(r, E'\\n' order by r)), md5('')) "
            "from (select t::text as r from {}.{} t) x").format(
            sql.Identifier(schema), sql.Identifier(table))).fetchone()[0]
    finally:
        if own:
            c.close()


def table_counts(schema: str, tables, conn=None) -> dict[str, int | None]:
    """Row count per table (None for a table that does not exist)."""
    c, own = _conn(conn)
    try:
        out: dict[str, int | None] = {}
        for t in tables:
            exists = c.execute("select to_regclass(%s) is not null",
                               [sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(t)).as_string(c)]
                               ).fetchone()[0]
            out[t] = c.execute(sql.SQL("select count(*) from {}.{}").format(
                sql.Identifier(schema), sql.Identifier(t))).fetchone()[0] if exists else None
        return out
    finally:
        if own:
            c.close()


def quarantine(schema: str, limit: int = 50, table: str | None = None, conn=None):
    """The latest quarantined rows (file, line, raw line, reason) as a DataFrame."""
    import pandas as pd

    c, own = _conn(conn)
    try:
        exists = c.execute("select to_regclass(%s) is not null",
                           [sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(manifest.QUARANTINE))
                            .as_string(c)]).fetchone()[0]
        cols = ["table_name", "file_name", "line_number", "reason", "raw_line", "quarantined_at"]
        if not exists:
            return pd.DataFrame(columns=cols)
        where = sql.SQL("where table_name = %s") if table else sql.SQL("")
        rows = c.execute(sql.SQL("select {} from {}.{} {} order by id desc limit %s").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(schema), sql.Identifier(manifest.QUARANTINE),
            where), ([table] if table else []) + [limit]).fetchall()
        return pd.DataFrame(rows, columns=cols)
    finally:
        if own:
            c.close()
