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

nbclient, nbformat and papermill are imported only when a run executes.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    approved_by: str | None = None
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


def prepare(name: str, options: RunOptions) -> Prepared:
    """Every check that needs no kernel; raises UsageError (exit 2) or RefusedError (exit 3)."""
    runbook = catalog.load(name)
    env = environments.load(options.env)
    file_values = params_mod.load_file(options.params_file) if options.params_file else {}
    file_values = {**file_values, **options.extra_params}
    values = params_mod.resolve(
        runbook,
        cli=options.cli_params,
        file_values=file_values,
        env_shared=env.shared_params,
        env_runbook=env.runbook_params(runbook.name),
    )
    check_approval(runbook, env, values, options.approved_by)
    kernelspec.check(runbook.kernel, runbook=runbook.name)  # a kernel not installed here: exit 2, nothing recorded
    _injectable(runbook, values)  # a language papermill cannot write parameters in: exit 2, nothing recorded
    found = scrub.collect(runbook.metadata.get("secrets", []), env.name, runbook.name)
    found.update(scrub.collect_optional(runbook.metadata.get("optional_secrets", []), env.name))
    check_no_secret_params(values, {**options.scrub_values, **_database_password(), **found}, runbook.name, env.name)
    return Prepared(runbook=runbook, env=env, params=values, secrets=found, options=options,
                    cwd=working_directory(runbook, options.cwd))


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


def check_approval(runbook: notebooks.Runbook, env: environments.Environment, values: dict, approved_by: str | None):
    if not runbook.metadata.get("destructive"):
        return
    if values.get("dry_run", False) is not False:
        return  # dry runs need no approval
    if env.require_approval and not (approved_by or "").strip():
        raise RefusedError(
            f"runbook {runbook.name!r} is destructive and dry_run is False in environment {env.name!r}, "
            "which requires approval: run again with --approved-by NAME (nothing was executed)",
            runbook=runbook.name,
            env=env.name,
        )


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
        self.label, self.total, self.bar = label, total, None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", desc=label, file=sys.stderr, leave=False)

    def cell_done(self, index: int, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines":
            print(f"stackbook: {self.label}: cell {index + 1}/{self.total} done in {seconds:.2f} s",
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
    from stackbook.run import db, execution, kernel  # nbclient, nbformat: only when a run executes

    opts, runbook, env = prep.options, prep.runbook, prep.env
    database_url = db.url()
    scrubber = _scrubber(prep, database_url)
    run_id = ledger.new_run_id()
    output = runstore.location(env.name, runbook.name, run_id, env.get("run_store"))
    runstore.check_writable(output, env.get("s3_endpoint"))
    with ledger.open_run(run_id=run_id, runbook=runbook.name, path=str(runbook.path), env=env.name,
                         params=scrubber.obj(prep.params), output=output,
                         exclusive=bool(runbook.metadata.get("exclusive")),
                         git_commit=project.git_commit(), approved_by=opts.approved_by,
                         provenance=evidence.provenance(runbook, env, scrubber.obj(prep.params)),
                         pipeline_run_id=opts.pipeline_run_id, attempt=opts.attempt, redact=scrubber.text,
                         kind=opts.kind, resumed_from=opts.resume_from, approval_id=opts.approval_id) as row:
        if on_start:
            on_start(run_id)
        results_file = kernel.scratch_dir() / f"{run_id}.results.jsonl"
        notebook = execution.NotebookExecution.from_runbook(runbook, prep.params, output=output, scrubber=scrubber)
        kern = kernel.Kernel(
            notebook.nb, connection_file=kernel.connection_file(run_id), run_id=run_id,
            scrubber=scrubber, cell_timeout=opts.cell_timeout,
            run_timeout=opts.timeout if opts.timeout is not None else runbook.metadata.get("timeout"),
            live_log=kernel.LiveLog(scrubber) if opts.log_output else None, on_pid=row.set_kernel_pid)
        kernel_env = kernel.environment(prep, run_id=run_id, output=output, database_url=database_url,
                                        results_file=results_file)
        with kernel.ScrubbedLogs(scrubber):
            progress = _Progress(opts.progress, runbook.name, len(notebook.code_cells()))
            outcome = _execute_cells(notebook, kern, kernel_env, progress, prep.cwd or str(project.root()))
        results = scrubber.obj(read_results_file(str(results_file)))
        results_file.unlink(missing_ok=True)
        record = _finish(row, notebook, outcome, results, scrubber)
    if record.status == "cancelled":
        raise KeyboardInterrupt
    return record


def _execute_cells(notebook, kern, kernel_env: dict[str, str], progress: _Progress, cwd: str):
    """Every code cell in the kernel, papermill's metadata kept; the outcome (``kernel.Outcome``)."""
    from stackbook.run.kernel import Outcome

    try:
        notebook.notebook_start()  # the first save: a store that fails now fails the run, recorded
        with kern.running(env=kernel_env, cwd=cwd):
            for done, (index, cell) in enumerate(notebook.code_cells()):
                notebook.cell_start(cell, index)
                try:
                    go_on = kern.execute_cell(cell, index)
                except BaseException:
                    notebook.cell_exception(cell, index)
                    raise
                finally:
                    seconds = notebook.cell_complete(cell, index)
                progress.cell_done(done, seconds)
                if not go_on:  # sys.exit(0) and the like: the run ends here, successfully (papermill's rule)
                    break
    except (Exception, KeyboardInterrupt) as exc:  # recorded in the row: the cell, the error, the reason
        outcome = kern.outcome_of(exc, notebook.cell_index)
        if outcome.mark_cell is not None:
            notebook.mark_error(outcome.mark_cell)
        return outcome
    finally:
        progress.close()
    return Outcome()


def _finish(row: ledger.OpenRun, notebook, outcome, results: dict, scrubber: scrub.Scrubber) -> RunRecord:
    """The final save (its record in the notebook's metadata), then the ledger row; a failed save fails the run."""
    error = scrubber.obj(outcome.error)
    status, reason = outcome.status, outcome.reason
    record = replace(row.current(), status=status, results=results, error=error, reason=reason)
    try:
        notebook.notebook_complete(record.to_json())
    except Exception as exc:  # any failure of the run store (papermill's handlers raise their own): recorded
        reason = f"{reason + '; ' if reason else ''}executed notebook not written: {exc}"
        status = "failed" if status == "succeeded" else status
    return row.finish(status, results=results, error=error, reason=scrubber.text(reason) if reason else None,
                      notebook_sha256=notebook.sha256)


def run(name: str, options: RunOptions | None = None, on_start: Callable[[str], None] | None = None) -> RunRecord:
    """Prepare and execute; returns the ledger record (its status tells the outcome)."""
    return execute(prepare(name, options or RunOptions()), on_start=on_start)


__all__ = ["RunOptions", "Prepared", "prepare", "execute", "run", "RunRecord", "UsageError"]
