"""``stackbook schedule``: crontab lines, Airflow DAGs and Kubernetes CronJobs from the same schedules."""

from __future__ import annotations

from pathlib import Path

import click

from stackbook.cli.common import emit_json, exit_if_broken, handle_errors
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
    """Every scheduled pipeline and runbook with its cron line.

    A pipeline.yaml or runbook that cannot be read is listed too, with its error (in JSON: an
    entry with kind, name, path and error), the others as usual; the command then exits 1.
    """
    from stackbook.cli.common import table
    from stackbook.schedules import listing

    items, broken = listing()
    rows = [{"kind": i.kind, "name": i.name, "schedule": i.schedule, "timeout": i.timeout, "retries": i.retries,
             "description": i.description} for i in items]
    if as_json:
        emit_json(rows + [{"kind": b.kind, **b.summary()} for b in broken])
    else:
        rows += [{"kind": b.kind, "name": b.name, "description": "(cannot be read: see the error below)"}
                 for b in broken]
        click.echo(table(rows, ["kind", "name", "schedule", "timeout", "retries", "description"]))
    exit_if_broken(broken)


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
    from stackbook.schedules import kubernetes as k8s_mod

    cronjobs = k8s_mod.manifests(env)
    if out:
        for f in k8s_mod.write(Path(out), cronjobs):
            click.echo(str(f))
    else:
        click.echo(k8s_mod.dump(cronjobs), nl=False)


@schedule.group("airflow-local")
def airflow_local() -> None:
    """A local Airflow (scheduler, DAG processor, API server, LocalExecutor) that runs the generated DAGs.

    From .venv-airflow (`make airflow`), its metadata database `airflow` on the project's
    PostgreSQL, AIRFLOW_HOME under the state folder (.stackbook/airflow-local), the UI on
    127.0.0.1. See infra/airflow/README.md.
    """


def _echo_status(st, as_json: bool) -> None:
    if as_json:
        emit_json(st.summary())
        return
    if not st.running:
        click.echo(f"the local Airflow is not running (home {st.home})")
        return
    click.echo(f"Airflow UI and API: {st.url} (user admin, password in {st.password_file})")
    click.echo(f"DAGs: {st.dags_folder}; environment {st.env}; metadata database {st.database}; "
               f"schedules {'on' if st.schedules else 'off (triggered runs only)'}")
    for c in st.components:
        click.echo(f"  {c.name:<14} pid {c.pid}  log {c.log}")


@airflow_local.command("up")
@click.option("-e", "--env", default="dev", show_default=True,
              help="Environment the DAGs' tasks run in (when the DAG files are written now).")
@click.option("--dags", type=click.Path(file_okay=False), default=None,
              help="Folder of DAG files to run as they are (default: infra/airflow/dags/, regenerated for ENV).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port of the UI and API on 127.0.0.1 (default: the last one, else 8080, else a free one).")
@click.option("--manual", is_flag=True,
              help="No scheduled runs: Airflow runs only the DAG runs triggered in the UI, the API or the CLI.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def airflow_local_up(env: str, dags: str | None, port: int | None, manual: bool, as_json: bool) -> None:
    """Start it (migrating the metadata database on first use) and wait until it is healthy.

    The DAGs are unpaused: Airflow runs each on its schedule, and on the first start runs the
    latest tick of each once (catchup is off); --manual switches the schedules off. A running
    local Airflow is left as it is.
    """
    from stackbook.schedules import airflow_local as local

    _echo_status(local.up(env=env, dags=dags, port=port, schedules=not manual), as_json)


@airflow_local.command("down")
@click.option("--json", "as_json", is_flag=True, help="Print the stopped process ids as JSON.")
@handle_errors
def airflow_local_down(as_json: bool) -> None:
    """Stop every process it started (tasks running then are cancelled) and check that none is left."""
    from stackbook.schedules import airflow_local as local

    stopped = local.down()
    if as_json:
        emit_json({"stopped": stopped})
    else:
        click.echo(f"stopped {len(stopped)} process(es) of the local Airflow" if stopped
                   else "the local Airflow was not running")


@airflow_local.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def airflow_local_status(as_json: bool) -> None:
    """Whether it runs: URL, DAGs folder, each component's pid and log, and Airflow's health."""
    from stackbook.schedules import airflow_local as local

    _echo_status(local.status(), as_json)
