"""Running a runbook: check, record, execute, scrub, store.

``prepare`` does everything that can fail before a kernel starts (notebook,
environment, parameters, approval, secrets, the kernel's working directory and
the injected parameters in the kernel's language) and raises a ``UsageError`` or
``RefusedError``; a parameter that holds a secret's value (``-p token=$TOKEN``)
is one of those errors: secrets reach a runbook through its environment only.
``execute`` is the run's life: it checks that the run store can be written,
opens the ledger row (``ledger.open_run``: the lock of an exclusive runbook,
the row, its heartbeat; finished on every path), runs the notebook through
``execution.NotebookExecution`` (papermill's metadata, parameter injection and
error markers) in a fresh kernel (``kernel.Kernel``), and finishes the row with
the outcome. ``run`` does both. Secrets are scrubbed from all it writes, the
parameters of the ledger row and the record included.

When a cell fails, the run times out or is cancelled, the kernel's user namespace
is snapshotted (``stackbook.run.snapshot``) before the kernel is shut down; a
succeeding run takes none. ``RunOptions.resume_from`` makes the run a resume of
an earlier one (``stackbook.run.resume``: checked in ``prepare``; the completed
cells carried over, the snapshot restored, the ``setup`` cells run, then on from
the stopped cell). A cell tagged ``manual`` ends a headless run ``waiting``
(snapshot kept); ``attest`` records who confirmed the step and continues the same
run from the next cell.

nbclient, nbformat and papermill are imported only when a run executes.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from stackbook.core import catalog, environments, notebooks, project
from stackbook.core import params as params_mod
from stackbook.core.errors import DatabaseUnavailable, ParameterError, RefusedError, UsageError  # noqa: F401
from stackbook.core.results import read_results_file
from stackbook.run import evidence, kernelspec, ledger, runstore, scrub
from stackbook.run.record import RunRecord

UNSAFE_NO_SCRUB_ENV = "STACKBOOK_UNSAFE_NO_SCRUB"  # tests only: proves the canary search finds secrets


@dataclass
class RunOptions:
    env: str = environments.DEFAULT_ENV
    cli_params: list[str] = field(default_factory=list)
    params_file: str | None = None
    cell_timeout: float | None = None  # seconds per cell; None: no limit
    timeout: float | None = None  # seconds for the whole run; None: the runbook's metadata timeout, else none
    log_output: bool = False  # stream cell output to standard error
    progress: str = "auto"  # "bar", "lines", "off" or "auto" (a bar on a terminal, lines otherwise)
    pipeline_run_id: str | None = None
    attempt: int = 1
    extra_params: dict[str, Any] = field(default_factory=dict)  # from pipelines: below -p, above -f
    scrub_values: dict[str, str] = field(default_factory=dict)  # scrubbed, not given to the kernel (notify channels)
    cwd: str | None = None  # the kernel's working directory; None: the project root for a runbook, else the caller's
    # resuming (``--resume``), approvals (``--approval``) and interactive sessions (``stackbook lab NAME``)
    resume_from: str | None = None  # the failed, timed-out, cancelled or waiting run to continue
    from_cell: int | None = None  # resume at this cell when the run left no snapshot
    allow_changed: bool = False  # resume although the runbook's code changed since that run
    approval_id: str | None = None  # the recorded approval this run consumes
    kind: str = "headless"  # "interactive" for a lab session


@dataclass
class Prepared:
    runbook: notebooks.Runbook
    env: environments.Environment
    params: dict[str, Any]
    secrets: dict[str, str]
    options: RunOptions
    cwd: str = ""  # the kernel's working directory (``working_directory``)
    resume: Any = None  # ``resume.Plan`` of a resumed run


def prepare(name: str, options: RunOptions) -> Prepared:
    """Every check that needs no kernel; raises UsageError (exit 2) or RefusedError (exit 3)."""
    runbook = catalog.load(name)
    env = environments.load(options.env)
    plan = None
    if options.resume_from:  # the old run's parameters, as recorded; -p and -f are refused
        from stackbook.run import resume

        plan = resume.plan(runbook, env.name, options)
        values = params_mod.resolve(runbook, file_values=plan.old.params,
                                    file_label=f"the parameters of run {plan.old.id}")
    else:
        values = effective_values(runbook, env, options)
    kernelspec.check(runbook.kernel, runbook=runbook.name)  # a kernel not installed here: exit 2, nothing recorded
    _injectable(runbook, values)  # a language papermill cannot write parameters in: exit 2, nothing recorded
    found = _secrets(runbook, env)
    check_no_secret_params(values, {**options.scrub_values, **_database_password(), **found}, runbook.name, env.name)
    options = check_approval(runbook, env, values, options)  # last: it asks the ledger
    return Prepared(runbook=runbook, env=env, params=values, secrets=found, options=options,
                    cwd=working_directory(runbook, options.cwd), resume=plan)


def effective_values(runbook: notebooks.Runbook, env: environments.Environment, options: RunOptions) -> dict:
    """The parameter values a run with OPTIONS gets, checked: -p over pipeline values over -f over the
    environment file over the notebook's defaults (``stackbook approve`` approves exactly these)."""
    file_values = params_mod.load_file(options.params_file) if options.params_file else {}
    file_values = {**file_values, **options.extra_params}
    return params_mod.resolve(
        runbook,
        cli=options.cli_params,
        file_values=file_values,
        env_shared=env.shared_params,
        env_runbook=env.runbook_params(runbook.name),
    )


