"""`stackbook run` and `stackbook runs`: one run, and the ledger of runs."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from stackbook.cli.common import emit_json, handle_errors, sigterm_as_interrupt, table
from stackbook.core.environments import DEFAULT_ENV

if TYPE_CHECKING:
    from stackbook.run.record import RunRecord


def _print_record(rec: RunRecord) -> None:
    took = f" in {rec.duration_s:.1f} s" if rec.duration_s is not None else ""
    click.echo(f"run {rec.id}: {rec.runbook} on {rec.env}: {rec.status}{took}")
    for key in ("output", "reason", "approved_by", "approval_id", "resumed_from", "pipeline_run_id", "git_commit",
                "host"):
        if getattr(rec, key):
            click.echo(f"  {key}: {getattr(rec, key)}")
    if rec.error:
        err = rec.error
        click.echo(f"  error: cell {err.get('cell_index')}: {err.get('ename')}: {err.get('evalue')}")
    if rec.waiting:
        click.echo(f"  waiting at cell {rec.waiting.get('cell_index')}: {rec.waiting.get('instruction')}")
    if rec.params:
        click.echo(f"  params: {json.dumps(rec.params, default=str)}")
    for key, value in rec.results.items():
        click.echo(f"  result {key}: {json.dumps(value, default=str)}")


def _announce(run_id: str) -> None:
    click.echo(f"stackbook: run {run_id} started", err=True)


class _Started:
    """``on_start`` of `stackbook run`: announces the run and keeps its id (a cancelled run is notified too)."""

    run_id: str | None = None

    def __call__(self, run_id: str) -> None:
        self.run_id = run_id
        _announce(run_id)


def _recorded_here(rec: RunRecord) -> bool:
    """Whether this process wrote the row (a Kubernetes Job whose pod never ran), not a pod's runner."""
    import os
    import socket

    return rec.pid == os.getpid() and rec.host == socket.gethostname()


def _print_notifications(sent: list[dict]) -> None:
    for n in sent:
        how = "sent" if n["status"] == "sent" else f"failed after {n['attempts']} attempt(s): {n['error']}"
        click.echo(f"  notified ({n['event']}): route {n['route']} {n['channel']}: {how}")


