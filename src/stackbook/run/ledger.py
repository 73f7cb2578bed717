"""The run ledger: one row per run in ``stackbook.runs``, read back as ``RunRecord``s.

``open_run`` is the one way a run gets a row: it checks nothing about the run
store (the engine does that first, so a bad store records nothing), takes the
advisory lock of an exclusive runbook (refused: ``RefusedError``, exit 3),
inserts the ``running`` row, heartbeats it, and on every way out of its block
(return, exception, Ctrl-C) finishes the row and closes the connection (the
lock goes with it). ``session`` is the connection every reader uses.

A run outlives its database connection: its heartbeat and its final record go
through a ``db.Link``, which reconnects when the database restarts under a long
cell (and re-takes the exclusive lock, or notes in the row's reason that another
run took it meanwhile). A database that stays away past the retry budget does not
lose the outcome: the final record goes to the spool (``stackbook.run.spool``) and
``session`` writes it into the ledger at the next connection, before reaping.

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
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from stackbook.core.errors import ApprovalRefused, LedgerUnreachable, RefusedError
from stackbook.run import chain, db, spool
from stackbook.run.record import COLUMNS, NEVER_STARTED, STATES, Provenance, RunRecord  # noqa: F401 (re-exported)

HEARTBEAT_INTERVAL_S = float(os.environ.get("STACKBOOK_HEARTBEAT_INTERVAL", "10"))
HEARTBEAT_TIMEOUT_S = float(os.environ.get("STACKBOOK_HEARTBEAT_TIMEOUT", "60"))
_SCHEMA_LOCK = 7_301_975  # advisory lock key serialising schema creation
SCHEMA_VERSION = "stackbook ledger 3"  # the schema's comment; bump it with every statement added below

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

#: resumed runs, interactive sessions, manual steps, approvals and attestations (the engine and evidence issues)
SCHEMA_V3_SQL = """
alter table stackbook.runs add column if not exists resumed_from text;
alter table stackbook.runs add column if not exists kind text not null default 'headless';
alter table stackbook.runs add column if not exists approval_id text;
alter table stackbook.runs add column if not exists waiting jsonb;
alter table stackbook.runs add column if not exists cells jsonb;
create index if not exists runs_waiting on stackbook.runs (status) where status = 'waiting';
create table if not exists stackbook.approvals (
    id text primary key,
    runbook text not null,
    env text not null,
    code_sha256 text not null,
    params jsonb not null default '{}'::jsonb,
    params_sha256 text not null,
    env_file_sha256 text,
    approved_by text not null,
    approver_verified boolean not null default false,
    reason text,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    used_by text,
    used_at timestamptz
);
create table if not exists stackbook.attestations (
    id text primary key,
    run_id text not null,
    cell_index integer,
    instruction text,
    attested_by text not null,
    attester_verified boolean not null default false,
    note text,
    at timestamptz not null default now()
);
create index if not exists attestations_run on stackbook.attestations (run_id);
"""

_ready: set[str] = set()


def new_run_id() -> str:
    """Sortable and unique: UTC time then random hex."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def hostname() -> str:
    return socket.gethostname()


def ensure_schema(conn) -> None:
    """The ledger's tables, created or brought up to ``SCHEMA_VERSION`` (every statement is idempotent; the
    schema's comment says which version ran last, so a ledger that is up to date costs one query)."""
    key = conn.info.dsn
    if key in _ready:
        return
    current = conn.execute("select obj_description(to_regnamespace('stackbook'), 'pg_namespace')").fetchone()[0]
    if current != SCHEMA_VERSION:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA_SQL)
            conn.execute(chain.SCHEMA_SQL)
            conn.execute(SCHEMA_V3_SQL)
            conn.execute(f"comment on schema stackbook is '{SCHEMA_VERSION}'")
    _ready.add(key)


