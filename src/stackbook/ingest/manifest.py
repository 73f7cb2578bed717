"""The load manifest and the quarantine, two tables beside the loaded tables.

``<schema>._stackbook_loads``: one row per file per run (loaded, skipped,
rejected, empty, header_only, failed) with the file's SHA-256, size and
figures. The latest ``loaded`` row of a table says which file content the
table holds, so an unchanged file is skipped.

``<schema>._stackbook_quarantine``: one row per bad record: table, file,
checksum, line number, the raw line (bytes that did not decode are shown as
``\\xNN``) and the reason.

Both live in the loaded schema, so dropping a schema takes its history with it.
"""

from __future__ import annotations

from psycopg import sql

from stackbook.ingest.report import QUARANTINE

LOADS = "_stackbook_loads"

QUARANTINE_COLUMNS = ("load_id", "table_name", "file_name", "file_sha256", "line_number", "raw_line", "reason")


def ensure(conn, schema: str) -> None:
    """Create the schema, the manifest and the quarantine table when absent."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("create schema if not exists {}").format(s))
    conn.execute(sql.SQL("""
        create table if not exists {}.{} (
            id bigserial primary key,
            table_name text not null,
            file_name text not null,
            file_path text not null,
            file_size bigint not null,
            file_sha256 text,
            status text not null,
            method text,
            keys text[],
            rows_loaded bigint not null default 0,
            rows_inserted bigint,
            rows_updated bigint,
            rows_quarantined bigint not null default 0,
            message text,
            started_at timestamptz not null,
            finished_at timestamptz not null default clock_timestamp(),
            seconds double precision
        )""").format(s, sql.Identifier(LOADS)))
    conn.execute(sql.SQL("""
        create index if not exists {} on {}.{} (table_name, id desc)
        """).format(sql.Identifier(LOADS + "_table_idx"), s, sql.Identifier(LOADS)))
    conn.execute(sql.SQL("""
        create table if not exists {}.{} (
            id bigserial primary key,
            load_id bigint,
            table_name text not null,
            file_name text not null,
            file_sha256 text,
            line_number bigint,
            raw_line text,
            reason text not null,
            quarantined_at timestamptz not null default now()
        )""").format(s, sql.Identifier(QUARANTINE)))


def last_loaded(conn, schema: str, table: str) -> dict | None:
    """The latest successful load of ``table`` (its file's size and checksum), or None."""
    cur = conn.execute(sql.SQL(
        "select file_name, file_size, file_sha256, finished_at from {}.{} "
        "where table_name = %s and status = 'loaded' order by id desc limit 1"
    ).format(sql.Identifier(schema), sql.Identifier(LOADS)), [table])
    row = cur.fetchone()
    if row is None:
        return None
    return {"file_name": row[0], "file_size": row[1], "file_sha256": row[2], "finished_at": row[3]}


def record(conn, schema: str, **fields) -> int:
    """Insert one manifest row; returns its id."""
    names = list(fields)
    cur = conn.execute(sql.SQL("insert into {}.{} ({}) values ({}) returning id").format(
        sql.Identifier(schema), sql.Identifier(LOADS),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names))), [fields[n] for n in names])
    return cur.fetchone()[0]


def forget_quarantine(conn, schema: str, table: str, sha: str) -> None:
    """Drop earlier quarantine rows of the same file content (a retried file is not counted twice)."""
    conn.execute(sql.SQL("delete from {}.{} where table_name = %s and file_sha256 = %s").format(
        sql.Identifier(schema), sql.Identifier(QUARANTINE)), [table, sha])


def copy_quarantine(conn, schema: str, rows, load_id: int) -> None:
    """COPY quarantine rows (an iterable of tuples without load_id) into the quarantine table."""
    stmt = sql.SQL("copy {}.{} ({}) from stdin").format(
        sql.Identifier(schema), sql.Identifier(QUARANTINE),
        sql.SQL(", ").join(map(sql.Identifier, QUARANTINE_COLUMNS)))
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        for row in rows:
            cp.write_row((load_id, *row))
