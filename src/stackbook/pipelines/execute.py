"""Running a planned pipeline: a small topological executor over stackbook.run.engine.

Every attempt of every task is ``stackbook.run.engine.execute`` (the path of
``stackbook run``: parameters checked up front, secrets, ledger row, lock of
exclusive runbooks, scrubbing), with the pipeline run's id and the attempt
number on its ledger row. Independent tasks run in worker threads (at most
``parallel`` at once); ploomber's metadata is written from the main thread only.

Ledger rows besides the runner's own: a task that is up to date gets a
``skipped`` row (reason: up to date ...), a task whose upstream failed gets an
``upstream_failed`` row naming it, so ``stackbook runs --pipeline-run ID``
shows every task of a pipeline run. A failed attempt is retried after
``retry_delay_s * 2 ** (attempt - 1)`` seconds while the runbook's ``retries``
allow; a task that exhausted them is ``failed``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from stackbook.run import ledger, engine as runner
from stackbook.core.errors import RefusedError
from stackbook.pipelines import dag as dag_mod
from stackbook.pipelines import fastpath
from stackbook.pipelines.spec import load_spec

Event = Callable[[str, dict], None]  # (kind, details): started, finished, skipped, upstream_failed, retry


@dataclass
class TaskOutcome:
    name: str
    runbook: str
    status: str  # succeeded, failed, timed_out, cancelled, skipped, upstream_failed, refused
    why: str = ""
    reason: str | None = None
    run_id: str | None = None
    attempts: int = 0
    run_ids: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    output: str | None = None
    error: dict | None = None


def default_parallel() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _run_task(task: dag_mod.PlannedTask, pipeline_run_id: str, cancel: threading.Event, emit: Event,
              running: dict) -> TaskOutcome:
    """All attempts of one task (in a worker thread)."""
    out = TaskOutcome(name=task.name, runbook=task.runbook, status="failed", why=task.why)
    t0 = time.monotonic()
    attempts = 1 + max(0, task.retries)
    for attempt in range(1, attempts + 1):
        prepared = dag_mod.with_attempt(task.prepared, attempt, pipeline_run_id)

        def on_start(run_id: str, attempt=attempt) -> None:
            running[task.name] = run_id
            out.run_ids.append(run_id)
            emit("started", {"task": task.name, "run_id": run_id, "attempt": attempt, "why": task.why})

        try:
            rec = runner.execute(prepared, on_start=on_start)
        except RefusedError as exc:
            out.status, out.reason = "refused", str(exc)
            break
        finally:
            running.pop(task.name, None)
        out.attempts, out.run_id, out.output = attempt, rec["id"], rec.get("output")
        out.status, out.reason, out.error = rec["status"], rec.get("reason"), rec.get("error")
        if rec["status"] == "succeeded" or rec["status"] == "cancelled" or cancel.is_set():
            break
        if attempt < attempts:
            delay = task.retry_delay_s * 2 ** (attempt - 1)
            emit("retry", {"task": task.name, "attempt": attempt, "status": rec["status"], "delay_s": delay,
                           "reason": rec.get("reason")})
            if cancel.wait(delay):
                break
    out.duration_s = round(time.monotonic() - t0, 3)
    return out


def _interrupt_kernels(conn, running: dict) -> None:
    for run_id in list(running.values()):
        rec = ledger.get_run(conn, run_id)
        pid = rec and rec.get("kernel_pid")
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass


def run_pipeline(name: str, *, env: str = "dev", profile: str | None = None, force: bool = False,
                 parallel: int | None = None, cli_params: list[str] | None = None,
                 on_event: Event | None = None) -> dict[str, Any]:
    """Run pipeline NAME; returns the pipeline run summary (``status`` succeeded or failed, per-task outcomes).

    Raises UsageError (exit 2, nothing ran) when the spec, a runbook, a parameter or a secret is wrong.
    """
    from stackbook.run import db

    emit: Event = on_event or (lambda kind, details: None)
    spec = load_spec(name)
    pipeline_run_id = "p" + ledger.new_run_id()
    started = time.monotonic()
    plan = None
    if not force:  # nothing changed? then ploomber need not even be imported (see fastpath)
        plan = fastpath.plan_if_up_to_date(spec, env=env, profile=profile, pipeline_run_id=pipeline_run_id,
                                           cli_params=cli_params)
    decided_by = "stackbook.pipelines.fastpath" if plan is not None else "ploomber"
    if plan is None:
        plan = dag_mod.plan(spec, env=env, profile=profile, force=force, pipeline_run_id=pipeline_run_id,
                            cli_params=cli_params)
    parallel = max(1, parallel or default_parallel())
    outcomes: dict[str, TaskOutcome] = {}
    conn = db.connect()
    ledger.ensure_schema(conn)
    ledger.reap(conn)

    def final_row(task: dag_mod.PlannedTask, status: str, reason: str) -> TaskOutcome:
        rid = ledger.new_run_id()
        ledger.insert_final(conn, run_id=rid, runbook=task.runbook, env=env, status=status, reason=reason,
                            params=task.prepared.params, pipeline_run_id=pipeline_run_id, path=str(task.path))
        emit(status, {"task": task.name, "run_id": rid, "reason": reason})
        return TaskOutcome(name=task.name, runbook=task.runbook, status=status, why=task.why, reason=reason,
                           run_id=rid, run_ids=[rid])

    for tname in plan.order:
        task = plan.tasks[tname]
        if task.action == "skip":
            outcomes[tname] = final_row(task, "skipped", task.why)

    pending = [n for n in plan.order if n not in outcomes]
    running_futures: dict[Future, str] = {}
    running_runs: dict[str, str] = {}
    cancel = threading.Event()
    ok = {"succeeded", "skipped"}
    interrupted = False
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pipeline") as pool:
        try:
            while pending or running_futures:
                # tasks whose upstream failed: recorded, never started
                for tname in list(pending):
                    failed_up = [u for u in plan.tasks[tname].upstream
                                 if u in outcomes and outcomes[u].status not in ok]
                    if failed_up:
                        pending.remove(tname)
                        outcomes[tname] = final_row(plan.tasks[tname], "upstream_failed",
                                                    f"upstream task {', '.join(failed_up)} did not succeed")
                if not cancel.is_set():
                    for tname in list(pending):
                        if len(running_futures) >= parallel:
                            break
                        if all(u in outcomes and outcomes[u].status in ok for u in plan.tasks[tname].upstream):
                            pending.remove(tname)
                            fut = pool.submit(_run_task, plan.tasks[tname], pipeline_run_id, cancel, emit,
                                              running_runs)
                            running_futures[fut] = tname
                if not running_futures:
                    if pending and cancel.is_set():
                        for tname in pending:
                            outcomes[tname] = final_row(plan.tasks[tname], "cancelled", "pipeline run interrupted")
                        pending = []
                    continue
                done, _ = wait(list(running_futures), return_when=FIRST_COMPLETED, timeout=1.0)
                for fut in done:
                    tname = running_futures.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # the runner itself broke (database gone ...)
                        outcome = TaskOutcome(name=tname, runbook=plan.tasks[tname].runbook, status="failed",
                                              why=plan.tasks[tname].why, reason=f"{type(exc).__name__}: {exc}")
                    if outcome.status == "succeeded":
                        missing = plan.mark_built(tname, outcome.output)
                        if missing:
                            outcome.status = "failed"
                            outcome.reason = f"succeeded but its products are missing: {', '.join(missing)}"
                    outcomes[tname] = outcome
                    emit("finished", asdict(outcome))
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()
            _interrupt_kernels(conn, running_runs)
            for fut, tname in running_futures.items():
                try:
                    outcome = fut.result()
                except BaseException as exc:  # noqa: BLE001 - the worker was interrupted too
                    outcome = TaskOutcome(name=tname, runbook=plan.tasks[tname].runbook, status="cancelled",
                                          reason=f"{type(exc).__name__}: {exc}")
                if outcome.run_id and outcome.status in ("failed", "cancelled") and \
                        (outcome.error or {}).get("ename") == "KeyboardInterrupt":
                    # the kernel was interrupted by us, not by the runbook: record it as cancelled
                    outcome.status, outcome.reason = "cancelled", "pipeline run interrupted; partial notebook kept"
                    rec = ledger.get_run(conn, outcome.run_id) or {}
                    ledger.finish_run(conn, outcome.run_id, status="cancelled", results=rec.get("results") or {},
                                      error=rec.get("error"), reason=outcome.reason)
                outcomes[tname] = outcome
            for tname in pending:
                outcomes[tname] = final_row(plan.tasks[tname], "cancelled", "pipeline run interrupted")
    conn.close()
    tasks = [asdict(outcomes[n]) for n in plan.order]
    failed = [t["name"] for t in tasks if t["status"] not in ok and t["status"] != "upstream_failed"]
    summary = {
        "pipeline": spec.name,
        "path": str(spec.path),
        "pipeline_run_id": pipeline_run_id,
        "env": env,
        "profile": profile,
        "force": force,
        "parallel": parallel,
        "decided_by": decided_by,
        "status": "succeeded" if not failed and not interrupted else ("cancelled" if interrupted else "failed"),
        "failed": failed,
        "ran": [t["name"] for t in tasks if t["status"] not in ("skipped", "upstream_failed", "cancelled")],
        "skipped": [t["name"] for t in tasks if t["status"] == "skipped"],
        "upstream_failed": [t["name"] for t in tasks if t["status"] == "upstream_failed"],
        "duration_s": round(time.monotonic() - started, 3),
        "tasks": tasks,
    }
    if interrupted:
        raise KeyboardInterrupt
    return summary