def _query(conn, sql: str, args: tuple | dict = ()) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def consume_approval(conn, approval_id: str, run_id: str) -> str:
    """APPROVAL_ID marked used by RUN_ID (inside the transaction that inserts the run's row); returns its approver.
    ``ApprovalRefused`` (exit 3) when another run used it first, it expired meanwhile or it is gone."""
    used = conn.execute("update stackbook.approvals set used_by = %s, used_at = now() where id = %s and used_by is "
                        "null and (expires_at is null or expires_at > now()) returning approved_by",
                        (run_id, approval_id)).fetchone()
    if used:
        return used[0]
    row = conn.execute("select used_by from stackbook.approvals where id = %s", (approval_id,)).fetchone()
    what = "is not in the ledger" if row is None else (f"was already used by run {row[0]}" if row[0] else "expired")
    raise ApprovalRefused(f"approval {approval_id} {what}: an approval is good for one run; ask an approver for a "
                          "new one with `stackbook approve` (nothing was executed)")


def start_run(conn, *, run_id: str, runbook: str, path: str, env: str, params: dict, output: str,
              git_commit: str | None, pipeline_run_id: str | None = None,
              attempt: int = 1, provenance: Provenance | None = None, kind: str = "headless",
              resumed_from: str | None = None, approval_id: str | None = None) -> None:
    """The ``running`` row; PROVENANCE's operator None with operator_verified: the session's role. APPROVAL_ID
    is consumed in the same transaction (``consume_approval``) and its approver is the row's ``approved_by``."""
    prov = provenance or Provenance()
    with conn.transaction():  # the approval is used and the row inserted, or neither
        approved_by = consume_approval(conn, approval_id, run_id) if approval_id else None
        _insert_running(conn, run_id, runbook, path, env, params, output, git_commit, approved_by, pipeline_run_id,
                        attempt, prov, kind, resumed_from, approval_id)