def _secrets(runbook: notebooks.Runbook, env: environments.Environment) -> dict[str, str]:
    """The runbook's declared secrets (a missing one: SecretError, exit 2) and the optional ones found."""
    found = scrub.collect(runbook.metadata.get("secrets", []), env.name, runbook.name)
    found.update(scrub.collect_optional(runbook.metadata.get("optional_secrets", []), env.name))
    return found


def _injectable(runbook: notebooks.Runbook, values: dict[str, Any]) -> None:
    """NotebookError (exit 2) unless papermill's translators can write VALUES in the runbook's language."""
    if not runbook.typed:
        from stackbook.run import execution

        execution.parameters_source(runbook, values)


def working_directory(runbook: notebooks.Runbook, cwd: str | None) -> str:
    """The kernel's working directory: CWD (``--cwd``) when given, else the project root for a runbook under
    ``runbooks/`` and the caller's working directory for a notebook given by path, as papermill has it."""
    if cwd is None:
        return str(project.root() if catalog.is_runbook_path(runbook.path) else os.getcwd())
    path = os.path.abspath(os.path.expanduser(cwd))
    if not os.path.isdir(path):
        raise UsageError(f"--cwd {cwd}: no such directory; give an existing folder for the kernel to run in "
                         "(nothing was executed)", runbook=runbook.name)
    return path


def check_approval(runbook: notebooks.Runbook, env: environments.Environment, values: dict,
                   options: RunOptions) -> RunOptions:
    """OPTIONS with the approval the run will consume: for a run that needs one (``approvals.needed``) it must
    match exactly (``approvals.check``: ApprovalRefused, exit 3, naming each mismatch); a run that needs none
    ignores ``--approval``, with a note, and leaves it unused."""
    from stackbook.run import approvals

    if not approvals.needed(runbook, env, values):
        if options.approval_id:
            print(f"stackbook: this run of {runbook.name} in {env.name} needs no approval (not destructive, a dry "
                  f"run, or the environment requires none): approval {options.approval_id} is left unused",
                  file=sys.stderr, flush=True)
        return replace(options, approval_id=None)
    cli = options.cli_params
    if options.resume_from:  # the parameters are the resumed run's: approve those
        cli = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    how = approvals.how_to_approve(runbook, env, cli, None if options.resume_from else options.params_file)
    with ledger.session(reap_stale=False) as conn:
        approvals.check(conn, runbook, env, values, options.approval_id, how)
    return options


def _database_password() -> dict[str, str]:
    """``{"DATABASE_PASSWORD": ...}`` of the database the run will use; empty when there is none (yet)."""
    from stackbook.run import db

    try:
        password = db.password(db.url())
    except DatabaseUnavailable:  # no database now: no password to keep out of the parameters
        return {}
    return {"DATABASE_PASSWORD": password} if password else {}


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    """(where, text) of every string in a parameter's VALUE, nested lists and dicts (keys too) included."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _strings(k, path) + _strings(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _strings(v, f"{path}[{i}]")]
    return []


_LABEL = re.compile(r"\[secret:([^\]]+)\]")


def _secrets_in(scrubber: scrub.Scrubber, text: str) -> set[str]:
    """Names of the secrets SCRUBBER finds in TEXT, or in any of TEXT's own forms (a decoded secret)."""
    found: set[str] = set()
    for form in {text, *scrub.forms(text)}:
        scrubbed = scrubber.text(form)
        if scrubbed != form:
            found |= set(_LABEL.findall(scrubbed)) - set(_LABEL.findall(form))
    return found


