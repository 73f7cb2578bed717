"""The run ledger: one row per run in ``stackbook.runs``.

Runs heartbeat while they execute. The reaper, called by ``stackbook run`` and
``stackbook runs``, marks ``running`` rows whose runner is gone as ``failed``:
at once when the runner was on this host and its process no longer exists,
otherwise when its heartbeat is older than the heartbeat timeout. It also kills
a dead runner's orphaned kernel on this host.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading

from datetime import datetime, timezone
from typing import Any

STATES = ("running", "succeeded", "failed", "timed_out", "cancelled", "upstream_failed", "skipped")
FINAL_STATES = tuple(s for s in STATES if s != "running")
HEARTBEAT_INTERVAL_S = float(os.environ.get("STACKBOOK_HEARTBEAT_INTERVAL", "10"))
HEARTBEAT_TIMEOUT_S = float(os.environ.get("STACKBOOK_HEARTBEAT_TIMEOUT", "60"))
_SCHEMA_LOCK = 7_301_975  # advisory lock key serialising schema creation

SCHEMA_SQL = """
create schema if not exists stackbook;
create table if not exists stackbook.runs (
    id text primary key,
    runbook text not null,
    path text,
    env text not null,
    status text not null,
    params jsonb not null default '{}'::jsonb,
    results jsonb not null default '{}'::jsonb,
    output text,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    duration_s double precision,
    error jsonb,
    reason text,
    host text not null,
    pid integer,
    kernel_pid integer,
    git_commit text,
    heartbeat_at timestamptz not null default now(),
    approved_by text,
    pipeline_run_id text,
    attempt integer not null default 1
);
create index if not exists runs_runbook_env_started on stackbook.runs (runbook, env, started_at desc);
create index if not exists runs_status on stackbook.runs (status) where status = 'running';
create index if not exists runs_pipeline_run on stackbook.runs (pipeline_run_id);
"""

COLUMNS = (
    "id", "runbook", "path", "env", "status", "params", "results", "output", "started_at", "finished_at",
    "duration_s", "error", "reason", "host", "pid", "kernel_pid", "git_commit", "heartbeat_at",
    "approved_by", "pipeline_run_id", "attempt",
)
_JSON_COLUMNS = {"params", "results", "error"}

_ready: set[str] = set()


def new_run_id() -> str:
    """Sortable and unique: UTC time then random hex."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def hostname() -> str:
    return socket.gethostname()


def ensure_schema(conn) -> None:
    key = conn.info.dsn
    if key in _ready:
        return
    exists = conn.execute("select to_regclass('stackbook.runs') is not null").fetchone()[0]
    if not exists:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA_SQL)
    _ready.add(key)


def _row_to_record(row: dict) -> dict[str, Any]:
    rec = dict(row)
    for col in ("started_at", "finished_at", "heartbeat_at"):
        if rec.get(col) is not None:
            rec[col] = rec[col].isoformat()
    return rec


def _query(conn, sql: str, args: tuple | dict = ()) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def start_run(conn, *, run_id: str, runbook: str, path: str, env: str, params: dict, output: str,
              git_commit: str | None, approved_by: str | None = None, pipeline_run_id: str | None = None,
              attempt: int = 1) -> None:
    conn.execute(
        """insert into stackbook.runs (id, runbook, path, env, status, params, output, host, pid, git_commit,
                                       approved_by, pipeline_run_id, attempt)
           values (%s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s)""",
        (run_id, runbook, path, env, json.dumps(params), output, hostname(), os.getpid(), git_commit,
         approved_by, pipeline_run_id, attempt),
    )


def insert_final(conn, *, run_id: str, runbook: str, env: str, status: str, reason: str | None = None,
                 params: dict | None = None, pipeline_run_id: str | None = None, path: str | None = None) -> None:
    """A row for a run that never started (skipped, upstream_failed)."""
    conn.execute(
        """insert into stackbook.runs (id, runbook, path, env, status, params, host, pid, reason, pipeline_run_id,
                                       finished_at, duration_s)
           values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 0)""",
        (run_id, runbook, path, env, status, json.dumps(params or {}), hostname(), os.getpid(), reason,
         pipeline_run_id),
    )


def set_kernel_pid(conn, run_id: str, pid: int | None) -> None:
    conn.execute("update stackbook.runs set kernel_pid = %s where id = %s", (pid, run_id))


def heartbeat(conn, run_id: str) -> None:
    conn.execute("update stackbook.runs set heartbeat_at = now() where id = %s and status = 'running'", (run_id,))


