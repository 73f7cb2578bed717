"""`stackbook metrics`: the run ledger and the notifications in Prometheus text format, to a file or served;
`--rules FILE` writes Prometheus alerting rules for them (``stackbook.notify.rules``)."""

from __future__ import annotations

import sys

import click

from stackbook.cli.common import handle_errors


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write to FILE (atomically) for node_exporter's textfile collector instead of standard output.")
@click.option("--serve", "port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve GET /metrics on PORT until interrupted (reads the ledger at every scrape).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on with --serve.")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write Prometheus alerting rules for these metrics to FILE (a runbook failing or stale, a run "
                   "running past its timeout, notifications failing) instead; check it with promtool check rules.")
@click.option("-e", "--env", default=None, help="Only runs in this environment (default: all).")
@handle_errors
def metrics(out: str | None, port: int | None, host: str, rules_file: str | None, env: str | None) -> None:
    """Prometheus metrics of the run ledger: runs by runbook and state, last duration, last success.

    Also the notifications (deliveries sent and failed). With --rules FILE, the
    alerting rules for them, with labels and annotations naming the runbook and
    the environment (thresholds from the runbooks' metadata; -e limits them).
    """
    from stackbook.notify import metrics as metrics_mod

    if rules_file:
        from stackbook.notify import rules

        click.echo(f"stackbook: alerting rules written to {rules.write(rules_file, env)}", err=True)
        return

    if port is not None:
        import time

        server, _thread = metrics_mod.serve(port, host, env)
        click.echo(f"stackbook: serving metrics on http://{host}:{server.server_port}/metrics (Ctrl-C to stop)",
                   err=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            server.shutdown()
    if out:
        path = metrics_mod.write(out, env)
        click.echo(f"stackbook: metrics written to {path}", err=True)
        return
    sys.stdout.write(metrics_mod.render(env))