def _finite(ctx, param, value: float | None) -> float | None:
    """click callback: FloatRange lets nan through (no comparison with nan is true)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command()
@click.argument("name")
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter value; repeatable.")
@click.option("-f", "--params-file", type=click.Path(dir_okay=False), help="YAML file of parameter values.")
@click.option("--cell-timeout", type=click.IntRange(min=1), default=None,
              help="Whole seconds one cell may run; default: no limit.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
              help="Seconds the whole run may take; default: the runbook's metadata timeout, else no limit.")
@click.option("--log-output", is_flag=True, help="Stream cell output to standard error as it arrives.")
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="The kernel's working directory; default: the project root for a runbook, the current "
                   "directory for a notebook given by path (as papermill).")
@click.option("--approval", "approval", default=None, metavar="ID",
              help="The recorded approval (`stackbook approve`) a destructive, non-dry run in an environment that "
                   "requires one consumes; it must match this run exactly.")
@click.option("--pipeline-run", "pipeline_run", default=None, metavar="ID",
              help="Record the run as part of pipeline run ID (set by schedulers, e.g. the generated Airflow DAGs; "
                   "`stackbook runs --pipeline-run ID` lists them).")
@click.option("--attempt", type=click.IntRange(min=1), default=1, show_default=True,
              help="Attempt number of this run (set by schedulers that retry, e.g. Airflow's try number).")
@click.option("--resume-retries", is_flag=True,
              help="With --pipeline-run and --attempt N > 1 (a scheduler's retry) of a runbook whose metadata says "
                   "resumable: true: continue attempt N-1's failed run where it stopped instead of starting afresh.")
@click.option("--on", "on", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where the kernel runs: here, or as a Kubernetes Job of the platform image "
                   "(needs kube_context in the environment file and an s3:// run store).")
@click.option("--resume", "resume_from", default=None, metavar="RUN_ID",
              help="Continue failed, timed-out or cancelled run RUN_ID where it stopped, as a new run with its "
                   "environment and parameters (no -p/-f); the same as `stackbook resume RUN_ID`.")
@click.option("--from-cell", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --resume, for a run that left no snapshot: run the setup cells, then go on at cell N of "
                   "its executed notebook (`stackbook runs show RUN_ID` names the cell it stopped at).")
@click.option("--allow-changed", is_flag=True,
              help="With --resume: go on although the runbook's code changed since that run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON (only it, on stdout).")
@handle_errors
def run(name, env, params, params_file, cell_timeout, timeout, log_output, cwd, approval, pipeline_run, attempt,
        on, as_json, resume_retries=False, resume_from=None, from_cell=None, allow_changed=False) -> None:
    """Run runbook NAME headlessly: parameters are checked before any kernel starts.

    NAME is a runbook's file stem or a path to any .ipynb file (one without a
    parameters cell runs when given no values). Precedence of
    values: -p over -f over the environment file over the notebook's defaults.
    Exit codes: 0 succeeded, 4 waiting at a manual step (`stackbook attest`), 1 failed or timed out,
    2 bad input (nothing ran), 3 refused (exclusive runbook already running, or no matching approval).
    """
    from stackbook import notify
    from stackbook.core import environments
    from stackbook.run import engine as runner

    sigterm_as_interrupt()
    if cwd and on == "kubernetes":
        from stackbook.core.errors import UsageError

        raise UsageError("--cwd names a folder of this machine; a run --on kubernetes works in the platform "
                         "image's project root: leave out --cwd (nothing was executed)")
    if resume_from is None and (from_cell is not None or allow_changed):
        from stackbook.core.errors import UsageError

        raise UsageError("--from-cell and --allow-changed go with --resume RUN_ID (nothing was executed)")
    if resume_from and click.get_current_context().get_parameter_source("env").name == "DEFAULT":
        env = _resumed_env(resume_from)  # a resumed run keeps its environment
    environment = environments.load(env)
    options = runner.RunOptions(env=env, cli_params=list(params), params_file=params_file, cell_timeout=cell_timeout,
                                timeout=timeout, log_output=log_output, cwd=cwd, approval_id=approval,
                                pipeline_run_id=pipeline_run, attempt=attempt,
                                scrub_values=notify.channel_secrets(environment),  # a wrong route: exit 2 here
                                resume_from=resume_from, from_cell=from_cell, allow_changed=allow_changed)
    started = _Started()
    try:
        if on == "kubernetes":
            from stackbook.k8s import backend as k8s_run

            rec = k8s_run.run(name, options, on_start=started)
        elif resume_retries:  # a scheduler's retry (the generated Airflow DAGs): stackbook.pipelines.repair
            from stackbook.pipelines import repair

            rec, note = repair.run_retry(name, options, on_start=started)
            if note:
                click.echo(f"stackbook: {note}", err=True)
        else:
            rec = runner.execute(runner.prepare(name, options), on_start=started)
    except KeyboardInterrupt:  # the row is recorded `cancelled`: routes that ask for it hear of it
        notify.after_cancelled(started.run_id, environment)
        raise
    _report(rec, environment, as_json, tell_routes=on == "local" or _recorded_here(rec))


def _resumed_env(run_id: str) -> str:
    from stackbook.run import resume

    return resume.find_run(run_id).env


def _report(rec: RunRecord, environment, as_json: bool, tell_routes: bool = True, extra: dict | None = None) -> None:
    """The finished record printed (or as JSON), the routes told, the outcome on stderr, and the exit code:
    0 succeeded, 4 waiting at a manual step, else 1."""
    from stackbook import notify

    if as_json:
        emit_json({**rec.to_json(), **(extra or {})})
    else:
        _print_record(rec)
    if tell_routes:  # in a pod, the pod's own `stackbook run` told the routes
        notify.after_run(rec, environment)  # the row is final; a failed delivery is recorded, exit code unchanged
    if rec.status == "waiting":
        click.echo(f"stackbook: run {rec.id} is waiting at a manual step (cell {rec.waiting['cell_index']}): "
                   f"{rec.waiting['instruction'][:200]!r}; when done, confirm with `stackbook attest {rec.id} "
                   f"--by NAME` (or end it with `stackbook runs cancel {rec.id}`)", err=True)
    if not rec.succeeded:
        click.echo(f"stackbook: {rec.describe_failure()}", err=True)
    sys.exit(rec.exit_code)


@click.group(invoke_without_command=True)
@click.option("--runbook", default=None, help="Only runs of this runbook.")
@click.option("--status", "status_", default=None,
              type=click.Choice(["running", "waiting", "succeeded", "failed", "timed_out", "cancelled", "upstream_failed",
                                 "skipped", "refused"]), help="Only runs in this state.")
@click.option("-e", "--env", default=None, help="Only runs in this environment.")
@click.option("--pipeline-run", default=None, metavar="ID", help="Only the runs of this pipeline run.")
@click.option("--kind", default=None, type=click.Choice(["headless", "interactive"]),
              help="Only headless runs, or only JupyterLab sessions (`stackbook lab NAME`).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="At most this many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
@handle_errors
def runs(ctx, runbook, status_, env, pipeline_run, kind, limit, as_json) -> None:
    """Recent runs from the ledger (stale `running` rows are reaped first)."""
    if ctx.invoked_subcommand:
        return
    from stackbook.run import ledger

    with ledger.session() as conn:
        records = ledger.list_runs(conn, runbook=runbook, status=status_, env=env, pipeline_run_id=pipeline_run,
                                   limit=limit, kind=kind)
    if as_json:
        emit_json([r.to_json() for r in records])
        return
    rows = [{**r.to_json(), "duration": f"{r.duration_s:.1f}s" if r.duration_s is not None else "",
             "started": r.started_at.isoformat()[:19] if r.started_at else ""} for r in records]
    click.echo(table(rows, ["id", "runbook", "env", "status", "started", "duration", "reason"]))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
@handle_errors
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: status, parameters, results, error, where its notebook is, and the notifications sent about it."""
    from stackbook.core.errors import UsageError
    from stackbook.notify import store as notifications
    from stackbook.run import ledger

    with ledger.session() as conn:
        rec = ledger.get_run(conn, run_id)
        sent = notifications.of_run(conn, run_id) if rec else []
    if rec is None:
        raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs`)")
    if as_json:
        emit_json({**rec.to_json(), "notifications": sent})
    else:
        _print_record(rec)
        _print_notifications(sent)


def _common_run_options(fn):
    """The options a resumed or continued run takes as `stackbook run` does."""
    for option in reversed([
        click.option("--cell-timeout", type=click.IntRange(min=1), default=None,
                     help="Whole seconds one cell may run; default: no limit."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
                     help="Seconds the rest of the run may take; default: the runbook's metadata timeout."),
        click.option("--log-output", is_flag=True, help="Stream cell output to standard error as it arrives."),
        click.option("--cwd", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
                     help="The kernel's working directory (as for `stackbook run`)."),
        click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON (only it, on stdout)."),
    ]):
        fn = option(fn)
    return fn


def _continued(rec_of, env_of, as_json: bool, extra_key: str | None = None) -> None:
    """Run REC_OF(options, on_start) (a resume or an attest) with the routes of ENV_OF's environment told."""
    from stackbook import notify
    from stackbook.core import environments

    sigterm_as_interrupt()
    environment = environments.load(env_of)
    started = _Started()
    try:
        rec, extra = rec_of(notify.channel_secrets(environment), started)
    except KeyboardInterrupt:
        notify.after_cancelled(started.run_id, environment)
        raise
    _report(rec, environment, as_json, extra={extra_key: extra} if extra_key else None)


@click.command()
@click.argument("run_id")
@click.option("--from-cell", type=click.IntRange(min=0), default=None, metavar="N",
              help="For a run that left no snapshot: run the setup cells, then go on at cell N of its executed "
                   "notebook (`stackbook runs show RUN_ID` names the cell it stopped at).")
@click.option("--allow-changed", is_flag=True, help="Go on although the runbook's code changed since that run.")
@click.option("--approval", "approval", default=None, metavar="ID",
              help="The recorded approval a resumed destructive, non-dry run needs, as any run does (`stackbook "
                   "approve` of the same runbook, environment and parameters).")
