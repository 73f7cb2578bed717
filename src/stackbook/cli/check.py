"""`stackbook check`: stale or failing runbooks of an environment, told once per episode (``stackbook.notify``)."""

from __future__ import annotations

import sys

import click

from stackbook.cli.common import emit_json, handle_errors, table
from stackbook.core.environments import DEFAULT_ENV


@click.command()
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("--runbook", "patterns", multiple=True, metavar="NAME",
              help="Only these runbooks (names or glob patterns); repeatable. Default: every runbook.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (only it, on stdout).")
@handle_errors
def check(env: str, patterns: tuple[str, ...], as_json: bool) -> None:
    """Find runbooks that are stale or failing in ENV and notify once per episode.

    A runbook is stale when it has not succeeded within its freshness window
    (freshness_hours, else twice its cron interval; one with a window that
    never ran is stale too) and failing when its latest run did not succeed.
    The first check that finds one notifies the routes that ask for `stale`;
    later checks stay quiet until it is fresh again. Meant for cron or a
    CronJob (`stackbook schedule` adds it) and as a health probe: exit 0 when
    every watched runbook is fresh, 1 otherwise.
    """
    from stackbook.notify import check as check_mod

    report = check_mod.check(env, list(patterns) or None)
    if as_json:
        emit_json(report.to_json())
    else:
        rows = [{"runbook": r.runbook, "state": r.state, "detail": r.detail,
                 "notified": ", ".join(f"{d.channel} {d.status}" for d in r.deliveries)} for r in report.runbooks]
        click.echo(table(rows, ["runbook", "state", "detail", "notified"]))
    if not report.healthy:
        bad = [r.runbook for r in report.runbooks if not r.healthy]
        click.echo(f"stackbook: {len(bad)} runbook(s) not fresh in {env}: {', '.join(bad)}", err=True)
    sys.exit(report.exit_code)
