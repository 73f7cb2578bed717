"""Connections to the stackbook database ($DATABASE_URL or the local cluster)."""

from __future__ import annotations

from urllib.parse import urlsplit

from stackbook import pgcluster


def url(dbname: str = "stackbook") -> str:
    return pgcluster.database_url(dbname)


def connect(dbname: str = "stackbook", autocommit: bool = True, **kw):
    """A psycopg 3 connection; autocommit by default."""
    import psycopg

    return psycopg.connect(url(dbname), autocommit=autocommit, **kw)


def password(database_url: str) -> str | None:
    return urlsplit(database_url).password
