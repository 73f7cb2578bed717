"""The final records of runs that finished while the ledger's database was away, kept until it is back.

A run whose database does not come back within its retry budget (``stackbook.run.db.Link``)
must not lose its outcome, nor let the ledger say something the executed notebook contradicts
(the reaper would mark the row ``failed``, stale, once the runner exited). So the runner keeps
the finished record here, in ``<state dir>/spool/<host>-<port>-<dbname>/RUN_ID.json`` (scrubbed,
0600, written atomically), says so on standard error and exits with the notebook's outcome.

``drain(conn)`` writes the spooled records of CONN's database into the ledger; ``ledger.session``
calls it on every connection, before the reaper, so the next stackbook command that reaches the
database (``stackbook runs``, ``stackbook run`` ...) finishes the row as the run ended. It is
idempotent: a row still ``running`` (or marked ``failed`` as stale by a reaper that came first) is
updated, a missing row is inserted, a row some other path finished is left alone; each file is
removed once applied. Records are per database, so a spool never reaches another database.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.files import atomic_write_text
from stackbook.run.record import COLUMNS, RunRecord

DIRNAME = "spool"
VERSION = 1


def folder(target: str) -> Path:
    """The spool of the database TARGET (``host:port/dbname``, see ``db.target_of``)."""
    return project.state_dir() / DIRNAME / re.sub(r"[^A-Za-z0-9_.-]", "-", target.replace(":", "-", 1))


def _scrubbed(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_scrubbed(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v, redact) for k, v in value.items()}
    return value


def keep(record: RunRecord, target: str, redact: Callable[[str], str] = str) -> Path:
    """Spool RECORD for the database TARGET, every string through REDACT; returns the file."""
    doc = {"version": VERSION, "database": target, "record": _scrubbed(record.to_document(), redact)}
    path = folder(target) / f"{record.id}.json"
    _private_dirs(path.parent)
    return atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")


def _private_dirs(path: Path) -> None:
    """PATH and its missing parents up to the state folder, each created 0700."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder_ in reversed(missing):
        folder_.mkdir(mode=0o700, exist_ok=True)


def pending(target: str) -> list[Path]:
    """The spooled records of TARGET, oldest run first."""
    where = folder(target)
    return sorted(where.glob("*.json")) if where.is_dir() else []


_UPDATE = """update stackbook.runs
                set status = %(status)s, results = %(results)s, error = %(error)s, reason = %(reason)s,
                    finished_at = %(finished_at)s, duration_s = %(duration_s)s, heartbeat_at = %(heartbeat_at)s,
                    kernel_pid = coalesce(kernel_pid, %(kernel_pid)s), notebook_sha256 = %(notebook_sha256)s,
                    waiting = %(waiting)s
              where id = %(id)s
                and (status = 'running' or (status = 'failed' and error ->> 'ename' = 'StaleRun'))"""
_INSERT = (f"insert into stackbook.runs ({', '.join(COLUMNS)}) values ({', '.join(f'%({c})s' for c in COLUMNS)}) "
           "on conflict (id) do nothing")


def apply(conn, record: RunRecord) -> bool:
    """RECORD into the ledger: the row updated when still running (or reaped as stale), inserted when missing,
    and its chain entry appended in the same transaction. False when the row was finished some other way (left
    as it is)."""
    from stackbook.run import chain

    doc = record.to_document()
    for key in ("params", "results", "error", "waiting", "cells"):  # the jsonb columns
        doc[key] = json.dumps(doc[key]) if doc[key] is not None else None
    with conn.transaction():
        if not (conn.execute(_UPDATE, doc).rowcount or conn.execute(_INSERT, doc).rowcount):
            return False
        chain.append_run(conn, record.id)
    return True


def drain(conn) -> list[str]:
    """Write every spooled record of CONN's database into the ledger; returns the ids of the rows it finished."""
    from stackbook.run.db import target_of

    applied = []
    for path in pending(target_of(conn)):
        try:
            record = RunRecord.from_row(json.loads(path.read_text(encoding="utf-8"))["record"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            bad = path.with_suffix(".unreadable")
            path.replace(bad)
            print(f"stackbook: spooled run record {path} cannot be read ({type(exc).__name__}: {exc}); moved to "
                  f"{bad.name}: look at it, and remove it once the run's ledger row is right", file=sys.stderr)
            continue
        if apply(conn, record):
            applied.append(record.id)
            print(f"stackbook: run {record.id} ({record.runbook}: {record.status}) written to the ledger from the "
                  "spool (the database was away when it finished)", file=sys.stderr)
        path.unlink(missing_ok=True)
    return applied
