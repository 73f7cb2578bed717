"""Repairing a pipeline run, and resuming a retried runbook where its failed attempt stopped.

``stackbook pipeline run NAME --repair PIPELINE_RUN_ID`` re-runs only the tasks of that pipeline run that
did not succeed: ``failed``, ``timed_out``, ``cancelled``, ``upstream_failed`` (never ran: an upstream
failed), ``refused`` (never ran: another run held its exclusive runbook's lock) and tasks with no row at all
(the runner died before it reached them). Tasks that ``succeeded`` or were ``skipped`` as up to date are
kept: their runs and products stay, whatever ploomber's up-to-date check would say now.

A repair is the next attempt of the SAME pipeline run, as Airflow's "clear" and Databricks' "repair run"
have it: the rerun tasks' rows carry the same ``pipeline_run_id`` and continue its attempt numbers (a task
whose last row was attempt 1 runs as attempt 2), so ``stackbook runs --pipeline-run ID`` shows the whole
history and each task's latest attempt is its state; a repair of a repair works the same way. A rerun
task whose runbook says ``resumable: true`` and whose last attempt failed, timed out or was cancelled
resumes that run (``RunOptions.resume_from``: its row's ``resumed_from`` names it) when the engine can
(a snapshot of the kernel exists and the code allows); otherwise it runs from the start and says why.

Rows are matched to tasks by the task's notebook (the row's ``path``), and by the parameters when two
tasks run the same notebook; the ledger stays the only record of a pipeline run. A run that was resumed
outside the pipeline (``stackbook resume``, ``stackbook attest``) counts by its last resumed run.

``execute_attempt`` is the one place a resume falls back to a fresh run: pipeline retries, repairs and
``stackbook run --resume-retries`` (the generated Airflow DAGs' retries) all use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from stackbook.core.errors import UsageError
from stackbook.run import engine as runner
from stackbook.run import ledger
from stackbook.run.record import RunRecord

KEEP = ("succeeded", "skipped")  # a task whose last attempt ended so keeps its run and products
RESUMABLE_STATES = ("failed", "timed_out", "cancelled")  # a run that executed and stopped: resume it
RERUN = (*RESUMABLE_STATES, "upstream_failed", "refused")  # "refused" never ran: rerun it too
_CHAIN_LIMIT = 50  # resumed runs followed at most (a resume of a resume ...)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _latest(rows: list[RunRecord]) -> RunRecord:
    """The task's state: its row started last (a retry after its try, an ``upstream_failed`` row of a repair
    after the task's earlier attempts)."""
    return max(rows, key=lambda r: (r.started_at.timestamp() if r.started_at else 0.0, r.attempt))


def _finally(conn, rec: RunRecord) -> RunRecord:
    """REC, or the last run that resumed it (``stackbook resume``, ``attest``), following the chain."""
    for _ in range(_CHAIN_LIMIT):
        row = conn.execute("select id from stackbook.runs where resumed_from = %s order by started_at desc limit 1",
                           (rec.id,)).fetchone()
        if not row:
            break
        rec = ledger.get_run(conn, row[0])
    return rec


def match_rows(plan, rows: list[RunRecord], pipeline_run_id: str) -> dict[str, list[RunRecord]]:
    """Each task's rows in the pipeline run; UsageError when a row belongs to no task of the plan."""
    out: dict[str, list[RunRecord]] = {name: [] for name in plan.order}
    strays = []
    for row in rows:
        same = [n for n in plan.order if _same_path(plan.tasks[n].path, row.path)]
        if len(same) > 1:
            same = [n for n in same if _plain(plan.tasks[n].prepared.params) == _plain(row.params)] or same
        if len(same) > 1:
            names = ", ".join(same)
            raise UsageError(f"pipeline run {pipeline_run_id}: tasks {names} run the same notebook and row {row.id} "
                             "has the parameters of none or of several of them, so it cannot be told which task it "
                             "was; give the --profile and -p of that run, or run the pipeline without --repair "
                             "(nothing was executed)")
        if same:
            out[same[0]].append(row)
        else:
            strays.append(row.runbook)
    if strays:
        raise UsageError(f"pipeline run {pipeline_run_id} ran runbooks that pipeline {plan.spec.name!r} has no task "
                         f"for: {', '.join(sorted(set(strays)))}; is it a run of another pipeline, or did the "
                         "pipeline change since? Repair it with the pipeline it ran (nothing was executed)")
    return out


