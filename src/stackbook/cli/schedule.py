"""``stackbook schedule``: crontab lines, Airflow DAGs and Kubernetes CronJobs from the same schedules."""

from __future__ import annotations

from pathlib import Path

import click

from stackbook.cli.common import emit_json, handle_errors
from stackbook.schedules import DEFAULT_SCHEDULE_ENV

ENV_OPTION = click.option("-e", "--env", default=DEFAULT_SCHEDULE_ENV, show_default=True,
                          help="Environment the scheduled runs use (infra/environments/ENV.yml).")


@click.group()
def schedule() -> None:
    """Schedules of runbooks and pipelines (their `schedule` cron metadata, UTC) for cron, Airflow, Kubernetes.

    stackbook has no scheduler: these commands write what an existing one runs.
    """


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the scheduled items as JSON.")
@handle_errors
def list_(as_json: bool) -> None:
    """Every scheduled pipeline and runbook with its cron line."""
    from stackbook.cli.common import table
    from stackbook.schedules import scheduled

    rows = [{"kind": i.kind, "name": i.name, "schedule": i.schedule, "timeout": i.timeout, "retries": i.retries,
             "description": i.description} for i in scheduled()]
    if as_json:
        emit_json(rows)
    else:
        click.echo(table(rows, ["kind", "name", "schedule", "timeout", "retries", "description"]))


@schedule.command()
@ENV_OPTION
@handle_errors
def crontab(env: str) -> None:
    """Crontab lines for this machine (install with `stackbook schedule crontab | crontab -`).

    Each line changes to the project, runs `.venv/bin/stackbook run NAME -e ENV`
    (or `pipeline run NAME`) and appends its output to .stackbook/logs/.
    """
    from stackbook.core.environments import load
    from stackbook.schedules import crontab as crontab_mod

    load(env)  # an unknown environment is an error now, not at 6 a.m.
    click.echo(crontab_mod.render(env), nl=False)


@schedule.command()
@ENV_OPTION
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder of the DAG files (default: infra/airflow/dags/).")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
@handle_errors
def airflow(env: str, out: str | None, as_json: bool) -> None:
    """Airflow 3 DAG files: one per scheduled pipeline or runbook, tasks calling `stackbook run`.

    Dependencies, retries (with exponential backoff) and timeouts follow the
    pipeline spec and the runbooks' metadata. Set STACKBOOK_AIRFLOW_EXECUTOR=kubernetes
    where the scheduler parses the files to run each task in a pod of the
    platform image (KubernetesPodOperator) instead of a local bash command.
    """
    from stackbook.core.environments import load
    from stackbook.schedules import airflow as airflow_mod

    load(env)
    files = airflow_mod.write(out, env=env)
    if as_json:
        emit_json([str(f) for f in files])
    else:
        for f in files:
            click.echo(str(f))


@schedule.command()
@ENV_OPTION
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write one YAML file per CronJob into (default: print them as one YAML stream).")
@handle_errors
def kubernetes(env: str, out: str | None) -> None:
    """Kubernetes CronJobs of every scheduled runbook and pipeline, validated and audited.

    Built from infra/k8s (the overlay of ENV), checked against the Kubernetes
    schemas and the audit's Pod Security rules before anything is written.
    """
    from stackbook.k8s import cronjobs as k8s_mod

    cronjobs = k8s_mod.manifests(env)
    if out:
        for f in k8s_mod.write(Path(out), cronjobs):
            click.echo(str(f))
    else:
        click.echo(k8s_mod.dump(cronjobs), nl=False)
