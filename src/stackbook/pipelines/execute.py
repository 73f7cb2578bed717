"""Running a planned pipeline: a small topological executor over stackbook.run.engine.

Every attempt of every task is ``stackbook.run.engine.execute`` (the path of
``stackbook run``: parameters checked up front, secrets, ledger row, lock of
exclusive runbooks, scrubbing), with the pipeline run's id and the attempt
number on its ledger row. Independent tasks run in worker threads (at most
``parallel`` at once); ploomber's metadata is written from the main thread only.

Ledger rows besides the runner's own: a task that is up to date gets a
``skipped`` row (reason: up to date ...), a task whose upstream failed gets an
``upstream_failed`` row naming it, and a task refused because another run holds
its exclusive runbook's lock gets a ``refused`` row naming the holder (its own
state rather than ``cancelled``: nobody cancelled it, and like ``skipped`` it is
a run that never started, which freshness, metrics and alerts leave out), so
``stackbook runs --pipeline-run ID`` shows every task of a pipeline run. The
summary's status is ``refused`` when a task was refused and none failed
(``stackbook pipeline run`` exits 3, as ``stackbook run`` does). A failed attempt is retried after
``retry_delay_s * 2 ** (attempt - 1)`` seconds while the runbook's ``retries``
allow; a task that exhausted them is ``failed``. A retry of a runbook whose
metadata says ``resumable: true`` continues the failed attempt where it stopped
(``repair.execute_attempt``; from the start when the engine has no snapshot).
``run_pipeline(..., repair_id=ID)`` repairs pipeline run ID instead: only the
tasks that did not succeed run, as its next attempt (:mod:`.repair`).

Notifications (``stackbook.notify``): one message per task, about its last
attempt (a retried task that recovered was never announced as failed, and a
task that never started, skipped or upstream_failed, sends nothing), and one
summary when the pipeline run failed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from stackbook import notify
from stackbook.core.environments import DEFAULT_ENV
from stackbook.core.errors import RefusedError, UsageError
from stackbook.pipelines import dag as dag_mod
from stackbook.pipelines import fastpath, repair
from stackbook.pipelines.spec import load_spec
from stackbook.run import ledger

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
    repair: str | None = None  # in a repair: "kept", "rerun" or "resumed"
    resumed_from: str | None = None  # the run its last attempt continued (``resumable: true``)
    note: str | None = None  # how it was resumed, or why a resume ran from the start


def default_parallel() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _ignore(kind: str, details: dict) -> None:
    """The event sink when the caller gives none."""


class _Running:
    """The runs executing now (task name -> run id), shared by the worker threads and the main thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: dict[str, str] = {}

    def add(self, task: str, run_id: str) -> None:
        with self._lock:
            self._runs[task] = run_id

    def remove(self, task: str) -> None:
        with self._lock:
            self._runs.pop(task, None)

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._runs.values())


class _AttemptStarted:
    """``on_start`` of one attempt of a task: the run is registered as running and announced."""

    def __init__(self, task: dag_mod.PlannedTask, attempt: int, out: TaskOutcome, running: _Running, emit: Event):
        self.task, self.attempt, self.out, self.running, self.emit = task, attempt, out, running, emit

    def __call__(self, run_id: str) -> None:
        self.running.add(self.task.name, run_id)
        self.out.run_ids.append(run_id)
        self.emit("started", {"task": self.task.name, "run_id": run_id, "attempt": self.attempt, "why": self.task.why})


