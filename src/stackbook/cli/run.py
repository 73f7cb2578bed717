"""`stackbook run` and `stackbook runs`: one run, and the ledger of runs."""

from __future__ import annotations

import json
import sys

import click

from stackbook.cli.common import emit_json, handle_errors, sigterm_as_interrupt, table


def _print_record(rec: dict) -> None:
    took = f" in {rec['duration_s']:.1f} s" if rec.get("duration_s") is not None else ""
    click.echo(f"run {rec['id']}: {rec['runbook']} on {rec['env']}: {rec['status']}{took}")
    for key in ("output", "reason", "approved_by", "pipeline_run_id", "git_commit", "host"):
        if rec.get(key):
            click.echo(f"  {key}: {rec[key]}")
    if rec.get("error"):
        err = rec["error"]
        click.echo(f"  error: cell {err.get('cell_index')}: {err.get('ename')}: {err.get('evalue')}")
    if rec.get("params"):
        click.echo(f"  params: {json.dumps(rec['params'], default=str)}")
    for key, value in (rec.get("results") or {}).items():
        click.echo(f"  result {key}: {json.dumps(value, default=str)}")


def public_record(rec: dict) -> dict:
    """The run record as documented: error without the traceback."""
    out = dict(rec)
    if out.get("error"):
        out["error"] = {k: out["error"].get(k) for k in ("cell_index", "ename", "evalue")}
    return out


@click.command()
@click.argument("name")
@click.option("-e", "--env", default="dev", show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter value; repeatable.")
@click.option("-f", "--params-file", type=click.Path(dir_okay=False), help="YAML file of parameter values.")
@click.option("--cell-timeout", type=float, default=None, help="Seconds one cell may run; default: no limit.")
@click.option("--timeout", type=float, default=None,
              help="Seconds the whole run may take; default: the runbook's metadata timeout, else no limit.")
@click.option("--log-output", is_flag=True, help="Stream cell output to standard error as it arrives.")
@click.option("--approved-by", default=None, metavar="NAME",
              help="Approver of a destructive, non-dry run in an environment that requires approval.")
@click.option("--pipeline-run", "pipeline_run", default=None, metavar="ID",
              help="Record the run as part of pipeline run ID (set by schedulers, e.g. the generated Airflow DAGs; "
                   "`stackbook runs --pipeline-run ID` lists them).")
@click.option("--attempt", type=click.IntRange(min=1), default=1, show_default=True,
              help="Attempt number of this run (set by schedulers that retry, e.g. Airflow's try number).")
@click.option("--on", "on", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where the kernel runs: here, or as a Kubernetes Job of the platform image "
                   "(needs kube_context in the environment file and an s3:// run store).")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON (only it, on stdout).")
@handle_errors
def run(name, env, params, params_file, cell_timeout, timeout, log_output, approved_by, pipeline_run, attempt, on,
        as_json) -> None:
    """Run runbook NAME headlessly: parameters are checked before any kernel starts.

    NAME is a runbook's file stem or a path to any .ipynb file. Precedence of
    values: -p over -f over the environment file over the notebook's defaults.
    Exit codes: 0 succeeded, 1 failed or timed out, 2 bad input (nothing ran),
    3 refused (exclusive runbook already running, or approval missing).
    """
    from stackbook.run import engine as runner

    sigterm_as_interrupt()
    options = runner.RunOptions(env=env, cli_params=list(params), params_file=params_file, cell_timeout=cell_timeout,
                                timeout=timeout, log_output=log_output, approved_by=approved_by,
                                pipeline_run_id=pipeline_run, attempt=attempt)
    announce = lambda rid: click.echo(f"stackbook: run {rid} started", err=True)  # noqa: E731
    if on == "kubernetes":
        from stackbook.k8s import backend as k8s_run

        rec = k8s_run.run(name, options, on_start=announce)
    else:
        rec = runner.execute(runner.prepare(name, options), on_start=announce)
    if as_json:
        emit_json(public_record(rec))
    else:
        _print_record(rec)
    if rec["status"] != "succeeded":
        click.echo(f"stackbook: {runner.describe_failure(rec)}", err=True)
    sys.exit(runner.exit_code(rec))


@click.group(invoke_without_command=True)
@click.option("--runbook", default=None, help="Only runs of this runbook.")
@click.option("--status", "status_", default=None,
              type=click.Choice(["running", "succeeded", "failed", "timed_out", "cancelled", "upstream_failed",
                                 "skipped"]), help="Only runs in this state.")
@click.option("-e", "--env", default=None, help="Only runs in this environment.")
@click.option("--pipeline-run", default=None, metavar="ID", help="Only the runs of this pipeline run.")
@click.option("--limit", default=20, show_default=True, type=int, help="At most this many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
@handle_errors
def runs(ctx, runbook, status_, env, pipeline_run, limit, as_json) -> None:
    """Recent runs from the ledger (stale `running` rows are reaped first)."""
    if ctx.invoked_subcommand:
        return
    from stackbook.run import db, ledger

    with db.connect() as conn:
        ledger.ensure_schema(conn)
        ledger.reap(conn)
        rows = ledger.list_runs(conn, runbook=runbook, status=status_, env=env, pipeline_run_id=pipeline_run,
                                limit=limit)
    if as_json:
        emit_json([public_record(r) for r in rows])
        return
    for r in rows:
        r["duration"] = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""
        r["started"] = (r.get("started_at") or "")[:19]
    click.echo(table(rows, ["id", "runbook", "env", "status", "started", "duration", "reason"]))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@handle_errors
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: status, parameters, results, error and where its notebook is."""
    from stackbook.run import db, ledger
    from stackbook.core.errors import UsageError

    with db.connect() as conn:
        ledger.ensure_schema(conn)
        ledger.reap(conn)
        rec = ledger.get_run(conn, run_id)
    if rec is None:
        raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs`)")
    if as_json:
        emit_json(public_record(rec))
    else:
        _print_record(rec)
