"""The run record: one ledger row of ``stackbook.runs`` as one typed object.

Every module that reads a run (the CLI, pipelines, the Kubernetes backend)
gets a ``RunRecord`` from :mod:`stackbook.run.ledger` and reads its attributes;
``to_json()`` is the documented public shape (``stackbook run --json``,
``stackbook runs --json``, ``runs show --json``, the executed notebook's
``metadata.stackbook.run``): every column, times as ISO 8601 strings, and the
error without its traceback. The field order is the column order of the table.

``status`` is one of ``STATES``: ``running`` while a run executes; ``waiting`` when it stopped at a step
a person must confirm (``stackbook attest``); ``succeeded``, ``failed``,
``timed_out`` or ``cancelled`` when it ended; and three for runs that never started, recorded
by pipelines: ``skipped`` (up to date), ``upstream_failed`` (an upstream task did not succeed)
and ``refused`` (an exclusive runbook another run held the lock of; ``stackbook pipeline run``
exits 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

PUBLIC_ERROR_KEYS = ("cell_index", "ename", "evalue")  # the error as documented: no traceback
_TIMES = ("started_at", "finished_at", "heartbeat_at")


@dataclass
class RunRecord:
    id: str
    runbook: str
    path: str | None = None
    env: str = ""
    status: str = "running"
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    host: str | None = None
    pid: int | None = None
    kernel_pid: int | None = None
    git_commit: str | None = None
    heartbeat_at: datetime | None = None
    approved_by: str | None = None
    pipeline_run_id: str | None = None
    attempt: int = 1
    # the evidence of the run (``stackbook.run.evidence``, ``stackbook.run.chain``)
    operator: str | None = None  # who ran it: a database role, a scheduler, $STACKBOOK_OPERATOR or the OS user
    operator_verified: bool = False  # True when the database authenticated the operator (``identity: database``)
    code_sha256: str | None = None  # the runbook's parameters and code cells as run (``notebooks.code_sha256``)
    params_sha256: str | None = None  # the effective parameters as recorded, canonical JSON
    env_file_sha256: str | None = None  # the environment file's bytes
    git_dirty: bool | None = None  # whether the git working tree had uncommitted changes
    notebook_sha256: str | None = None  # the executed notebook's bytes as stored in the run store
    # resumed runs, interactive sessions, manual steps and approvals
    resumed_from: str | None = None  # the run this one continues (``stackbook run --resume``)
    kind: str = "headless"  # "headless" (stackbook run, pipelines, schedulers) or "interactive" (a lab session)
    approval_id: str | None = None  # the approval this run consumed (``stackbook approve``)
    waiting: dict[str, Any] | None = None  # the manual step a ``waiting`` run stopped at: cell_index, instruction
    cells: list[dict[str, Any]] | None = None  # an interactive run's executed cells, in the order they ran

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """A record from a ledger row (a psycopg dict row) or a ``to_json()`` document; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        for key in _TIMES:
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        for key in ("params", "results"):
            if values.get(key) is None:
                values[key] = {}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The public shape: every field, ISO times, the error without its traceback."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in _TIMES:
            if out[key] is not None:
                out[key] = out[key].isoformat()
        if self.error:
            out["error"] = {k: self.error.get(k) for k in PUBLIC_ERROR_KEYS}
        return out

    def to_document(self) -> dict[str, Any]:
        """Every field as JSON values, the error whole (its traceback too): the row as the spool keeps it
        (``stackbook.run.spool``), read back with ``from_row``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in _TIMES:
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def exit_code(self) -> int:
        """``stackbook run``'s exit code for this record: 0 succeeded, 4 waiting at a manual step (a scheduler must
        not start what depends on it), else 1 (130 is raised, not returned)."""
        from stackbook.core.errors import EXIT_WAITING

        return 0 if self.succeeded else EXIT_WAITING if self.status == "waiting" else 1

    def describe_failure(self) -> str:
        """One line for standard error: the runbook, its state, the failing cell and error, where the notebook is."""
        err = self.error or {}
        where = f" at cell {err.get('cell_index')}" if err.get("cell_index") is not None else ""
        what = f": {err.get('ename')}: {err.get('evalue')}" if err.get("ename") else ""
        return f"runbook {self.runbook!r} {self.status}{where}{what} (run {self.id}, notebook {self.output})"


@dataclass(frozen=True)
class Provenance:
    """The evidence of a run known before it starts (``stackbook.run.evidence.provenance``), written with its row.
    ``operator`` None with ``operator_verified``: the database session's role (``identity: database``)."""

    operator: str | None = None
    operator_verified: bool = False
    code_sha256: str | None = None
    params_sha256: str | None = None
    env_file_sha256: str | None = None
    git_dirty: bool | None = None


COLUMNS = tuple(f.name for f in fields(RunRecord))
STATES = ("running", "waiting", "succeeded", "failed", "timed_out", "cancelled", "upstream_failed", "skipped", "refused")
NEVER_STARTED = ("skipped", "upstream_failed", "refused")  # rows of runs that never started: no notebook, no kernel