def _run_task(task: dag_mod.PlannedTask, pipeline_run_id: str, cancel: threading.Event, emit: Event,
              running: _Running) -> TaskOutcome:
    """All attempts of one task (in a worker thread); a retry of a ``resumable`` runbook resumes the failed try."""
    out = TaskOutcome(name=task.name, runbook=task.runbook, status="failed", why=task.why,
                      repair="rerun" if task.repair else None)
    t0 = time.monotonic()
    attempts = task.first_attempt + max(0, task.retries)
    resume_from = task.resume_from
    for attempt in range(task.first_attempt, attempts + 1):
        prepared = dag_mod.with_attempt(task.prepared, attempt, pipeline_run_id)
        try:
            rec, note = repair.execute_attempt(prepared, resume_from,
                                               on_start=_AttemptStarted(task, attempt, out, running, emit))
        except RefusedError as exc:
            out.status, out.reason = "refused", str(exc)
            break
        finally:
            running.remove(task.name)
        out.attempts, out.run_id, out.output = attempt, rec.id, rec.output
        out.status, out.reason, out.error = rec.status, rec.reason, rec.error
        out.resumed_from, out.note = rec.resumed_from, note
        if out.repair and rec.resumed_from:
            out.repair = "resumed"
        resume_from = repair.resume_from_after(task.prepared, rec)
        if rec.status in ("succeeded", "cancelled", "waiting") or cancel.is_set():  # waiting: for a person, no retry
            break
        if attempt < attempts:
            delay = task.retry_delay_s * 2 ** (attempt - task.first_attempt)
            emit("retry", {"task": task.name, "attempt": attempt, "status": rec.status, "delay_s": delay,
                           "reason": rec.reason})
            if cancel.wait(delay):
                break
    if out.run_id and not cancel.is_set():  # one message per task, about its last attempt (none when interrupted)
        notify.after_run(rec, task.prepared.env)
    out.duration_s = round(time.monotonic() - t0, 3)
    return out


def _interrupt_kernels(conn, run_ids: list[str]) -> None:
    for run_id in run_ids:
        rec = ledger.get_run(conn, run_id)
        if rec and rec.kernel_pid:
            try:
                os.kill(rec.kernel_pid, signal.SIGINT)
            except OSError:  # the kernel is already gone
                pass


OK = ("succeeded", "skipped")


