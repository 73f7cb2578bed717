"""The ``stackbook`` command: a thin layer over the library, the only code that imports click.

One module per command group (``database``, ``catalog``, ``run``, ``lab``, ``pipeline``,
``schedule``, ``book``, ``metrics``, ``check``, ``notify``); ``common.handle_errors`` is the one place where errors
become exit codes and messages for people: 0 succeeded; 1 the runbook failed or timed out;
2 bad usage, bad parameters, missing secret, malformed notebook (nothing was executed);
3 refused (an exclusive runbook is already running, or approval is missing); 130 cancelled.
With ``--json`` standard output carries only the JSON document; progress and logs go to
standard error. Command modules are imported only when their command is invoked, so
``stackbook --help`` and every command start fast.
"""

from __future__ import annotations

import click

from stackbook.cli.common import setup_logging


class LazyGroup(click.Group):
    """Subcommands that live in their own modules, imported only when invoked (fast start-up)."""

    lazy: dict[str, tuple[str, str, str]] = {
        # name: (module, attribute, one-line help shown by `stackbook --help`)
        "up": ("stackbook.cli.database", "up", "Start the project-local PostgreSQL."),
        "down": ("stackbook.cli.database", "down", "Stop the project-local PostgreSQL (data kept)."),
        "status": ("stackbook.cli.database", "status", "Whether the database runs, and its connection URL."),
        "list": ("stackbook.cli.catalog", "list_", "The runbooks under runbooks/."),
        "show": ("stackbook.cli.catalog", "show", "Parameters and metadata of one runbook."),
        "run": ("stackbook.cli.run", "run", "Run a runbook headlessly; parameters checked first."),
        "runs": ("stackbook.cli.run", "runs", "Recent runs from the ledger; `runs show ID` for one."),
        "lab": ("stackbook.cli.lab", "lab", "JupyterLab on the project; `lab NAME`: a runbook by hand, as a run."),
        "pipeline": ("stackbook.cli.pipeline", "pipeline", "Pipelines of runbooks: list, show, run."),
        "schedule": ("stackbook.cli.schedule", "schedule", "Schedules: crontab lines, Airflow DAGs, CronJobs."),
        "metrics": ("stackbook.cli.metrics", "metrics", "Prometheus metrics of the run ledger; alerting rules."),
        "check": ("stackbook.cli.check", "check", "Stale or failing runbooks of an environment, told once."),
        "notify": ("stackbook.cli.notify", "notify", "Notifications: test the routes of an environment."),
        "book": ("stackbook.cli.book", "book", "Build the Jupyter Book with the evidence of the latest runs."),
        "new": ("stackbook.cli.book", "new", "Scaffold a runbook that passes the runbook contract."),
        "verify": ("stackbook.cli.verify", "verify", "Check the evidence chain and the executed notebooks."),
        "resume": ("stackbook.cli.run", "resume", "Continue a failed, timed-out or cancelled run where it stopped."),
        "attest": ("stackbook.cli.run", "attest", "Confirm the manual step a waiting run stopped at; it goes on."),
        "approve": ("stackbook.cli.approve", "approve", "Approve one destructive run: runbook code, parameters, env."),
        "evidence": ("stackbook.cli.evidence", "evidence", "Evidence bundles: export a period's evidence, verify one."),
    }

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr, _ = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise click.ClickException(f"command {name!r} is not available: {exc}") from exc
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                rows.append((name, self.lazy[name][2]))
            else:
                cmd = self.commands.get(name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stackbook")
def main() -> None:
    """stackbook: an operations handbook that runs.

    Runbooks are parameterised Jupyter notebooks under runbooks/. Start the
    project-local PostgreSQL with `stackbook up`, list runbooks with
    `stackbook list`, run one with `stackbook run NAME -e ENV -p KEY=VALUE`.
    """
    setup_logging()


def entry() -> None:
    """The ``stackbook`` console script: ``main``, then an exit without the module teardown."""
    from stackbook.core.fastexit import run_then_exit

    run_then_exit(main)


if __name__ == "__main__":  # pragma: no cover
    entry()
