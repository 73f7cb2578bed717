"""What was sent, and which staleness episodes are open: two tables of the notify package's own.

``stackbook.notifications`` holds one row per channel per message: the run (or
pipeline run) it was about, the route index, the channel's label (scheme and
hash, never the URL), the event, ``sent`` or ``failed`` with Apprise's error
(scrubbed), the attempts and the time it took. ``stackbook runs show`` reads it.

``stackbook.notify_episodes`` holds the episodes ``stackbook check`` opened: one
open row per (runbook, env) while the runbook is stale or failing, so that a
second check stays quiet; the row is closed when the runbook is fresh again.

Both are created here, idempotently (``create ... if not exists`` under an
advisory lock, once per connection target), so the ledger's schema is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from stackbook.notify.deliver import Delivery

_SCHEMA_LOCK = 7_301_976  # the ledger's is 7_301_975
SCHEMA_SQL = """
create schema if not exists stackbook;
create table if not exists stackbook.notifications (
    id bigserial primary key,
    run_id text,
    runbook text,
    env text not null,
    route integer not null,
    channel text not null,
    event text not null,
    status text not null check (status in ('sent', 'failed')),
    error text,
    attempts integer not null default 0,
    elapsed_s double precision,
    at timestamptz not null default now()
);
create index if not exists notifications_run on stackbook.notifications (run_id);
create index if not exists notifications_env_at on stackbook.notifications (env, at desc);
create table if not exists stackbook.notify_episodes (
    id bigserial primary key,
    runbook text not null,
    env text not null,
    state text not null,
    run_id text,
    opened_at timestamptz not null default now(),
    notified_at timestamptz,
    closed_at timestamptz
);
create unique index if not exists notify_episodes_open on stackbook.notify_episodes (runbook, env)
    where closed_at is null;
"""

_ready: set[str] = set()


def ensure_schema(conn) -> None:
    key = conn.info.dsn
    if key in _ready:
        return
    exists = conn.execute("select to_regclass('stackbook.notify_episodes') is not null").fetchone()[0]
    if not exists:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA_SQL)
    _ready.add(key)


def record(conn, deliveries: Iterable[Delivery], *, run_id: str | None, runbook: str | None, env: str) -> None:
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.executemany(
            """insert into stackbook.notifications (run_id, runbook, env, route, channel, event, status, error,
                                                    attempts, elapsed_s)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [(run_id, runbook, env, d.route, d.channel, d.event, d.status, d.error, d.attempts, d.elapsed_s)
             for d in deliveries])


def of_run(conn, run_id: str) -> list[dict[str, Any]]:
    """The deliveries about one run (or pipeline run), oldest first."""
    ensure_schema(conn)
    rows = conn.execute(
        """select route, channel, event, status, error, attempts, elapsed_s, at from stackbook.notifications
            where run_id = %s order by at, id""", (run_id,)).fetchall()
    keys = ("route", "channel", "event", "status", "error", "attempts", "elapsed_s", "at")
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(keys, row)} for row in rows]


def sent_about(conn, run_id: str) -> bool:
    """Whether any message about RUN_ID reached a channel."""
    ensure_schema(conn)
    return conn.execute("select exists (select 1 from stackbook.notifications where run_id = %s and status = 'sent')",
                        (run_id,)).fetchone()[0]


# --- episodes of `stackbook check` ---------------------------------------------------------------


def open_episodes(conn, env: str) -> dict[str, dict[str, Any]]:
    """The open episodes of ENV by runbook."""
    ensure_schema(conn)
    rows = conn.execute("""select runbook, id, state, run_id, opened_at, notified_at from stackbook.notify_episodes
                            where env = %s and closed_at is null""", (env,)).fetchall()
    return {r[0]: {"id": r[1], "state": r[2], "run_id": r[3], "opened_at": r[4], "notified_at": r[5]} for r in rows}


def open_episode(conn, runbook: str, env: str, state: str, run_id: str | None) -> dict[str, Any]:
    """The open episode of (RUNBOOK, ENV), opened now when there is none (a concurrent check opens it once)."""
    ensure_schema(conn)
    conn.execute("""insert into stackbook.notify_episodes (runbook, env, state, run_id) values (%s, %s, %s, %s)
                    on conflict (runbook, env) where closed_at is null do nothing""", (runbook, env, state, run_id))
    return open_episodes(conn, env)[runbook]


def claim(conn, episode_id: int) -> bool:
    """Take the episode's one notification (False: it was sent already, or another check is sending it)."""
    row = conn.execute("""update stackbook.notify_episodes set notified_at = now()
                           where id = %s and notified_at is null returning id""", (episode_id,)).fetchone()
    return row is not None


def unclaim(conn, episode_id: int) -> None:
    """No channel got the message: the next check tries again."""
    conn.execute("update stackbook.notify_episodes set notified_at = null where id = %s", (episode_id,))


def close_episode(conn, episode_id: int) -> None:
    conn.execute("update stackbook.notify_episodes set closed_at = now() where id = %s and closed_at is null",
                 (episode_id,))
