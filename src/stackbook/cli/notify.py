"""`stackbook notify test`: a test message through the routes of an environment (``stackbook.notify``)."""

from __future__ import annotations

import sys

import click

from stackbook.cli.common import emit_json, handle_errors, table
from stackbook.core.environments import DEFAULT_ENV


@click.group()
def notify() -> None:
    """Notifications: the `notify:` routes of an environment file.

    A route names events (failed, timed_out, cancelled, recovered, stale,
    succeeded), runbooks (names or glob patterns, default all) and channels
    (Apprise URLs; `${VAR}` read from the environment or .env). `stackbook run`
    and `stackbook pipeline run` notify after a run is recorded; `stackbook
    check` tells stale and failing runbooks once per episode.
    """


@notify.command("test")
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("--route", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only route N (0 is the first of the notify: list); default: every route.")
@click.option("--json", "as_json", is_flag=True, help="Print the deliveries as JSON (only them, on stdout).")
@handle_errors
def test(env: str, route: int | None, as_json: bool) -> None:
    """Send a test message through every channel of every route, and say whether each was delivered.

    A channel is named by its route, its scheme and a short hash of its URL
    (never the URL: it holds a secret). Exit 0 when every channel got the
    message, 1 when one did not, 2 when a route is wrong or there is none.
    """
    from stackbook.notify import dispatch

    deliveries = dispatch.test_routes(env, route)
    if as_json:
        emit_json({"env": env, "delivered": all(d.sent for d in deliveries),
                   "channels": [d.to_json() for d in deliveries]})
    else:
        rows = [{**d.to_json(), "elapsed": f"{d.elapsed_s:.2f}s"} for d in deliveries]
        click.echo(table(rows, ["route", "channel", "status", "attempts", "elapsed", "error"]))
    if not all(d.sent for d in deliveries):
        click.echo(f"stackbook: {sum(not d.sent for d in deliveries)} of {len(deliveries)} channel(s) did not get "
                   "the test message", err=True)
        sys.exit(1)
