"""Connections to the stackbook database ($DATABASE_URL or the local cluster)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from stackbook.run import pgcluster
from stackbook.core.errors import DatabaseUnavailable


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