class _PipelineRun:
    """One pipeline run, driven from the main thread: outcomes so far, tasks pending, attempts running."""

    def __init__(self, plan: dag_mod.Plan, conn, *, env: str, pipeline_run_id: str, parallel: int, emit: Event):
        self.plan, self.conn, self.env, self.pipeline_run_id = plan, conn, env, pipeline_run_id
        self.parallel, self.emit = parallel, emit
        self.outcomes: dict[str, TaskOutcome] = {}
        self.pending: list[str] = []
        self.futures: dict[Future, str] = {}
        self.running = _Running()
        self.cancel = threading.Event()

    def record_final(self, name: str, status: str, reason: str) -> None:
        """A ledger row for a task that does not run (skipped, upstream_failed, cancelled before it started)."""
        rid = self._insert_final(name, status, reason)
        self.emit(status, {"task": name, "run_id": rid, "reason": reason})
        task = self.plan.tasks[name]
        self.outcomes[name] = TaskOutcome(name=name, runbook=task.runbook, status=status, why=task.why,
                                          reason=reason, run_id=rid, run_ids=[rid])

    def _insert_final(self, name: str, status: str, reason: str) -> str:
        task = self.plan.tasks[name]
        rid = ledger.new_run_id()
        ledger.insert_final(self.conn, run_id=rid, runbook=task.runbook, env=self.env, status=status, reason=reason,
                            params=task.prepared.params, pipeline_run_id=self.pipeline_run_id, path=str(task.path))
        return rid

    def _record_refused(self, outcome: TaskOutcome) -> None:
        """The ``refused`` row of a task whose exclusive runbook another run holds (its attempts before, if any,
        have rows of their own)."""
        outcome.run_id = self._insert_final(outcome.name, "refused", outcome.reason or "refused")
        outcome.run_ids.append(outcome.run_id)

    def skip_up_to_date(self) -> None:
        for name in self.plan.order:
            if self.plan.tasks[name].action == "skip":
                self.record_final(name, "skipped", self.plan.tasks[name].why)
        self.pending = [n for n in self.plan.order if n not in self.outcomes]

    def keep(self, last: dict[str, tuple[ledger.RunRecord | None, int]]) -> None:
        """A repair: the tasks it keeps have their outcome from the pipeline run repaired (no new row)."""
        for name in self.plan.order:
            task, (rec, _) = self.plan.tasks[name], last[name]
            if task.action == "keep":
                self.outcomes[name] = TaskOutcome(name=name, runbook=task.runbook, status=rec.status, why=task.why,
                                                  reason=rec.reason, run_id=rec.id, attempts=rec.attempt,
                                                  run_ids=[rec.id], output=rec.output, repair="kept")
                self.emit("kept", {"task": name, "run_id": rec.id, "reason": f"{rec.status} in run {rec.id}"})
        self.pending = [n for n in self.plan.order if n not in self.outcomes]

    def _ok(self, name: str) -> bool:
        return name in self.outcomes and self.outcomes[name].status in OK

    def drive(self, pool: ThreadPoolExecutor) -> None:
        """Until every task has an outcome: record those whose upstream failed, start those that are ready."""
        while self.pending or self.futures:
            for name in list(self.pending):  # tasks whose upstream failed: recorded, never started
                failed_up = [u for u in self.plan.tasks[name].upstream
                             if u in self.outcomes and self.outcomes[u].status not in OK]
                if failed_up:
                    self.pending.remove(name)
                    self.record_final(name, "upstream_failed", f"upstream task {', '.join(failed_up)} did not succeed")
            if not self.cancel.is_set():
                self._submit_ready(pool)
            if self.futures:
                self._collect()
            elif self.pending and self.cancel.is_set():
                self._cancel_pending()

    def _submit_ready(self, pool: ThreadPoolExecutor) -> None:
        for name in list(self.pending):
            if len(self.futures) >= self.parallel:
                break
            if all(self._ok(u) for u in self.plan.tasks[name].upstream):
                self.pending.remove(name)
                fut = pool.submit(_run_task, self.plan.tasks[name], self.pipeline_run_id, self.cancel, self.emit,
                                  self.running)
                self.futures[fut] = name

    def _collect(self) -> None:
        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED, timeout=1.0)
        for fut in done:
            name = self.futures.pop(fut)
            task = self.plan.tasks[name]
            try:
                outcome = fut.result()
            except Exception as exc:  # the runner itself broke (database gone ...): the task failed, saying why
                outcome = TaskOutcome(name=name, runbook=task.runbook, status="failed", why=task.why,
                                      reason=f"{type(exc).__name__}: {exc}")
            if outcome.status == "refused":
                self._record_refused(outcome)
            if outcome.status == "succeeded":
                missing = self.plan.mark_built(name, outcome.output)
                if missing:
                    outcome.status = "failed"
                    outcome.reason = f"succeeded but its products are missing: {', '.join(missing)}"
            self.outcomes[name] = outcome
            self.emit("finished", asdict(outcome))

    def _cancel_pending(self) -> None:
        for name in self.pending:
            self.record_final(name, "cancelled", "pipeline run interrupted")
        self.pending = []

    def interrupt(self) -> None:
        """Ctrl-C: stop starting tasks, interrupt the running kernels, record every task's end as cancelled."""
        self.cancel.set()
        _interrupt_kernels(self.conn, self.running.run_ids())
        for fut, name in self.futures.items():
            self.outcomes[name] = self._cancelled(fut, name)
        self._cancel_pending()

    def _cancelled(self, fut: Future, name: str) -> TaskOutcome:
        try:
            outcome = fut.result()
        except BaseException as exc:  # noqa: BLE001 - the worker was interrupted too
            outcome = TaskOutcome(name=name, runbook=self.plan.tasks[name].runbook, status="cancelled",
                                  reason=f"{type(exc).__name__}: {exc}")
        if outcome.run_id and outcome.status in ("failed", "cancelled") and \
                (outcome.error or {}).get("ename") == "KeyboardInterrupt":
            # the kernel was interrupted by us, not by the runbook: record it as cancelled
            outcome.status, outcome.reason = "cancelled", "pipeline run interrupted; partial notebook kept"
            rec = ledger.get_run(self.conn, outcome.run_id)
            ledger.finish_run(self.conn, outcome.run_id, status="cancelled", results=rec.results if rec else {},
                              error=rec.error if rec else None, reason=outcome.reason)
        return outcome

    def summary(self, **about: Any) -> dict[str, Any]:
        """The pipeline run summary: ABOUT (pipeline, env, ...), the status, the task lists, every outcome."""
        tasks = [asdict(self.outcomes[n]) for n in self.plan.order]
        failed = [t["name"] for t in tasks if t["status"] not in (*OK, "upstream_failed", "refused", "waiting")]
        refused = [t["name"] for t in tasks if t["status"] == "refused"]
        waiting = [t["name"] for t in tasks if t["status"] == "waiting"]
        interrupted = self.cancel.is_set()
        kept = [t["name"] for t in tasks if t["repair"] == "kept"]
        status = "failed" if failed else "refused" if refused else "waiting" if waiting else "succeeded"
        out = {
            **about,
            "status": "cancelled" if interrupted else status,
            "failed": failed,
            "refused": refused,
            "waiting": waiting,
            "ran": [t["name"] for t in tasks if t["status"] not in ("skipped", "upstream_failed", "cancelled",
                                                                   "refused") and t["name"] not in kept],
            "skipped": [t["name"] for t in tasks if t["status"] == "skipped" and t["name"] not in kept],
            "upstream_failed": [t["name"] for t in tasks if t["status"] == "upstream_failed"],
        }
        if any(t["repair"] for t in tasks):
            out.update(kept=kept, rerun=[t["name"] for t in tasks if t["repair"] == "rerun"],
                       resumed=[t["name"] for t in tasks if t["repair"] == "resumed"])
        return out