def check_no_secret_params(values: dict[str, Any], secrets: dict[str, str], runbook: str, env: str) -> None:
    """ParameterError (exit 2) when a parameter holds a secret, in any form ``scrub.forms`` knows, either way
    round (the parameter in the secret's forms, or the secret in the parameter's); names both, never the value."""
    scrubber = scrub.Scrubber(secrets)
    if not scrubber:
        return
    for name, value in values.items():
        for where, text in _strings(value, name):
            found = _secrets_in(scrubber, text)
            if found:
                raise ParameterError(
                    f"parameter {where!r} of runbook {runbook!r} holds the value of secret "
                    f"{', '.join(sorted(found))}: a secret reaches a runbook through its environment, never as a "
                    "parameter (parameters are recorded and shown); declare it in metadata.stackbook.secrets and "
                    "read os.environ in the runbook (nothing was executed)", runbook=runbook, env=env)


class _Progress:
    def __init__(self, mode: str, label: str, total: int):
        self.mode = mode
        if mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "lines"
        self.label, self.total, self.bar, self.done = label, total, None, 0
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", desc=label, file=sys.stderr, leave=False)

    def cell_done(self, seconds: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines":
            print(f"stackbook: {self.label}: cell {self.done}/{self.total} done in {seconds:.2f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scrubber(prep: Prepared, database_url: str) -> scrub.Scrubber:
    """Every secret of the run, the database password, and the values of the runner's credential-looking
    variables (declared or not), to be scrubbed from all it writes."""
    from stackbook.run import db, kernel

    values = {**kernel.credential_values(dict(os.environ)), **prep.options.scrub_values, **prep.secrets}
    password = db.password(database_url)
    if password:
        values.setdefault("DATABASE_PASSWORD", password)
    return scrub.Scrubber(values, enabled=os.environ.get(UNSAFE_NO_SCRUB_ENV) != "1")


def execute(prep: Prepared, on_start: Callable[[str], None] | None = None) -> RunRecord:
    """Run a prepared runbook; returns the finished ledger record.

    A run store that cannot be written is a UsageError (exit 2) and a held lock a RefusedError (exit 3),
    both before any row is written. Ctrl-C (or SIGTERM) records the run ``cancelled`` and raises KeyboardInterrupt.
    """
    from stackbook.run import db, execution

    opts, runbook, env = prep.options, prep.runbook, prep.env
    database_url = db.url()
    scrubber = _scrubber(prep, database_url)
    _prune_snapshots()
    run_id = ledger.new_run_id()
    output = runstore.location(env.name, runbook.name, run_id, env.get("run_store"))
    runstore.check_writable(output, env.get("s3_endpoint"))
    notebook = execution.NotebookExecution.from_runbook(runbook, prep.params, output=output, scrubber=scrubber)
    start = None
    if prep.resume is not None:  # where it goes on, and what it carries: a cell gone from the runbook is exit 2
        from stackbook.run import resume

        start = resume.start(prep.resume, notebook.nb)
    with ledger.open_run(run_id=run_id, runbook=runbook.name, path=str(runbook.path), env=env.name,
                         params=scrubber.obj(prep.params), output=output,
                         exclusive=bool(runbook.metadata.get("exclusive")),
                         git_commit=project.git_commit(),
                         provenance=evidence.provenance(runbook, env, scrubber.obj(prep.params)),
                         pipeline_run_id=opts.pipeline_run_id, attempt=opts.attempt, redact=scrubber.text,
                         kind=opts.kind, resumed_from=opts.resume_from, approval_id=opts.approval_id) as row:
        if on_start:
            on_start(run_id)
        record = _run(row, prep, notebook, start, scrubber, database_url)
    return _after(record, prep.resume.old.id if prep.resume is not None else None)


def _snapshots():
    """``stackbook.run.snapshot``, imported when a run first needs it (it imports dill only when it snapshots)."""
    from stackbook.run.resume import snapshots

    return snapshots()


def _prune_snapshots() -> None:
    """Snapshots past their retention removed (a failure to is said, never fatal to the run)."""
    try:
        _snapshots().prune()
    except OSError as exc:
        print(f"stackbook: old kernel snapshots not pruned: {exc}", file=sys.stderr)


def _after(record: RunRecord, continued: str | None) -> RunRecord:
    """A run that succeeded no longer needs the snapshot of the run it continued; a cancelled one raises."""
    if record.succeeded and continued:
        _snapshots().remove(continued)
    if record.status == "cancelled":
        raise KeyboardInterrupt
    return record


def _run(row: ledger.OpenRun, prep: Prepared, notebook, start, scrubber: scrub.Scrubber,
         database_url: str) -> RunRecord:
    """NOTEBOOK executed for the open ROW (from START when resumed or continued); the finished record."""
    from stackbook.run import kernel

    opts, runbook, run_id = prep.options, prep.runbook, row.run_id
    results_file = kernel.scratch_dir() / f"{run_id}.results.jsonl"
    kern = kernel.Kernel(
        notebook.nb, connection_file=kernel.connection_file(run_id), run_id=run_id,
        scrubber=scrubber, cell_timeout=opts.cell_timeout,
        run_timeout=opts.timeout if opts.timeout is not None else runbook.metadata.get("timeout"),
        live_log=kernel.LiveLog(scrubber) if opts.log_output else None, on_pid=row.set_kernel_pid)
    kernel_env = kernel.environment(prep, run_id=run_id, output=notebook.output, database_url=database_url,
                                    results_file=results_file)
    with kernel.ScrubbedLogs(scrubber):
        progress = _Progress(opts.progress, runbook.name, _to_execute(notebook, start))
        outcome = _execute_cells(notebook, kern, kernel_env, progress, prep.cwd or str(project.root()), start)
    results = scrubber.obj(read_results_file(str(results_file)))
    results_file.unlink(missing_ok=True)
    return _finish(row, notebook, outcome, results, scrubber)


def _to_execute(notebook, start) -> int:
    """How many code cells the run executes: all, or the setup cells and those from START on."""
    from stackbook.run.execution import is_setup

    cells = notebook.code_cells()
    if start is None:
        return len(cells)
    return sum(1 for i, c in cells if i >= start.index or is_setup(c))


def _begin(notebook, start) -> None:
    """The notebook's first save: a new one (cells carried over from the run resumed), or a waiting run's own."""
    if start is None or start.fresh:
        notebook.notebook_start()
        for index, old, from_run in (start.carried if start else []):
            notebook.carry(index, old, from_run)
        if start is not None and start.carried:
            notebook.save()
    else:
        notebook.notebook_continue()


def _execute_cells(notebook, kern, kernel_env: dict[str, str], progress: _Progress, cwd: str, start=None):
    """Every code cell in the kernel, papermill's metadata kept; the outcome (``kernel.Outcome``). A failure,
    timeout or Ctrl-C inside the kernel's life snapshots its state before the kernel is shut down."""
    try:
        _begin(notebook, start)  # the first save: a store that fails now fails the run, recorded
        with kern.running(env=kernel_env, cwd=cwd):
            try:
                if start is not None:
                    _restart(notebook, kern, progress, start)
                outcome = _cell_loop(notebook, kern, progress, start.index if start else 0)
                if outcome.waiting:
                    outcome.snapshot = _keep_state(kern, None)
            except (Exception, KeyboardInterrupt) as exc:  # recorded in the row: the cell, the error, the reason
                outcome = kern.outcome_of(exc, notebook.cell_index)
                if outcome.status != "succeeded":
                    outcome.snapshot = _keep_state(kern, exc)
    except (Exception, KeyboardInterrupt) as exc:  # the kernel did not start, the store failed, ...
        outcome = kern.outcome_of(exc, notebook.cell_index)
    finally:
        progress.close()
    if outcome.mark_cell is not None:
        notebook.mark_error(outcome.mark_cell)
    return outcome


def _restart(notebook, kern, progress: _Progress, start) -> None:
    """A resumed or continued run's kernel: the snapshot restored, then the ``setup`` cells before START run."""
    from stackbook.run import execution

    if start.restore:
        manifest = _snapshots().restore(kern, start.restore)
        left = getattr(manifest, "left_out", None) or {}
        if left:
            print(f"stackbook: snapshot of run {start.restore} restored; not in it (the setup cells make them "
                  f"again): {', '.join(sorted(left))}", file=sys.stderr, flush=True)
    for index, cell in notebook.code_cells():
        if index < start.index and execution.is_setup(cell):
            _run_cell(notebook, kern, progress, cell, index)


def _cell_loop(notebook, kern, progress: _Progress, first: int):
    """The cells from FIRST on; a ``waiting`` outcome at a manual cell, else success (exceptions propagate)."""
    from stackbook.run import execution
    from stackbook.run.kernel import Outcome

    for index in range(first, len(notebook.nb.cells)):
        cell = notebook.nb.cells[index]
        if execution.is_manual(cell):
            text = execution.instruction(cell)
            return Outcome("waiting", f"waiting at the manual step in cell {index}: do it, then confirm with "
                                      f"`stackbook attest {kern.run_id} --by NAME` (or `stackbook runs cancel "
                                      f"{kern.run_id}`)", waiting={"cell_index": index, "instruction": text})
        if cell.cell_type == "code" and not _run_cell(notebook, kern, progress, cell, index):
            break  # sys.exit(0) and the like: the run ends here, successfully (papermill's rule)
    return Outcome()


def _run_cell(notebook, kern, progress: _Progress, cell, index: int) -> bool:
    """One code cell, papermill's metadata kept; False when it ended the run successfully (``sys.exit(0)``)."""
    notebook.cell_start(cell, index)
    try:
        go_on = kern.execute_cell(cell, index)
    except BaseException:
        notebook.cell_exception(cell, index)
        raise
    finally:
        seconds = notebook.cell_complete(cell, index)
    progress.cell_done(seconds)
    return go_on


def _keep_state(kern, exc: BaseException | None):
    """The kernel's namespace snapshotted (``snapshot.take``) while the kernel lives; None when it cannot be."""
    snapshot = _snapshots()
    try:
        if not kern.settle(exc):
            print(f"stackbook: run {kern.run_id}: no snapshot: the kernel is gone or did not stop", file=sys.stderr)
            return None
        return snapshot.take(kern, kern.run_id, kern.scrubber)
    except (Exception, KeyboardInterrupt) as err:  # a snapshot is a convenience: its failure never hides the run's
        print(f"stackbook: run {kern.run_id}: no snapshot: {type(err).__name__}: {kern.scrubber.text(str(err))}",
              file=sys.stderr)
        return None


def _finish(row: ledger.OpenRun, notebook, outcome, results: dict, scrubber: scrub.Scrubber) -> RunRecord:
    """The final save (its record in the notebook's metadata), then the ledger row; a failed save fails the run."""
    error = scrubber.obj(outcome.error)
    status, reason = outcome.status, _noted(outcome, row.run_id)
    waiting = scrubber.obj(outcome.waiting) if outcome.waiting else None
    record = replace(row.current(), status=status, results=results, error=error, reason=reason, waiting=waiting)
    try:
        notebook.notebook_complete(record.to_json())
    except Exception as exc:  # any failure of the run store (papermill's handlers raise their own): recorded
        reason = f"{reason + '; ' if reason else ''}executed notebook not written: {exc}"
        status = "failed" if status == "succeeded" else status
    return row.finish(status, results=results, error=error, reason=scrubber.text(reason) if reason else None,
                      notebook_sha256=notebook.sha256, waiting=waiting if status == "waiting" else None)


def _noted(outcome, run_id: str) -> str | None:
    """The outcome's reason, and whether a run that stopped left a snapshot to resume from."""
    from stackbook.run.resume import RESUMABLE

    if outcome.status not in RESUMABLE:
        return outcome.reason
    note = (f"snapshot kept: resume with `stackbook resume {run_id}`" if outcome.snapshot is not None else
            f"no snapshot: resume with `stackbook resume {run_id} --from-cell N`")
    return f"{outcome.reason}; {note}" if outcome.reason else note


def run(name: str, options: RunOptions | None = None, on_start: Callable[[str], None] | None = None) -> RunRecord:
    """Prepare and execute; returns the ledger record (its status tells the outcome)."""
    return execute(prepare(name, options or RunOptions()), on_start=on_start)


def resume(run_id: str, options: RunOptions, on_start: Callable[[str], None] | None = None) -> RunRecord:
    """``stackbook resume RUN_ID``: a new run of RUN_ID's runbook, in its environment, going on where it stopped."""
    from stackbook.run import resume as resume_mod

    old = resume_mod.find_run(run_id)
    name = old.path if old.path and os.path.exists(old.path) else old.runbook
    options = replace(options, env=old.env, resume_from=run_id)
    return execute(prepare(name, options), on_start=on_start)


def _prepared_for(rec: RunRecord, options: RunOptions) -> Prepared:
    """What continuing the waiting run REC needs: its runbook, environment, recorded parameters and secrets."""
    name = rec.path if rec.path and os.path.exists(rec.path) else rec.runbook
    runbook = catalog.load(name)
    env = environments.load(rec.env)
    kernelspec.check(runbook.kernel, runbook=runbook.name)
    options = replace(options, env=rec.env)
    return Prepared(runbook=runbook, env=env, params=dict(rec.params), secrets=_secrets(runbook, env),
                    options=options, cwd=working_directory(runbook, options.cwd))


def attest(run_id: str, by: str, note: str | None = None, options: RunOptions | None = None,
           on_start: Callable[[str], None] | None = None) -> tuple[RunRecord, dict[str, Any]]:
    """``stackbook attest``: the manual step the waiting run RUN_ID stopped at confirmed by BY (in the ledger and
    the chain), then the same run continued from the next cell, its snapshot restored and its setup cells run.
    Returns the finished record and the attestation. Not waiting: UsageError (exit 2); a waiting exclusive
    runbook's lock held by another run: RefusedError (exit 3)."""
    from stackbook.run import db, execution
    from stackbook.run import resume as resume_mod

    if not (by or "").strip():
        raise UsageError("--by NAME: say who did the manual step (nothing was executed)")
    rec, stored = resume_mod.waiting(run_id)
    prep = _prepared_for(rec, options or RunOptions())
    database_url = db.url()
    scrubber = _scrubber(prep, database_url)
    attestation: dict[str, Any] = {}
    index = rec.waiting["cell_index"]
    record_it = partial(resume_mod.record_attestation, rec=rec, by=scrubber.text(by.strip()),
                        note=scrubber.text(note) if note else None,
                        identity=prep.env.identity, out=attestation)
    with ledger.reopen_run(run_id=run_id, runbook=rec.runbook, env=rec.env, redact=scrubber.text,
                           exclusive=bool(prep.runbook.metadata.get("exclusive")), on_reopen=record_it) as row:
        if on_start:
            on_start(run_id)
        notebook = execution.NotebookExecution.from_stored(stored, output=rec.output, scrubber=scrubber)
        resume_mod.mark_attested(notebook.nb, index, attestation)
        restore = run_id if resume_mod.has_snapshot(run_id) else None
        if restore is None:
            print(f"stackbook: run {run_id} left no snapshot at its manual step: going on with what its setup "
                  "cells make", file=sys.stderr, flush=True)
        start = resume_mod.Start(index=index + 1, restore=restore, fresh=False)
        record = _run(row, prep, notebook, start, scrubber, database_url)
    return _after(record, run_id), attestation


def cancel_waiting(run_id: str) -> RunRecord:
    """``stackbook runs cancel``: the waiting run RUN_ID ended ``cancelled`` (its snapshot kept until it expires);
    UsageError (exit 2) for a run that is not waiting."""
    with ledger.session() as conn:
        rec = ledger.get_run(conn, run_id)
        done = ledger.cancel_waiting(conn, run_id, "cancelled while waiting at its manual step (stackbook runs "
                                                   "cancel)") if rec is not None else None
    if rec is None:
        raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs`)")
    if done is None:
        how = ("press Ctrl-C in its terminal or kill its runner (pid "
               f"{rec.pid} on {rec.host})") if rec.status == "running" else "it has ended already"
        raise UsageError(f"run {run_id} is {rec.status}, not waiting: `runs cancel` ends a waiting run only; {how}")
    return done


__all__ = ["RunOptions", "Prepared", "prepare", "execute", "run", "RunRecord", "UsageError"]