def runs_of(conn, pipeline_run_id: str, env: str) -> list[RunRecord]:
    """The rows of the pipeline run to repair; UsageError for an unknown id or a run in another environment
    (checked before the pipeline is planned: a mistyped id fails at once)."""
    rows = ledger.list_runs(conn, pipeline_run_id=pipeline_run_id, limit=None)
    if not rows:
        raise UsageError(f"--repair {pipeline_run_id}: no pipeline run with that id in the ledger; see the ids "
                         "with `stackbook runs` (column pipeline_run_id) or the summary of `stackbook pipeline run` "
                         "(nothing was executed)")
    envs = sorted({r.env for r in rows})
    if envs != [env]:
        raise UsageError(f"--repair {pipeline_run_id}: that pipeline run ran on environment {', '.join(envs)}, not "
                         f"{env}; repair it with -e {envs[0]} (nothing was executed)")
    return rows


def last_attempts(conn, plan, pipeline_run_id: str) -> dict[str, tuple[RunRecord | None, int]]:
    """What each task of the pipeline run left: its latest row (after resumes; None when it has none) and its
    highest attempt number (0 when none).

    UsageError (exit 2, nothing runs) for an unknown id, a run of another pipeline or environment, a task
    still running or waiting for a person.
    """
    matched = match_rows(plan, runs_of(conn, pipeline_run_id, plan.env), pipeline_run_id)
    last = {name: (_finally(conn, _latest(found)) if found else None, max((r.attempt for r in found), default=0))
            for name, found in matched.items()}
    for name, (rec, _) in last.items():
        if rec and rec.status == "running":
            raise UsageError(f"--repair {pipeline_run_id}: task {name!r} is still running (run {rec.id}); wait for "
                             f"it to end or `stackbook runs cancel {rec.id}` (nothing was executed)")
        if rec and rec.status == "waiting":
            raise UsageError(f"--repair {pipeline_run_id}: task {name!r} waits for a person to confirm a manual step "
                             f"(run {rec.id}); `stackbook attest {rec.id} --by NAME` continues it, or "
                             f"`stackbook runs cancel {rec.id}` ends it (nothing was executed)")
    return last


def _params_differ(task, rec: RunRecord) -> list[str]:
    now, then = _plain(task.prepared.params), _plain(rec.params)
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))


def apply(plan, last: dict[str, tuple[RunRecord | None, int]], pipeline_run_id: str) -> None:
    """Mark each task of PLAN kept or rerun (``action``, ``why``, ``first_attempt``, ``resume_from``).

    UsageError when nothing is left to repair, or when a task to rerun would get other parameters than it
    had (a repair reruns what ran: give the same --profile and -p).
    """
    for name in plan.order:
        task, (rec, top) = plan.tasks[name], last[name]
        if rec is not None and rec.status in KEEP:
            task.action, task.why = "keep", f"kept: {rec.status} in run {rec.id}"
            continue
        if rec is not None and rec.status not in ("upstream_failed", "refused") and _params_differ(task, rec):
            raise UsageError(f"--repair {pipeline_run_id}: task {name!r} would run with other parameters than in "
                             f"that pipeline run ({', '.join(_params_differ(task, rec))}); give the same --profile "
                             "and -p values as that run, or is it a run of another pipeline? (nothing was executed)")
        task.action, task.repair = "run", True
        task.first_attempt = top + 1
        task.why = f"repair: {rec.status} in run {rec.id}" if rec else "repair: never started (no row)"
        if rec is not None and rec.status in RESUMABLE_STATES and task.resumable:
            task.resume_from = rec.id
    if all(plan.tasks[n].action == "keep" for n in plan.order):
        raise UsageError(f"--repair {pipeline_run_id}: nothing to repair, every task of that pipeline run succeeded "
                         "or was up to date (nothing was executed)")


