"""`stackbook approve`: record an approval of one destructive run (``stackbook.run.approvals``)."""

from __future__ import annotations

import click

from stackbook.cli.common import emit_json, handle_errors


@click.command()
@click.argument("runbook")
@click.option("-e", "--env", required=True, metavar="ENV",
              help="Environment the run is approved in (infra/environments/ENV.yml); always named.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter value of the approved run, as for `stackbook run`; repeatable.")
@click.option("-f", "--params-file", type=click.Path(dir_okay=False),
              help="YAML file of parameter values of the approved run.")
@click.option("--by", "by", default=None, metavar="NAME",
              help="Who approves (required unless the environment has identity: database, where the approver is "
                   "the database role of this session).")
@click.option("--reason", default=None, metavar="TEXT", help="Why the run is approved (recorded).")
@click.option("--expires", default="24h", show_default=True, metavar="DURATION",
              help="How long the approval stays good: 30m, 4h, 2d.")
@click.option("--json", "as_json", is_flag=True, help="Print the approval as JSON (only it, on stdout).")
@handle_errors
def approve(runbook, env, params, params_file, by, reason, expires, as_json) -> None:
    """Approve one run of destructive RUNBOOK in ENV: its code now, these exact parameters, that environment.

    The effective parameters are resolved as `stackbook run` resolves them (-p
    over -f over the environment file over the defaults), so approve with the
    same -p and -f the run will get. The approval is recorded in the ledger and
    the evidence chain; its id is printed. `stackbook run RUNBOOK -e ENV ...
    --approval ID` consumes it once, and only if the code, the parameters and
    the environment file are still what was approved, it has not expired and
    (with two_person in the environment file) the operator is someone else.
    Exit 2 for bad input or a run that needs no approval, 3 for an approver
    the environment does not list; nothing is recorded then.
    """
    from stackbook.core import catalog, environments
    from stackbook.run import approvals, engine, ledger

    book = catalog.load(runbook)
    environment = environments.load(env)
    options = engine.RunOptions(env=env, cli_params=list(params), params_file=params_file)
    values = engine.effective_values(book, environment, options)
    approvals.parse_duration(expires)  # a bad duration: exit 2 before the database is asked
    with ledger.session(reap_stale=False) as conn:
        given = approvals.record(conn, book, environment, values, by=by, reason=reason, expires=expires)
    if as_json:
        emit_json(given.to_json())
        return
    click.echo(given.id)
    how = "verified: the database role" if given.approver_verified else "declared"
    click.echo(f"stackbook: approval {given.id} of {given.runbook} in {given.env} by {given.approved_by} ({how}), "
               f"good for one run until {given.expires_at:%Y-%m-%d %H:%M %Z}: "
               f"`stackbook run {approvals.shown_name(book)} -e {given.env} ... --approval {given.id}`", err=True)
