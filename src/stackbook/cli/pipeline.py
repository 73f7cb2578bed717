"""``stackbook pipeline``: list, show and run pipelines (a thin layer over stackbook.pipelines)."""

from __future__ import annotations

import json
import sys

import click

from stackbook.cli.common import emit_json, exit_if_broken, handle_errors, sigterm_as_interrupt, table
from stackbook.core.environments import DEFAULT_ENV
from stackbook.core.errors import EXIT_WAITING


@click.group()
def pipeline() -> None:
    """Pipelines of runbooks (pipelines/NAME/pipeline.yaml): list, show, run.

    A pipeline chains runbooks with ploomber's spec format. `run` skips tasks
    whose runbook source, parameters and upstream products are unchanged since
    their last successful run, runs independent tasks in parallel, and records
    every task in the ledger under one pipeline run id
    (`stackbook runs --pipeline-run ID`).
    """


@pipeline.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the pipelines as JSON.")
@handle_errors
def list_(as_json: bool) -> None:
    """The pipelines under pipelines/: name, schedule, tasks.

    A pipeline.yaml that cannot be read is listed too, with its error (in JSON: an entry with
    name, path and error), the others as usual; the command then exits 1.
    """
    from stackbook.pipelines.spec import scan

    specs, broken = scan()
    items = [p.summary() for p in specs]
    if as_json:
        emit_json(items + [b.summary() for b in broken])
    else:
        rows = [{**i, "tasks": ", ".join(i["tasks"])} for i in items]
        rows += [{"name": b.name, "description": "(cannot be read: see the error below)"} for b in broken]
        click.echo(table(rows, ["name", "schedule", "description", "tasks"]))
    exit_if_broken(broken)


@pipeline.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the spec as JSON.")
@handle_errors
def show(name: str, as_json: bool) -> None:
    """Tasks of pipeline NAME in run order: runbook, upstream, parameters, products."""
    from stackbook.pipelines.spec import load_spec

    spec = load_spec(name)
    doc = spec.to_dict()
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"  path: {spec.path}")
    for key in ("schedule", "owner", "profile", "timeout"):
        if spec.meta.get(key) is not None:
            click.echo(f"  {key}: {spec.meta[key]}")
    if doc["profiles"]:
        click.echo(f"  profiles: {', '.join(doc['profiles'])}")
    rows = []
    for tname in spec.order():
        t = spec.task(tname)
        rows.append({"task": t.name, "runbook": t.source, "upstream": ", ".join(t.upstream),
                     "params": json.dumps(t.params) if t.params else ""})
    click.echo("")
    click.echo(table(rows, ["task", "runbook", "upstream", "params"]))


class _Printer:
    """The events of a pipeline run, one line each on standard error."""

    def __call__(self, kind: str, d: dict) -> None:
        task = d.get("task") or d.get("name")
        if kind == "started":
            extra = f" (attempt {d['attempt']})" if d.get("attempt", 1) > 1 else ""
            click.echo(f"stackbook: {task}: started run {d['run_id']}{extra}: {d.get('why')}", err=True)
        elif kind == "retry":
            click.echo(f"stackbook: {task}: attempt {d['attempt']} {d['status']}; retrying in {d['delay_s']:.1f} s",
                       err=True)
        elif kind == "finished":
            took = f" in {d['duration_s']:.1f} s" if d.get("duration_s") else ""
            why = f": {d['reason']}" if d.get("reason") and d["status"] != "succeeded" else ""
            note = f" ({d['note']})" if d.get("note") else ""
            click.echo(f"stackbook: {task}: {d['status']}{took}{why}{note}", err=True)
        else:  # skipped, upstream_failed, cancelled, kept (a repair)
            click.echo(f"stackbook: {task}: {kind}: {d.get('reason')}", err=True)


def _why(t: dict) -> str:
    why = t["reason"] if t["status"] != "succeeded" else t["why"]
    return f"{why}; {t['note']}" if t.get("note") else why or ""