def resume_from_after(prepared: runner.Prepared, rec: RunRecord | None) -> str | None:
    """The run a retry after REC continues: REC's id when the runbook is resumable and REC stopped mid-way."""
    resumable = bool(prepared.runbook.metadata.get("resumable"))
    return rec.id if resumable and rec is not None and rec.status in RESUMABLE_STATES else None


def execute_attempt(prepared: runner.Prepared, resume_from: str | None,
                    on_start: Callable[[str], None] | None = None) -> tuple[RunRecord, str | None]:
    """Execute PREPARED, continuing run RESUME_FROM when given and the engine can; returns the record and a note
    (how it was resumed, or why it ran from the start).

    A resume the engine refuses (no snapshot of that run, the runbook's code changed: a UsageError before any
    row is written) falls back to a run from the start: a retry or a repair must not fail for that.
    """
    if not resume_from:
        return runner.execute(prepared, on_start=on_start), None
    # the resumed run keeps the parameters of the run it continues (the engine refuses -p and -f with a resume);
    # they are the ones this attempt was given: the same task's (a retry) or checked equal (a repair)
    options = replace(prepared.options, resume_from=resume_from, cli_params=[], params_file=None, extra_params={})
    try:
        resumed = runner.prepare(str(prepared.runbook.path), options)
        return runner.execute(resumed, on_start=on_start), f"resumed run {resume_from}"
    except UsageError as exc:
        note = f"not resumed ({exc}); ran from the start"
    return runner.execute(prepared, on_start=on_start), note


def previous_attempt(pipeline_run_id: str, runbook: str, attempt: int, env: str) -> RunRecord | None:
    """The row of attempt ATTEMPT - 1 of RUNBOOK in that pipeline run (a scheduler's previous try), if any."""
    if attempt <= 1:
        return None
    with ledger.session() as conn:
        rows = [r for r in ledger.list_runs(conn, pipeline_run_id=pipeline_run_id, runbook=runbook, env=env,
                                            limit=None) if r.attempt == attempt - 1]
        return _finally(conn, _latest(rows)) if rows else None


def run_retry(name: str, options: runner.RunOptions,
              on_start: Callable[[str], None] | None = None) -> tuple[RunRecord, str | None]:
    """``stackbook run NAME --resume-retries``: a scheduler's try ``options.attempt`` of pipeline run
    ``options.pipeline_run_id``; a retry of a ``resumable`` runbook continues the previous try's run when it
    failed, timed out or was cancelled (and the engine can), else it runs from the start. Returns the record
    and a note saying which."""
    prepared = runner.prepare(name, options)  # bad input: exit 2 before the ledger is asked anything
    previous = None
    if options.pipeline_run_id and options.attempt > 1 and prepared.runbook.metadata.get("resumable"):
        previous = previous_attempt(options.pipeline_run_id, prepared.runbook.name, options.attempt, options.env)
    if previous is not None and previous.status == "waiting":  # a person's step, not a failure: never rerun it
        raise UsageError(f"try {options.attempt - 1} of {prepared.runbook.name!r} (run {previous.id}) is waiting at a "
                         f"manual step: confirm it with `stackbook attest {previous.id} --by NAME` (or end it with "
                         f"`stackbook runs cancel {previous.id}`) instead of retrying (nothing was executed)",
                         runbook=prepared.runbook.name, env=options.env)
    rec, note = execute_attempt(prepared, resume_from_after(prepared, previous), on_start=on_start)
    if note is None and previous is None and options.attempt > 1 and prepared.runbook.metadata.get("resumable"):
        note = f"no run of attempt {options.attempt - 1} in pipeline run {options.pipeline_run_id}; ran from the start"
    return rec, note
