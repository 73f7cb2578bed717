"""`stackbook verify`: is the evidence chain intact, and does every executed notebook still match it?"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from stackbook.cli.common import emit_json, handle_errors
from stackbook.core.errors import UsageError


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r} is not a date: use YYYY-MM-DD or an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@click.command()
@click.option("-e", "--env", default=None, help="Check the runs of this environment only (the chain is always "
                                                "recomputed whole).")
@click.option("--since", default=None, metavar="DATE", help="Check runs appended since DATE (YYYY-MM-DD) only.")
@click.option("--head", "published_head", default=None, metavar="HASH",
              help="A chain head published earlier: it must still be in the chain.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (only it, on stdout).")
@handle_errors
def verify(env: str | None, since: str | None, published_head: str | None, as_json: bool) -> None:
    """Recompute the evidence chain and check every executed notebook against it.

    Each entry's hash must match its contents and link to the entry before
    it, with no entry missing; each run's ledger row must equal its chain
    entry; a head published earlier (--head) must still be in the chain;
    each executed notebook in the run store must have the hash its run
    recorded. Exit 0 when everything holds (the entries and the head are
    printed: publish the head somewhere the database's admins cannot
    write); exit 1 naming each broken entry.
    """
    from stackbook.core import environments
    from stackbook.run import evidence, ledger

    if env is not None:
        environments.load(env)  # an unknown environment: exit 2
    with ledger.session(reap_stale=False) as conn:
        report = evidence.verify(conn, since=_since(since), published_head=published_head, env=env)
    if as_json:
        emit_json(report.to_json())
    else:
        for problem in report.problems:
            click.echo(f"stackbook: {problem}", err=True)
        state = "intact" if report.ok else f"BROKEN ({len(report.problems)} problem(s))"
        click.echo(f"chain {state}: {report.entries} entries, head {report.head}")
        click.echo(f"{report.runs_checked} run(s) compared with their entries, "
                   f"{report.notebooks_checked} executed notebook(s) re-hashed")
    sys.exit(report.exit_code)