def _exit_with_outcome(summary: dict) -> None:
    """Exit 1 when a task failed, 3 when one was refused (an exclusive runbook held by another run), 4 when one
    waits at a manual step, else 0."""
    see = f"(see `stackbook runs --pipeline-run {summary['pipeline_run_id']}`)"
    if summary["status"] == "refused":
        click.echo(f"stackbook: pipeline {summary['pipeline']} refused: task(s) {', '.join(summary['refused'])} "
                   f"not run, another run holds their exclusive runbook's lock; run again when it is done {see}",
                   err=True)
        sys.exit(3)
    if summary["status"] == "waiting":  # as `stackbook run` has it: exit 4, a person goes on
        click.echo(f"stackbook: pipeline {summary['pipeline']}: task(s) {', '.join(summary['waiting'])} wait at a "
                   "manual step; their dependents did not run: confirm with `stackbook attest RUN_ID --by NAME`, "
                   f"then `stackbook pipeline run {summary['pipeline']} --repair {summary['pipeline_run_id']}` {see}",
                   err=True)
        sys.exit(EXIT_WAITING)
    if summary["status"] != "succeeded":
        click.echo(f"stackbook: pipeline {summary['pipeline']} failed: task(s) {', '.join(summary['failed'])} "
                   f"did not succeed {see}", err=True)
        sys.exit(1)


@pipeline.command()
@click.argument("name")
@click.option("-e", "--env", default=DEFAULT_ENV, show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("--profile", default=None, metavar="PROFILE",
              help="Overlay pipelines/NAME/env.PROFILE.yaml on env.yaml (e.g. test: small data).")
@click.option("--force", is_flag=True, help="Run every task, even those that are up to date.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Tasks to run at once (default: the number of cores, at most 4).")
@click.option("--repair", "repair_id", default=None, metavar="PIPELINE_RUN_ID",
              help="Re-run only the tasks of that pipeline run that failed, timed out, were cancelled or refused, "
                   "or never ran because an upstream failed (resumable runbooks resume); the others keep their runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the pipeline run summary as JSON (only it, on stdout).")
@handle_errors
def run(name, env, profile, force, parallel, repair_id, as_json) -> None:
    """Run pipeline NAME: up-to-date tasks are skipped, the others run through `stackbook run`'s path.

    NAME is a pipeline under pipelines/ or a path to a pipeline.yaml. Every
    task's parameters and secrets are checked before any kernel starts. Exit
    codes: 0 every task succeeded or was up to date (or waits at a manual
    step: `stackbook attest`, then --repair), 1 a task failed (its
    dependents are recorded as upstream_failed, independent tasks go on),
    2 bad spec or input (nothing ran), 3 a task was refused and none failed
    (its exclusive runbook is running elsewhere; recorded as refused),
    130 interrupted.

    --repair ID reruns only what did not succeed in pipeline run ID, as its
    next attempt (same id; `stackbook runs --pipeline-run ID` shows both);
    give the --profile and -e of that run. Unknown id, another pipeline's
    run, or nothing to repair: exit 2.
    """
    from stackbook.pipelines.execute import run_pipeline

    sigterm_as_interrupt()
    summary = run_pipeline(name, env=env, profile=profile, force=force, parallel=parallel,
                           on_event=_Printer(), repair_id=repair_id)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"pipeline {summary['pipeline']} run {summary['pipeline_run_id']} on {env}: {summary['status']} "
                   f"in {summary['duration_s']:.1f} s")
        rows = [{"task": t["name"], "status": t["status"], "run": t["run_id"] or "", "repair": t["repair"] or "",
                 "attempts": t["attempts"] or "", "why": _why(t)} for t in summary["tasks"]]
        columns = ["task", "status", "attempts", "run", "why"]
        click.echo(table(rows, columns[:2] + ["repair"] + columns[2:] if repair_id else columns))
    _exit_with_outcome(summary)
