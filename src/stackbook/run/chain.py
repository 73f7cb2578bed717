"""The evidence chain: every finished run appended to one hash chain, ``stackbook.chain``.

An auditor shown the ledger asks whether anyone could have edited it since. Each
entry of the chain holds a run's evidence fields (``run_entry``: who, what code,
which parameters and environment file, the outcome, the executed notebook's hash)
and ``hash = sha256(prev_hash + body)``, ``body`` being the entry's canonical JSON
(kept as the exact text hashed; ``entry`` is the same as jsonb, to query), so an edited field, a
deleted entry or a rewritten tail no longer links (``stackbook.run.evidence``
verifies it). ``append`` runs in the transaction that finishes the run, under a
transaction-level advisory lock, so concurrent runs extend one chain; ``seq`` is
assigned under that lock as the last one plus one (a sequence would leave gaps on
rollback, and a gap is what a deleted entry looks like).

The table is append-only in the database: UPDATE, DELETE and TRUNCATE are revoked
from PUBLIC and a trigger raises on any of them. A superuser (or the table's owner)
can still disable the trigger and rewrite the chain from any point on; only a chain
head published elsewhere earlier (``stackbook verify --head``) shows that.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64  # the prev_hash of the first entry
HASH_RE = re.compile(r"[0-9a-f]{64}")
CHAIN_LOCK = 7_301_976  # advisory lock key serialising appends (next to ledger._SCHEMA_LOCK)

#: the columns of a run that its chain entry holds, and verify compares with the row
RUN_FIELDS = ("id", "runbook", "path", "env", "status", "params", "results", "output", "started_at", "finished_at",
              "error", "reason", "host", "git_commit", "approved_by", "pipeline_run_id", "attempt", "operator",
              "operator_verified", "code_sha256", "params_sha256", "env_file_sha256", "git_dirty", "notebook_sha256")

#: columns added after the chain began (column: entry key): compared only in the entries that hold them, since
#: older entries predate them; ``kind`` is ``run_kind`` in an entry, whose own ``kind`` says what the entry is
LATER_FIELDS = {"resumed_from": "resumed_from", "kind": "run_kind", "approval_id": "approval_id",
                "waiting": "waiting", "cells": "cells"}
ROW_COLUMNS = RUN_FIELDS + tuple(LATER_FIELDS)  # what a run's entry is made of


def compared_keys(entry: dict[str, Any]) -> list[str]:
    """The keys of a run ENTRY that verify compares with its row: every RUN_FIELDS, and the later ones it holds."""
    return list(RUN_FIELDS) + [key for key in LATER_FIELDS.values() if key in entry]


SCHEMA_SQL = """
alter table stackbook.runs add column if not exists operator text;
alter table stackbook.runs add column if not exists operator_verified boolean not null default false;
alter table stackbook.runs add column if not exists code_sha256 text;
alter table stackbook.runs add column if not exists params_sha256 text;
alter table stackbook.runs add column if not exists env_file_sha256 text;
alter table stackbook.runs add column if not exists git_dirty boolean;
alter table stackbook.runs add column if not exists notebook_sha256 text;
create table if not exists stackbook.chain (
    seq bigint primary key,
    kind text not null,
    ref text not null,
    entry jsonb not null,
    body text not null,
    prev_hash text not null,
    hash text not null unique,
    at timestamptz not null default now()
);
alter table stackbook.chain add column if not exists body text;
create index if not exists chain_ref on stackbook.chain (ref);
revoke update, delete, truncate on stackbook.chain from public;
create or replace function stackbook.chain_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'stackbook.chain is append-only: % refused (the evidence chain is never edited)', tg_op;
end $$;
create or replace trigger chain_append_only before update or delete on stackbook.chain
    for each row execute function stackbook.chain_append_only();
create or replace trigger chain_no_truncate before truncate on stackbook.chain
    for each statement execute function stackbook.chain_append_only();
"""


def canonical_json(value: Any) -> str:
    """The one text of VALUE that is hashed: sorted keys, no spaces, UTF-8 kept as it is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """The hash of an entry: it covers the previous entry's hash and every evidence field."""
    return sha256_text(prev_hash + canonical_json(entry))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def run_entry(row: dict[str, Any]) -> dict[str, Any]:
    """The chain entry of a finished run from its ledger row (a psycopg dict row): ``RUN_FIELDS``, times in
    UTC, the error without its traceback (the traceback is not evidence and may be long)."""
    entry: dict[str, Any] = {"kind": "run"}
    for name in RUN_FIELDS:
        entry[name] = _json_value(row.get(name))
    for column, key in LATER_FIELDS.items():
        entry[key] = _json_value(row.get(column))
    if entry["error"]:
        entry["error"] = {k: entry["error"].get(k) for k in ("cell_index", "ename", "evalue")}
    return entry


def _row(conn, run_id: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"select {', '.join(ROW_COLUMNS)} from stackbook.runs where id = %s", (run_id,))
        return cur.fetchone()


def append(conn, kind: str, ref: str, entry: dict[str, Any]) -> tuple[int, str]:
    """ENTRY appended to the chain (call inside a transaction); returns its (seq, hash)."""
    conn.execute("select pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
    last = conn.execute("select seq, hash from stackbook.chain order by seq desc limit 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    body = canonical_json(entry)
    digest = sha256_text(prev + body)
    conn.execute("insert into stackbook.chain (seq, kind, ref, entry, body, prev_hash, hash) "
                 "values (%s, %s, %s, %s::jsonb, %s, %s, %s)", (seq, kind, ref, body, body, prev, digest))
    return seq, digest


def append_run(conn, run_id: str) -> tuple[int, str] | None:
    """The finished run RUN_ID appended (inside the transaction that finished it); None when the row is gone."""
    row = _row(conn, run_id)
    if row is None:
        return None
    return append(conn, "run", run_id, run_entry(row))


def head(conn) -> tuple[int, str]:
    """(entries, head hash) of the chain now; (0, GENESIS) when it is empty."""
    last = conn.execute("select seq, hash from stackbook.chain order by seq desc limit 1").fetchone()
    return (last[0], last[1]) if last else (0, GENESIS)