def _insert_running(conn, run_id, runbook, path, env, params, output, git_commit, approved_by, pipeline_run_id,
                    attempt, prov, kind, resumed_from, approval_id) -> None:
    conn.execute(
        """insert into stackbook.runs (id, runbook, path, env, status, params, output, host, pid, git_commit,
                                       approved_by, pipeline_run_id, attempt, operator, operator_verified,
                                       code_sha256, params_sha256, env_file_sha256, git_dirty, kind, resumed_from,
                                       approval_id)
           values (%s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s,
                   case when %s then coalesce(%s, session_user::text) else %s end, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (run_id, runbook, path, env, json.dumps(params), output, hostname(), os.getpid(), git_commit,
         approved_by, pipeline_run_id, attempt, prov.operator_verified, prov.operator, prov.operator,
         prov.operator_verified, prov.code_sha256, prov.params_sha256, prov.env_file_sha256, prov.git_dirty,
         kind, resumed_from, approval_id),
    )


def insert_final(conn, *, run_id: str, runbook: str, env: str, status: str, reason: str | None = None,
                 params: dict | None = None, pipeline_run_id: str | None = None, path: str | None = None) -> None:
    """A row for a run that never started (``NEVER_STARTED``: skipped, upstream_failed, refused), in the chain."""
    with conn.transaction():
        conn.execute(
            """insert into stackbook.runs (id, runbook, path, env, status, params, host, pid, reason, pipeline_run_id,
                                           finished_at, duration_s)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 0)""",
            (run_id, runbook, path, env, status, json.dumps(params or {}), hostname(), os.getpid(), reason,
             pipeline_run_id),
        )
        chain.append_run(conn, run_id)


def set_kernel_pid(conn, run_id: str, pid: int | None) -> None:
    conn.execute("update stackbook.runs set kernel_pid = %s where id = %s", (pid, run_id))


def heartbeat(conn, run_id: str) -> None:
    conn.execute("update stackbook.runs set heartbeat_at = now() where id = %s and status = 'running'", (run_id,))


def finish_run(conn, run_id: str, *, status: str, results: dict, error: dict | None,
               reason: str | None, kernel_pid: int | None = None, notebook_sha256: str | None = None,
               waiting: dict | None = None) -> RunRecord:
    """The row's final state (KERNEL_PID fills a pid the database was away to receive) and its chain entry,
    in one transaction: a finished run is in the chain, or not finished. WAITING: the manual step a
    ``waiting`` run stopped at (cleared for every other state)."""
    with conn.transaction():
        conn.execute(
            """update stackbook.runs
                  set status = %s, results = %s, error = %s, reason = %s, finished_at = now(),
                      duration_s = extract(epoch from now() - started_at), heartbeat_at = now(),
                      kernel_pid = coalesce(kernel_pid, %s), notebook_sha256 = %s, waiting = %s
                where id = %s""",
            (status, json.dumps(results), json.dumps(error) if error else None, reason, kernel_pid,
             notebook_sha256, json.dumps(waiting) if waiting else None, run_id),
        )
        chain.append_run(conn, run_id)
    return get_run(conn, run_id)


def get_run(conn, run_id: str) -> RunRecord | None:
    rows = _query(conn, f"select {', '.join(COLUMNS)} from stackbook.runs where id = %s", (run_id,))
    return RunRecord.from_row(rows[0]) if rows else None


def list_runs(conn, *, runbook: str | None = None, status: str | None = None, env: str | None = None,
              pipeline_run_id: str | None = None, limit: int | None = 20, kind: str | None = None) -> list[RunRecord]:
    where, args = [], []
    for col, value in (("runbook", runbook), ("status", status), ("env", env), ("pipeline_run_id", pipeline_run_id),
                       ("kind", kind)):
        if value:
            where.append(f"{col} = %s")
            args.append(value)
    sql = f"select {', '.join(COLUMNS)} from stackbook.runs"
    if where:
        sql += " where " + " and ".join(where)
    sql += " order by started_at desc, id desc"
    if limit:
        sql += f" limit {int(limit)}"
    return [RunRecord.from_row(r) for r in _query(conn, sql, tuple(args))]


def running_run(conn, runbook: str, env: str, exclude: str | None = None,
                status: str = "running") -> RunRecord | None:
    """The newest row of RUNBOOK in ENV in STATUS but EXCLUDE: the holder of its lock (``running``, for the
    refusal message), or a ``waiting`` run, which blocks new runs of an exclusive runbook."""
    rows = _query(
        conn,
        f"select {', '.join(COLUMNS)} from stackbook.runs where runbook = %s and env = %s and status = %s "
        "and id is distinct from %s order by started_at desc limit 1",
        (runbook, env, status, exclude),
    )
    return RunRecord.from_row(rows[0]) if rows else None


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
        if _mark_stale(conn, row["id"], reason):
            reaped.append(row["id"])
            if row["host"] == me:
                _remove_run_files(row["id"])
    return reaped


def _mark_stale(conn, run_id: str, reason: str) -> bool:
    """RUN_ID ``failed`` as stale (a JupyterLab session ``cancelled``: it was abandoned), with its chain entry;
    False when it finished meanwhile."""
    with conn.transaction():
        cur = conn.execute(
            """update stackbook.runs set status = case when kind = 'interactive' then 'cancelled' else 'failed' end,
                      reason = case when kind = 'interactive' then 'session abandoned: ' || %s else %s end,
                      finished_at = now(),
                      duration_s = extract(epoch from now() - started_at),
                      error = coalesce(error, jsonb_build_object('cell_index', null, 'ename', 'StaleRun',
                                                                 'evalue', %s::text))
                where id = %s and status = 'running'""",
            (reason, reason, reason, run_id),
        )
        if not cur.rowcount:
            return False
        chain.append_run(conn, run_id)
    return True


def _remove_run_files(run_id: str) -> None:
    """A dead runner's scratch files: results, kernel connection file and sockets."""
    from stackbook.core import project

    for path in (project.state_dir() / "tmp").glob(f"{run_id}.*"):
        try:
            path.unlink()
        except OSError:
            pass


