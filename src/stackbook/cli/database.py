"""`stackbook up`, `down` and `status`: the project-local PostgreSQL.

Their plain output ends up in CI logs (`make run` calls `stackbook up`), so the
database URL is printed there with its password redacted (``***``), for the
local cluster and for an external ``DATABASE_URL`` alike. ``status --json`` is
for scripts and keeps the full ``database_url``, as documented.
"""

from __future__ import annotations

import sys

import click

from stackbook.cli.common import emit_json, handle_errors


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def up(as_json: bool) -> None:
    """Start the project-local PostgreSQL under .stackbook/ (initdb on first use).

    With DATABASE_URL set, nothing is started: that database is used.
    """
    import os

    from stackbook.run import pgcluster
    from stackbook.run.db import redact

    if os.environ.get("DATABASE_URL"):
        msg = "DATABASE_URL is set: using that database, nothing started"
        emit_json(pgcluster.status()) if as_json else click.echo(msg, err=True)
        return
    info, started = pgcluster.up()
    if as_json:
        emit_json({**pgcluster.status(), "started": started})
        return
    state = "started" if started else "already running"
    click.echo(f"PostgreSQL {state} on 127.0.0.1:{info.port} (socket in {info.socket_dir})")
    click.echo(f"database_url: {redact(info.url())}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def down(as_json: bool) -> None:
    """Stop the project-local PostgreSQL (data is kept under .stackbook/pg)."""
    from stackbook.run import pgcluster

    stopped = pgcluster.down()
    if as_json:
        emit_json({"stopped": stopped})
    else:
        click.echo("PostgreSQL stopped" if stopped else "PostgreSQL was not running")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (database_url, running, port ...).")
@handle_errors
def status(as_json: bool) -> None:
    """Whether the database runs, and its connection URL (password redacted; --json keeps it whole)."""
    from stackbook.run import pgcluster
    from stackbook.run.db import redact

    st = pgcluster.status()
    if as_json:
        emit_json(st)
        return
    if st["mode"] == "external":
        click.echo(f"external database (DATABASE_URL): {redact(st['database_url'])}")
        return
    click.echo(f"PostgreSQL: {'running' if st['running'] else 'stopped'}")
    click.echo(f"  database_url: {redact(st['database_url'])}")
    for key in ("port", "data_dir", "socket_dir", "bindir", "os_user"):
        click.echo(f"  {key}: {st[key]}")
    if st.get("data_dir_note"):
        click.echo(f"  data_dir is {st['data_dir_note']}")
    if not st["running"]:
        sys.exit(1)