def finish_run(conn, run_id: str, *, status: str, results: dict, error: dict | None, reason: str | None) -> dict:
    conn.execute(
        """update stackbook.runs
              set status = %s, results = %s, error = %s, reason = %s, finished_at = now(),
                  duration_s = extract(epoch from now() - started_at), heartbeat_at = now()
            where id = %s""",
        (status, json.dumps(results), json.dumps(error) if error else None, reason, run_id),
    )
    return get_run(conn, run_id)


def get_run(conn, run_id: str) -> dict | None:
    rows = _query(conn, f"select {', '.join(COLUMNS)} from stackbook.runs where id = %s", (run_id,))
    return _row_to_record(rows[0]) if rows else None


def list_runs(conn, *, runbook: str | None = None, status: str | None = None, env: str | None = None,
              pipeline_run_id: str | None = None, limit: int | None = 20) -> list[dict]:
    where, args = [], []
    for col, value in (("runbook", runbook), ("status", status), ("env", env), ("pipeline_run_id", pipeline_run_id)):
        if value:
            where.append(f"{col} = %s")
            args.append(value)
    sql = f"select {', '.join(COLUMNS)} from stackbook.runs"
    if where:
        sql += " where " + " and ".join(where)
    sql += " order by started_at desc, id desc"
    if limit:
        sql += f" limit {int(limit)}"
    return [_row_to_record(r) for r in _query(conn, sql, tuple(args))]


def running_run(conn, runbook: str, env: str) -> dict | None:
    rows = _query(
        conn,
        "select id, host, pid, started_at from stackbook.runs where runbook = %s and env = %s and status = 'running' "
        "order by started_at desc limit 1",
        (runbook, env),
    )
    return rows[0] if rows else None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_kernel(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"ipykernel" in fh.read()
    except OSError:
        return False


def _kill_orphan_kernel(pid: int | None) -> bool:
    if pid and _pid_alive(pid) and _is_kernel(pid):
        try:
            os.kill(pid, signal.SIGKILL)
            return True
        except OSError:
            return False
    return False


def reap(conn, timeout_s: float | None = None) -> list[str]:
    """Mark running rows whose runner is gone as failed; returns their ids."""
    timeout_s = HEARTBEAT_TIMEOUT_S if timeout_s is None else timeout_s
    rows = _query(
        conn,
        "select id, host, pid, kernel_pid, extract(epoch from now() - heartbeat_at) as age "
        "from stackbook.runs where status = 'running'",
    )
    me, reaped = hostname(), []
    for row in rows:
        reason = None
        if row["host"] == me and row["pid"] != os.getpid() and not _pid_alive(row["pid"]):
            reason = f"stale: runner process {row['pid']} on {me} is gone"
        elif row["age"] > timeout_s:
            reason = f"stale: no heartbeat for {row['age']:.0f} s (timeout {timeout_s:.0f} s)"
        if reason is None:
            continue
        if row["host"] == me and _kill_orphan_kernel(row["kernel_pid"]):
            reason += f"; orphaned kernel {row['kernel_pid']} killed"
        cur = conn.execute(
            """update stackbook.runs set status = 'failed', reason = %s, finished_at = now(),
                      duration_s = extract(epoch from now() - started_at),
                      error = coalesce(error, jsonb_build_object('cell_index', null, 'ename', 'StaleRun', 'evalue', %s::text))
                where id = %s and status = 'running'""",
            (reason, reason, row["id"]),
        )
        if cur.rowcount:
            reaped.append(row["id"])
            if row["host"] == me:
                _remove_run_files(row["id"])
    return reaped


def _remove_run_files(run_id: str) -> None:
    """A dead runner's scratch files: results, kernel connection file and sockets."""
    from stackbook.core import project

    for path in (project.state_dir() / "tmp").glob(f"{run_id}.*"):
        try:
            path.unlink()
        except OSError:
            pass


class Heartbeat:
    """Updates a run's heartbeat from a daemon thread until stopped."""

    def __init__(self, conn, run_id: str, interval_s: float = HEARTBEAT_INTERVAL_S):
        self._conn, self._run_id, self._interval = conn, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                heartbeat(self._conn, self._run_id)
            except Exception:  # a lost heartbeat is reaped later; the run goes on
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def lock_key(runbook: str, env: str) -> str:
    return f"stackbook:{runbook}:{env}"


def try_lock(conn, runbook: str, env: str) -> bool:
    """A session-level advisory lock per (runbook, env); freed when the connection closes."""
    return conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key(runbook, env),)).fetchone()[0]


def unlock(conn, runbook: str, env: str) -> None:
    conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key(runbook, env),))