class Heartbeat:
    """Updates a run's heartbeat from a daemon thread until stopped, through the run's ``db.Link``: a beat
    that finds the database gone reconnects at the next one (the row says how long it was away)."""

    def __init__(self, link: db.Link, run_id: str, interval_s: float = HEARTBEAT_INTERVAL_S):
        self._link, self._run_id, self._interval = link, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        beat = partial(heartbeat, run_id=self._run_id)
        while not self._stop.wait(self._interval):
            try:
                self._link.run(beat, budget_s=0)
            except LedgerUnreachable:  # the next beat tries again; the final record has a budget of its own
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)


def lock_key(runbook: str, env: str) -> str:
    return f"stackbook:{runbook}:{env}"


def try_lock(conn, runbook: str, env: str) -> bool:
    """A session-level advisory lock per (runbook, env); freed when the connection closes."""
    return conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key(runbook, env),)).fetchone()[0]


def unlock(conn, runbook: str, env: str) -> None:
    conn.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key(runbook, env),))


@contextmanager
def session(reap_stale: bool = True) -> Iterator[Any]:
    """A connection to the ledger, closed on every path: schema ensured, the spooled records of runs that
    finished while the database was away written (``spool.drain``), then stale ``running`` rows reaped."""
    conn = db.connect()
    try:
        ensure_schema(conn)
        spool.drain(conn)  # before the reaper: a spooled run's row is finished as it ended, never reaped stale
        if reap_stale:
            reap(conn)
        yield conn
    finally:
        conn.close()


def _lock_or_refuse(conn, runbook: str, env: str, exclude: str | None = None) -> None:
    """The exclusive lock of RUNBOOK in ENV, or RefusedError: another run holds it, or a run of it is waiting
    at a manual step (EXCLUDE: the waiting run that is being continued)."""
    if try_lock(conn, runbook, env):
        waiting = running_run(conn, runbook, env, exclude=exclude, status="waiting")
        if waiting is None:
            return
        unlock(conn, runbook, env)
        raise RefusedError(
            f"runbook {runbook!r} is exclusive and run {waiting.id} of it is waiting at a manual step in "
            f"environment {env!r}: confirm the step with `stackbook attest {waiting.id} --by NAME` or end it with "
            f"`stackbook runs cancel {waiting.id}` (nothing was executed)", runbook=runbook, env=env)
    holder = running_run(conn, runbook, env)
    who = f"run {holder.id} (pid {holder.pid} on {holder.host})" if holder else "another run"
    raise RefusedError(
        f"runbook {runbook!r} is exclusive and {who} is running it in environment {env!r}; wait for it to finish",
        runbook=runbook,
        env=env,
    )


