"""`stackbook lab`: JupyterLab on the project with the environment loaded."""

from __future__ import annotations

import click

from stackbook.cli.common import handle_errors
from stackbook.core.environments import DEFAULT_ENV


@click.command()
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True,
              help="Environment whose secrets and values to load.")
@click.option("--port", default=8888, show_default=True, help="Port JupyterLab listens on (127.0.0.1).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option("--dry-run", is_flag=True, help="Print the command and environment names instead of starting.")
@handle_errors
def lab(env: str, port: int, no_browser: bool, dry_run: bool) -> None:
    """Start JupyterLab on the project with the environment and secrets loaded.

    Stepping through a runbook by hand then behaves as a headless run does:
    DATABASE_URL, STACKBOOK_ENV and the secrets of every runbook are set, and
    stackbook.record() writes to .stackbook/lab/.
    """
    from stackbook.run import lab as lab_mod

    cmd, env_vars = lab_mod.command(env, port=port, open_browser=not no_browser)
    if dry_run:
        click.echo(" ".join(cmd))
        click.echo("environment: " + ", ".join(sorted(env_vars)))
        return
    lab_mod.exec_lab(cmd, env_vars)