@_common_run_options
@handle_errors
def resume(run_id, from_cell, allow_changed, approval, cell_timeout, timeout, log_output, cwd, as_json) -> None:
    """Continue failed, timed-out or cancelled run RUN_ID where it stopped, as a new run.

    Same environment and parameters; the cells that completed are carried over, the kernel's
    snapshot restored and the cells tagged `setup` run again. Exit codes as `stackbook run`.
    """
    from stackbook.run import engine as runner
    from stackbook.run import resume as resume_mod

    old = resume_mod.find_run(run_id)

    def go(scrub_values, on_start):
        options = runner.RunOptions(env=old.env, cell_timeout=cell_timeout, timeout=timeout, log_output=log_output,
                                    cwd=cwd, from_cell=from_cell, allow_changed=allow_changed,
                                    approval_id=approval, scrub_values=scrub_values)
        return runner.resume(run_id, options, on_start=on_start), None

    _continued(go, old.env, as_json)


@click.command()
@click.argument("run_id")
@click.option("--by", "by", required=True, metavar="NAME", help="Who did the manual step (recorded).")
@click.option("--note", default=None, metavar="TEXT", help="A note on how it went (recorded).")
@_common_run_options
@handle_errors
def attest(run_id, by, note, cell_timeout, timeout, log_output, cwd, as_json) -> None:
    """Confirm the manual step waiting run RUN_ID stopped at; the run goes on from the next cell.

    The attestation (who, when, the note) goes into the ledger and the evidence chain. Exit 2 when
    the run is not waiting (a second attest of the same step included).
    """
    from stackbook.run import engine as runner
    from stackbook.run import resume as resume_mod

    rec = resume_mod.find_run(run_id)

    def go(scrub_values, on_start):
        options = runner.RunOptions(env=rec.env, cell_timeout=cell_timeout, timeout=timeout, log_output=log_output,
                                    cwd=cwd, scrub_values=scrub_values)
        return runner.attest(run_id, by, note, options, on_start=on_start)

    _continued(go, rec.env, as_json, extra_key="attestation")


@runs.command("cancel")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the cancelled run's record as JSON.")
@handle_errors
def runs_cancel(run_id: str, as_json: bool) -> None:
    """End run RUN_ID, waiting at a manual step, as `cancelled` (exit 2 for a run that is not waiting)."""
    from stackbook.run import engine as runner

    rec = runner.cancel_waiting(run_id)
    if as_json:
        emit_json(rec.to_json())
    else:
        _print_record(rec)