class OpenRun:
    """The ``running`` row ``open_run`` holds: its id, its ``db.Link``, and ``finish`` (once).

    The row as inserted is kept (``current`` falls back to it while the database is away). ``finish`` writes
    the final state through the link (reconnecting within ``db.retry_budget_s()``) or, when the database stays
    away, keeps it in the spool: ``spooled`` is then that file, and the record is returned all the same.
    """

    def __init__(self, link: db.Link, row: RunRecord, redact: Callable[[str], str], exclusive: bool = False):
        self.link, self.run_id, self._row, self._redact = link, row.id, row, redact
        self.exclusive = exclusive
        self.record: RunRecord | None = None
        self.lock_lost: str | None = None  # set when a reconnection found the exclusive lock taken
        self.spooled = None  # the spool file, when the final record could not reach the database

    @property
    def conn(self):
        return self.link.conn

    @property
    def finished(self) -> bool:
        return self.record is not None

    def relock(self, conn) -> None:
        """``on_reconnect`` of the link: the exclusive lock died with the old session; take it again."""
        if not self.exclusive or try_lock(conn, self._row.runbook, self._row.env):
            return
        holder = running_run(conn, self._row.runbook, self._row.env, exclude=self.run_id)
        who = f"run {holder.id} (pid {holder.pid} on {holder.host})" if holder else "another session"
        self.lock_lost = self.lock_lost or f"the exclusive lock was lost while the database was away ({who} took it)"

    def set_kernel_pid(self, pid: int | None) -> None:
        self._row.kernel_pid = pid
        try:
            self.link.run(partial(set_kernel_pid, run_id=self.run_id, pid=pid), budget_s=0)
        except LedgerUnreachable:  # the database is away now: ``finish`` writes the pid with the final state
            return

    def current(self) -> RunRecord:
        """The row as it is now (``running`` until ``finish``); as inserted while the database is away."""
        try:
            found = self.link.run(partial(get_run, run_id=self.run_id), budget_s=0)
        except LedgerUnreachable:
            found = None
        return found or replace(self._row)

    def finish(self, status: str, *, results: dict | None = None, error: dict | None = None,
               reason: str | None = None, notebook_sha256: str | None = None,
               waiting: dict | None = None) -> RunRecord:
        """The row's final state (values already scrubbed by the caller) and its chain entry; returns the
        finished record. NOTEBOOK_SHA256: of the executed notebook's bytes as the run store holds them;
        WAITING: the manual step a ``waiting`` run stopped at."""
        results = results or {}
        self._row.notebook_sha256 = notebook_sha256
        self._row.waiting = waiting
        final = partial(self._write_final, status=status, results=results, error=error, reason=reason)
        try:
            self.record = self.link.run(final, budget_s=db.retry_budget_s())
        except LedgerUnreachable as exc:
            self.record = self._spool(status, results, error, self._noted(reason), exc)
        return self.record

    def _noted(self, reason: str | None) -> str | None:
        """REASON, and that the exclusive lock was lost if a reconnection found it taken."""
        if not self.lock_lost:
            return reason
        return f"{reason}; {self.lock_lost}" if reason else self.lock_lost

    def _write_final(self, conn, *, status: str, results: dict, error: dict | None,
                     reason: str | None) -> RunRecord:
        # the note is read here, after the link's reconnection (and its relock) for this very write
        return finish_run(conn, self.run_id, status=status, results=results, error=error, reason=self._noted(reason),
                          kernel_pid=self._row.kernel_pid, notebook_sha256=self._row.notebook_sha256,
                          waiting=self._row.waiting)

    def _spool(self, status: str, results: dict, error: dict | None, reason: str | None,
               exc: LedgerUnreachable) -> RunRecord:
        """The final record, kept in the spool for the next command that reaches the database."""
        now = datetime.now(UTC)
        started = self._row.started_at or now
        record = replace(self._row, status=status, results=results, error=error, reason=reason, finished_at=now,
                         waiting=self._row.waiting if status == "waiting" else None,
                         heartbeat_at=now, duration_s=round((now - started).total_seconds(), 3))
        self.spooled = spool.keep(record, self.link.target, self._redact)
        print(f"stackbook: {exc}. The final record of run {self.run_id} ({status}) is kept in {self.spooled}; "
              "the next stackbook command that reaches the database (e.g. `stackbook runs`) writes it to the "
              "ledger", file=sys.stderr, flush=True)
        return record

    def finish_after(self, exc: BaseException) -> None:
        """What ``open_run`` records when its block raised before finishing the row."""
        if self.finished:
            return
        if isinstance(exc, KeyboardInterrupt):
            status, reason = "cancelled", "interrupted (Ctrl-C or SIGTERM)"
        else:
            status, reason = "failed", f"the runner failed: {type(exc).__name__}: {self._redact(str(exc))}"
        self.finish(status, reason=reason,
                    error={"cell_index": None, "ename": type(exc).__name__, "evalue": self._redact(str(exc))})


