"""``stackbook pipeline``: list, show and run pipelines (a thin layer over stackbook.pipelines)."""

from __future__ import annotations

import json
import sys

import click

from stackbook.cli.common import emit_json, sigterm_as_interrupt, table, handle_errors


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
    """The pipelines under pipelines/: name, schedule, tasks."""
    from stackbook.pipelines.spec import all_pipelines

    items = [p.summary() for p in all_pipelines()]
    if as_json:
        emit_json(items)
        return
    rows = [{**i, "tasks": ", ".join(i["tasks"])} for i in items]
    click.echo(table(rows, ["name", "schedule", "description", "tasks"]))


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


def _printer(as_json: bool):
    def emit(kind: str, d: dict) -> None:
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
            click.echo(f"stackbook: {task}: {d['status']}{took}{why}", err=True)
        else:  # skipped, upstream_failed, cancelled
            click.echo(f"stackbook: {task}: {kind}: {d.get('reason')}", err=True)

    return emit


@pipeline.command()
@click.argument("name")
@click.option("-e", "--env", default="dev", show_default=True, help="Environment (infra/environments/ENV.yml).")
@click.option("--profile", default=None, metavar="PROFILE",
              help="Overlay pipelines/NAME/env.PROFILE.yaml on env.yaml (e.g. test: small data).")
@click.option("--force", is_flag=True, help="Run every task, even those that are up to date.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Tasks to run at once (default: the number of cores, at most 4).")
@click.option("--json", "as_json", is_flag=True, help="Print the pipeline run summary as JSON (only it, on stdout).")
@handle_errors
def run(name, env, profile, force, parallel, as_json) -> None:
    """Run pipeline NAME: up-to-date tasks are skipped, the others run through `stackbook run`'s path.

    NAME is a pipeline under pipelines/ or a path to a pipeline.yaml. Every
    task's parameters and secrets are checked before any kernel starts. Exit
    codes: 0 every task succeeded or was up to date, 1 a task failed (its
    dependents are recorded as upstream_failed, independent tasks go on),
    2 bad spec or input (nothing ran), 130 interrupted.
    """
    from stackbook.pipelines.execute import run_pipeline

    sigterm_as_interrupt()
    summary = run_pipeline(name, env=env, profile=profile, force=force, parallel=parallel,
                           on_event=_printer(as_json))
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"pipeline {summary['pipeline']} run {summary['pipeline_run_id']} on {env}: {summary['status']} "
                   f"in {summary['duration_s']:.1f} s")
        rows = [{"task": t["name"], "status": t["status"], "run": t["run_id"] or "",
                 "attempts": t["attempts"] or "", "why": t["reason"] if t["status"] != "succeeded" else t["why"]}
                for t in summary["tasks"]]
        click.echo(table(rows, ["task", "status", "attempts", "run", "why"]))
    if summary["status"] != "succeeded":
        click.echo(f"stackbook: pipeline {summary['pipeline']} failed: task(s) {', '.join(summary['failed'])} "
                   f"did not succeed (see `stackbook runs --pipeline-run {summary['pipeline_run_id']}`)", err=True)
        sys.exit(1)
