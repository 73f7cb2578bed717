"""Connections to the stackbook database ($DATABASE_URL or the local cluster).

``connect`` is a plain psycopg connection. ``Link`` is the one a run holds for its
whole life: when the database restarts under it (``stackbook down`` and ``up``
during a long cell, a failover), the heartbeat and the final record do not die
with the connection: ``Link.run`` reconnects and tries again, with backoff, within
a budget (``STACKBOOK_DB_RETRY_S``, default 45 s), and raises
``LedgerUnreachable`` only when the database stayed away that long.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from stackbook.core.errors import DatabaseUnavailable, LedgerUnreachable
from stackbook.run import pgcluster

RETRY_ENV = "STACKBOOK_DB_RETRY_S"
DEFAULT_RETRY_S = 45.0
MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def url(dbname: str = "stackbook") -> str:
    return pgcluster.database_url(dbname)


def connect(dbname: str = "stackbook", autocommit: bool = True, **kw):
    """A psycopg 3 connection; autocommit by default. DatabaseUnavailable (exit 2) when it cannot connect."""
    import psycopg

    target = url(dbname)
    kw.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(target, autocommit=autocommit, **kw)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise DatabaseUnavailable(
            f"cannot connect to {redact(target)} ({reason}) "
            + ("Check DATABASE_URL (unset it to use the project-local cluster)."
               if os.environ.get("DATABASE_URL") else "Start the local cluster with `stackbook up`.")
        ) from None


def redact(database_url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(database_url)
    if not parts.password:
        return database_url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def password(database_url: str) -> str | None:
    return urlsplit(database_url).password


def retry_budget_s() -> float:
    """Seconds a run keeps trying to reach a database that went away: $STACKBOOK_DB_RETRY_S, default 45."""
    raw = os.environ.get(RETRY_ENV)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_RETRY_S
    except ValueError:
        raise DatabaseUnavailable(f"{RETRY_ENV}={raw!r} is not a number of seconds: set it to e.g. 45, "
                                  "or unset it for the default") from None


def target_of(conn) -> str:
    """Which database CONN talks to, as ``host:port/dbname`` (no user, no password)."""
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def lost_connection_errors() -> tuple[type[BaseException], ...]:
    """What a connection that went away raises: psycopg's operational and interface errors; and
    ``DatabaseUnavailable`` from a reconnection the database refused."""
    import psycopg

    return psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable


def backoff_s(failures: int) -> float:
    """The pause after the FAILURES-th failure in a row: none after the first (a restart is noticed on an old
    connection, a new one may work at once), then 0.25 s doubling up to ``MAX_BACKOFF_S``."""
    return 0.0 if failures <= 1 else min(MAX_BACKOFF_S, 0.25 * 2 ** (failures - 2))


class Link:
    """A connection that comes back: ``run(op)`` calls ``op(conn)``, reconnecting when the database went away.

    Shared by a run's heartbeat thread and its main thread: one operation at a time (a lock), and no lock held
    while waiting between attempts. ``on_reconnect(conn)`` runs on every new connection before the operation
    (the run re-takes its advisory lock there: a lock dies with its session).
    """

    def __init__(self, conn, *, on_reconnect: Callable[[Any], None] | None = None, dbname: str = "stackbook"):
        self._conn, self.on_reconnect, self._dbname = conn, on_reconnect, dbname
        self._lock = threading.Lock()
        self.target = target_of(conn)
        self.reconnects = 0

    @property
    def conn(self):
        """The current connection (None while the database is away)."""
        return self._conn

    def run(self, op: Callable[[Any], T], *, budget_s: float) -> T:
        """``op(conn)``; on a lost connection, reconnect and retry with backoff for at most BUDGET_S seconds
        (one immediate retry on a fresh connection always). LedgerUnreachable when it never got through."""
        lost = lost_connection_errors()
        deadline = time.monotonic() + budget_s
        failures = 0
        while True:
            try:
                return self._attempt(op, deadline)
            except lost as exc:
                failures += 1
                pause = backoff_s(failures)
                if pause and time.monotonic() + pause > deadline:
                    why = " ".join(str(exc).split()) or type(exc).__name__
                    raise LedgerUnreachable(
                        f"the ledger's database {self.target} is unreachable ({why}); gave up after {failures} "
                        f"attempts in {budget_s:.0f} s ({RETRY_ENV} sets how long to keep trying)") from None
            time.sleep(pause)

    def _attempt(self, op: Callable[[Any], T], deadline: float) -> T:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._drop()
                    timeout = max(2, min(10, int(deadline - time.monotonic())))
                    self._conn = connect(self._dbname, connect_timeout=timeout)
                    self.reconnects += 1
                    if self.on_reconnect is not None:
                        self.on_reconnect(self._conn)
                return op(self._conn)
            except lost_connection_errors():
                self._drop()  # the next attempt starts from a new connection (and its on_reconnect)
                raise

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # a broken connection closes without raising
        self._conn = None

    def close(self) -> None:
        """Close the current connection (its session's advisory locks go with it)."""
        with self._lock:
            self._drop()
