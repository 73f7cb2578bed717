"""`stackbook lab`: JupyterLab on the project, or one runbook stepped through by hand as a recorded run."""

from __future__ import annotations

import json
import sys

import click

from stackbook.cli.common import EXIT_CANCELLED, emit_json, handle_errors, sigterm_as_interrupt
from stackbook.core.environments import DEFAULT_ENV


class _LabGroup(click.Group):
    """`stackbook lab [NAME]` and `stackbook lab end RUN_ID`: the first word that is no option (nor an option's
    value) and no subcommand is the session's runbook NAME."""

    def parse_args(self, ctx, args):
        takes_value = {opt for p in self.params if isinstance(p, click.Option) and not p.is_flag
                       for opt in p.opts}
        skip = False
        for i, arg in enumerate(args):
            if skip:
                skip = False
            elif arg == "--":
                break
            elif arg.startswith("-"):
                skip = arg in takes_value
            else:
                if arg not in self.commands:
                    ctx.meta["lab_name"] = arg
                    args = args[:i] + args[i + 1:]
                break
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "[OPTIONS] [NAME]  |  end RUN_ID")


def _ready(as_json: bool, open_browser: bool):
    def announce(info: dict[str, str]) -> None:
        if as_json:
            click.echo(json.dumps(info))
        else:
            click.echo(f"stackbook: session {info['run_id']}: open {info['url']}")
            click.echo(f"  notebook: {info['notebook']}")
            click.echo("  end it with a last cell calling stackbook.finish(), by shutting the kernel down, or with "
                       f"`stackbook lab end {info['run_id']}`", err=True)
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(info["url"])

    return announce


def _session(name, env, params, params_file, approval, port, no_browser, dry_run, as_json) -> None:
    from stackbook.run import engine, session

    options = engine.RunOptions(env=env, cli_params=list(params), params_file=params_file, approval_id=approval,
                                kind="interactive")
    if dry_run:
        prep = engine.prepare(name, options)
        doc = {"runbook": prep.runbook.name, "env": prep.env.name, "params": prep.params, "started": False}
        click.echo(json.dumps(doc, default=str) if as_json else
                   f"stackbook: {prep.runbook.name} on {prep.env.name}: parameters checked; nothing was started")
        return
    sigterm_as_interrupt()
    rec = session.open_session(name, options, port=port, on_ready=_ready(as_json, not no_browser))
    click.echo(f"stackbook: session {rec.id}: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""), err=True)
    sys.exit(EXIT_CANCELLED if rec.status == "cancelled" else rec.exit_code)


@click.group(cls=_LabGroup, invoke_without_command=True)
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True,
              help="Environment whose secrets and values to load.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="With NAME: a parameter value, as for `stackbook run`; repeatable.")
@click.option("-f", "--params-file", type=click.Path(dir_okay=False), help="With NAME: YAML file of parameter values.")
@click.option("--approval", default=None, metavar="ID", help="With NAME: the recorded approval this session uses.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="Port JupyterLab listens on (127.0.0.1); default 8888, with NAME a free one.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser (with NAME: print the session's URL).")
@click.option("--dry-run", is_flag=True,
              help="Print the command and environment names (with NAME: check the parameters) instead of starting.")
@click.option("--json", "as_json", is_flag=True, help="With NAME: print {run_id, url, notebook} once it is ready.")
@click.pass_context
@handle_errors
def lab(ctx, env, params, params_file, approval, port, no_browser, dry_run, as_json) -> None:
    """JupyterLab on the project, or runbook NAME stepped through by hand as a recorded run.

    `stackbook lab NAME -e ENV [-p K=V ...]` checks the parameters as `run` does
    (exit 2, nothing started), takes the exclusive lock and the approval (exit 3),
    opens a ledger row (kind interactive), serves a copy of the runbook with the
    injected parameters in a JupyterLab of its own, and records every executed
    cell. It ends with `stackbook.finish()` in the notebook, by shutting the kernel
    down, `stackbook lab end RUN_ID`, or Ctrl-C: succeeded when every code cell
    ran in order without error, failed naming the cell otherwise.

    Without NAME: JupyterLab on the project with the environment and secrets
    loaded (no run is recorded).
    """
    if ctx.invoked_subcommand:
        return
    name = ctx.meta.get("lab_name")
    if name:
        _session(name, env, params, params_file, approval, port, no_browser, dry_run, as_json)
        return
    if params or params_file or approval or as_json:
        from stackbook.core.errors import UsageError

        raise UsageError("-p, -f, --approval and --json need a runbook: `stackbook lab NAME -e ENV "
                         "...` (nothing was started)")
    from stackbook.run import lab as lab_mod

    cmd, env_vars = lab_mod.command(env, port=port or 8888, open_browser=not no_browser)
    if dry_run:
        click.echo(" ".join(cmd))
        click.echo("environment: " + ", ".join(sorted(env_vars)))
        return
    lab_mod.exec_lab(cmd, env_vars)


@lab.command("end")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the finished run record as JSON.")
@handle_errors
def lab_end(run_id: str, as_json: bool) -> None:
    """End the JupyterLab session RUN_ID: its row is finished from what ran; prints the record."""
    from stackbook.run import session

    rec = session.end(run_id)
    if as_json:
        emit_json(rec.to_json())
    else:
        click.echo(f"run {rec.id}: {rec.runbook} on {rec.env}: {rec.status}" + (f" ({rec.reason})" if rec.reason
                                                                                 else ""))
    sys.exit(rec.exit_code)