@contextmanager
def open_run(*, run_id: str, runbook: str, path: str | None, env: str, params: dict, output: str,
             exclusive: bool = False, git_commit: str | None = None,
             pipeline_run_id: str | None = None, attempt: int = 1, redact: Callable[[str], str] | None = None,
             provenance: Provenance | None = None, kind: str = "headless", resumed_from: str | None = None,
             approval_id: str | None = None) -> Iterator[OpenRun]:
    """A ``running`` row for the block; finished and disconnected on every path out of it.

    An exclusive runbook's lock is taken first (held: ``RefusedError``, exit 3, no row); APPROVAL_ID is
    consumed with the row's insert (used already: ``ApprovalRefused``, exit 3, no row). A block that
    raises leaves its row ``failed`` (``cancelled`` on Ctrl-C) naming the error, REDACT applied; a block
    that returns without calling ``finish`` leaves it ``failed`` too: no row stays ``running``. The lock
    is a session lock: it is freed when the connection closes, on every path.
    """
    with session() as conn:
        if exclusive:
            _lock_or_refuse(conn, runbook, env)
        start_run(conn, run_id=run_id, runbook=runbook, path=path, env=env, params=params, output=output,
                  git_commit=git_commit, pipeline_run_id=pipeline_run_id, attempt=attempt,
                  provenance=provenance, kind=kind, resumed_from=resumed_from, approval_id=approval_id)
        with _held(conn, run_id, redact, exclusive) as run:
            yield run


@contextmanager
def _held(conn, run_id: str, redact: Callable[[str], str] | None, exclusive: bool) -> Iterator[OpenRun]:
    """The ``running`` row RUN_ID of CONN heartbeaten for the block; finished and disconnected on every path."""
    link = db.Link(conn)
    run = OpenRun(link, get_run(conn, run_id), redact or str, exclusive=exclusive)
    link.on_reconnect = run.relock
    try:
        with Heartbeat(link, run_id):
            try:
                yield run
            except BaseException as exc:
                run.finish_after(exc)
                raise
            if not run.finished:
                run.finish("failed", reason="the runner ended without finishing its run")
    finally:
        link.close()


def _reopen(conn, run_id: str) -> bool:
    """The ``waiting`` row RUN_ID ``running`` again, on this host and process; False when it is not waiting."""
    cur = conn.execute(
        """update stackbook.runs set status = 'running', host = %s, pid = %s, kernel_pid = null,
                  heartbeat_at = now(), finished_at = null, duration_s = null
            where id = %s and status = 'waiting'""", (hostname(), os.getpid(), run_id))
    return bool(cur.rowcount)


@contextmanager
def reopen_run(*, run_id: str, runbook: str, env: str, exclusive: bool = False,
               redact: Callable[[str], str] | None = None,
               on_reopen: Callable[[Any], None] | None = None) -> Iterator[OpenRun]:
    """The ``waiting`` run RUN_ID ``running`` again for the block (``stackbook attest``), as ``open_run`` holds a
    new one: the exclusive lock taken first, then, in one transaction, the row reopened and ON_REOPEN(conn) (the
    attestation) written. A row no longer waiting (attested or cancelled meanwhile): ``UsageError``."""
    from stackbook.core.errors import UsageError

    with session() as conn:
        if exclusive:
            _lock_or_refuse(conn, runbook, env, exclude=run_id)
        with conn.transaction():
            if not _reopen(conn, run_id):
                raise UsageError(f"run {run_id} is no longer waiting (attested or cancelled meanwhile; see "
                                 f"`stackbook runs show {run_id}`): nothing was executed")
            if on_reopen:
                on_reopen(conn)
        with _held(conn, run_id, redact, exclusive) as run:
            yield run


def cancel_waiting(conn, run_id: str, reason: str) -> RunRecord | None:
    """The ``waiting`` run RUN_ID ended ``cancelled`` with REASON (its chain entry too); None when not waiting."""
    with conn.transaction():  # the row locked until the cancel is written: an attest meanwhile waits, then refuses
        cur = conn.execute("select 1 from stackbook.runs where id = %s and status = 'waiting' for update", (run_id,))
        if cur.fetchone() is None:
            return None
        rec = get_run(conn, run_id)
        return finish_run(conn, run_id, status="cancelled", results=rec.results, error=rec.error, reason=reason,
                          notebook_sha256=rec.notebook_sha256)