def _plan(spec, *, env: str, profile: str | None, force: bool, pipeline_run_id: str,
          cli_params: list[str] | None) -> tuple[dag_mod.Plan, str]:
    """The plan, and who decided it: the fast path when nothing changed (ploomber not even imported)."""
    if not force:
        plan = fastpath.plan_if_up_to_date(spec, env=env, profile=profile, pipeline_run_id=pipeline_run_id,
                                           cli_params=cli_params)
        if plan is not None:
            return plan, "stackbook.pipelines.fastpath"
    return dag_mod.plan(spec, env=env, profile=profile, force=force, pipeline_run_id=pipeline_run_id,
                        cli_params=cli_params), "ploomber"


def run_pipeline(name: str, *, env: str = DEFAULT_ENV, profile: str | None = None, force: bool = False,
                 parallel: int | None = None, cli_params: list[str] | None = None,
                 on_event: Event | None = None, repair_id: str | None = None) -> dict[str, Any]:
    """Run pipeline NAME; returns the pipeline run summary (``status`` succeeded, failed or refused, per-task
    outcomes). REPAIR_ID: repair that pipeline run instead (``stackbook.pipelines.repair``: only the tasks
    that did not succeed run, as its next attempt; the summary then lists ``kept``, ``rerun``, ``resumed``).

    Raises UsageError (exit 2, nothing ran) when the spec, a runbook, a parameter or a secret is wrong, or
    the pipeline run to repair is unknown, another's or has nothing to repair; KeyboardInterrupt after
    recording every task's end when interrupted.
    """
    if repair_id and force:
        raise UsageError("--repair and --force do not go together: a repair keeps the tasks that succeeded "
                         "(nothing was executed)")
    spec = load_spec(name)
    if repair_id:
        with ledger.session() as conn:
            repair.runs_of(conn, repair_id, env)  # an unknown id or another environment: exit 2 before planning
    pipeline_run_id = repair_id or "p" + ledger.new_run_id()
    started = time.monotonic()
    channel_secrets = notify.channel_secrets(env)  # a wrong notify route: exit 2, nothing ran
    if repair_id:  # ploomber's plan (every task prepared and checked); the ledger decides what runs
        plan = dag_mod.plan(spec, env=env, profile=profile, force=True, pipeline_run_id=pipeline_run_id,
                            cli_params=cli_params)
        decided_by = "stackbook.pipelines.repair"
    else:
        plan, decided_by = _plan(spec, env=env, profile=profile, force=force, pipeline_run_id=pipeline_run_id,
                                 cli_params=cli_params)
    for task in plan.tasks.values():
        task.prepared.options.scrub_values = channel_secrets
    parallel = max(1, parallel or default_parallel())
    with ledger.session() as conn:
        state = _PipelineRun(plan, conn, env=env, pipeline_run_id=pipeline_run_id, parallel=parallel,
                             emit=on_event or _ignore)
        if repair_id:
            last = repair.last_attempts(conn, plan, repair_id)
            repair.apply(plan, last, repair_id)
            state.keep(last)
        else:
            state.skip_up_to_date()
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pipeline") as pool:
            try:
                state.drive(pool)
            except KeyboardInterrupt:
                state.interrupt()
    summary = state.summary(pipeline=spec.name, path=str(spec.path), pipeline_run_id=pipeline_run_id, env=env,
                            profile=profile, force=force, parallel=parallel, decided_by=decided_by)
    summary["duration_s"] = round(time.monotonic() - started, 3)
    summary["tasks"] = [asdict(state.outcomes[n]) for n in plan.order]
    if state.cancel.is_set():
        raise KeyboardInterrupt
    notify.after_pipeline(summary, env)  # one summary when it failed; never raises
    return summary
