"""Going on where a run stopped: ``stackbook resume`` (a new run) and ``stackbook attest`` (the same run).

``plan`` checks a resume before anything runs (each refusal a ``UsageError``, exit 2,
nothing executed): the old run is ``failed``, ``timed_out`` or ``cancelled``, of the
same runbook and environment, no ``-p``/``-f`` given (its recorded parameters are
used), the runbook's code unchanged since (``notebooks.code_sha256`` against the
row's ``code_sha256``; ``--allow-changed`` lets a changed one run), and it left a
snapshot of its kernel (``stackbook.run.snapshot``) or ``--from-cell N`` says where
to go on without one. ``start`` maps the stopped cell (an index in the old run's
stored notebook, error markers included) to the freshly injected notebook and
lists the cells to carry over: every code cell before it that completed, except
those tagged ``setup``, which run again after the snapshot is restored.

A manual step (a cell tagged ``manual``) ends a headless run ``waiting``;
``waiting`` reads that run back, and ``record_attestation`` writes who confirmed
the step into ``stackbook.attestations`` and the evidence chain, in the
transaction that reopens the row (``ledger.reopen_run``): a second attest of the
same step finds the row no longer waiting and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stackbook.core import notebooks
from stackbook.core.errors import UsageError
from stackbook.run import chain, ledger, runstore
from stackbook.run.record import RunRecord

RESUMABLE = ("failed", "timed_out", "cancelled")


@dataclass
class Start:
    """Where a resumed or continued run begins: cells before INDEX are not executed (but ``setup`` ones)."""

    index: int  # the notebook index of the first cell the loop executes
    restore: str | None = None  # the run whose snapshot is restored into the new kernel first
    fresh: bool = True  # a new notebook (resume) or a waiting run's own (attest)
    carried: list[tuple[int, dict, str]] = field(default_factory=list)  # (index, old cell, run it completed in)


@dataclass
class Plan:
    """A checked resume: the old run, its stored notebook, and where it goes on."""

    old: RunRecord
    stored: dict[str, Any]
    stopped: int  # the index in the stored notebook (markers included) where the new run goes on
    restore: bool  # whether the old run's snapshot is restored (else: setup cells only, ``--from-cell``)


def find_run(run_id: str) -> RunRecord:
    with ledger.session() as conn:
        rec = ledger.get_run(conn, run_id)
    if rec is None:
        raise UsageError(f"no run with id {run_id!r} in the ledger (see `stackbook runs`); nothing was executed")
    return rec


def read_stored(rec: RunRecord) -> dict[str, Any]:
    """RUN's executed notebook as stored; UsageError when it is gone (nothing to go on from)."""
    try:
        return runstore.read_notebook(rec.output or "", runstore.env_endpoint(rec.env))
    except (OSError, ValueError) as exc:
        raise UsageError(f"run {rec.id}: its executed notebook {rec.output} cannot be read ({exc}): it cannot be "
                         "continued; start a new run (nothing was executed)") from None


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "not recorded"


def _check(old: RunRecord, runbook: notebooks.Runbook, env: str, options: Any) -> None:
    if old.status == "waiting":
        raise UsageError(f"run {old.id} is waiting at a manual step: confirm it with `stackbook attest {old.id} "
                         "--by NAME`, or end it with `stackbook runs cancel` (nothing was executed)")
    if old.status not in RESUMABLE:
        raise UsageError(f"run {old.id} is {old.status}: only a failed, timed_out or cancelled run can be resumed "
                         "(nothing was executed)")
    if old.runbook != runbook.name:
        raise UsageError(f"run {old.id} is a run of {old.runbook!r}, not of {runbook.name!r}: resume it with "
                         f"`stackbook resume {old.id}` (nothing was executed)")
    if old.env != env:
        raise UsageError(f"run {old.id} ran in environment {old.env!r}, not {env!r}: a resumed run keeps its "
                         "environment; leave out -e (nothing was executed)")
    if options.cli_params or options.params_file:
        raise UsageError(f"a resumed run keeps the parameters of run {old.id} ({old.params}): leave out -p and -f "
                         "(nothing was executed)")
    now = notebooks.code_sha256(notebooks.read_json(runbook.path))
    if now != old.code_sha256 and not options.allow_changed:
        raise UsageError(f"the code of runbook {runbook.name!r} changed since run {old.id} (code sha256 "
                         f"{_short(old.code_sha256)} then, {_short(now)} now): resume with --allow-changed to run "
                         "the code as it is now from the stopped cell, or start a new run (nothing was executed)")


def _runbook_cells(stored: dict[str, Any]) -> dict[int, int]:
    """Stored index -> index among the runbook's cells (papermill's error markers left out)."""
    from stackbook.run.execution import is_marker

    out, n = {}, 0
    for i, cell in enumerate(stored.get("cells", [])):
        if not is_marker(cell):
            out[i], n = n, n + 1
    return out


def plan(runbook: notebooks.Runbook, env: str, options: Any) -> Plan:
    """The resume of run ``options.resume_from`` checked (UsageError, exit 2, for each reason it cannot be)."""
    old = find_run(options.resume_from)
    _check(old, runbook, env, options)
    stored = read_stored(old)
    cells = _runbook_cells(stored)
    if options.from_cell is not None:
        if options.from_cell not in cells:
            raise UsageError(f"--from-cell {options.from_cell}: run {old.id}'s notebook has no such cell (an index "
                             f"in its executed notebook, 0 to {len(stored.get('cells', [])) - 1}, not an error "
                             "marker; see `stackbook runs show`); nothing was executed")
        return Plan(old, stored, options.from_cell, restore=False)
    where = f"`stackbook runs show {old.id}` names the cell it stopped at"
    if not has_snapshot(old.id):
        raise UsageError(f"run {old.id} left no snapshot of its kernel (the kernel died, the runner was killed, or "
                         f"the snapshot expired): resume with --from-cell N to run the setup cells and go on at cell "
                         f"N of its executed notebook ({where}); nothing was executed")
    stopped = (old.error or {}).get("cell_index")
    if stopped not in cells:
        raise UsageError(f"run {old.id} stopped before any cell ran: resume with --from-cell N ({where}), or start "
                         "a new run (nothing was executed)")
    return Plan(old, stored, stopped, restore=True)


def snapshots():
    """``stackbook.run.snapshot`` (imported when first needed)."""
    from stackbook.run import snapshot

    return snapshot


def has_snapshot(run_id: str) -> bool:
    return snapshots().load_manifest(run_id) is not None


def _fresh_index(plan_: Plan, fresh_cells: list) -> list[int | None]:
    """For each runbook cell of the old stored notebook, its index in the fresh notebook (None: gone).
    By position when both have as many cells (the same code); else by cell id."""
    old = [c for c in plan_.stored.get("cells", []) if not _marker(c)]
    if len(old) == len(fresh_cells):
        return list(range(len(old)))
    ids = {c.get("id"): i for i, c in enumerate(fresh_cells) if c.get("id")}
    return [ids.get(c.get("id")) for c in old]


def _marker(cell) -> bool:
    from stackbook.run.execution import is_marker

    return is_marker(cell)


def start(plan_: Plan, nb) -> Start:
    """Where the fresh notebook NB goes on, and the old cells it carries (completed, not ``setup``)."""
    from stackbook.run.execution import COMPLETED, is_setup

    old_cells = [c for c in plan_.stored.get("cells", []) if not _marker(c)]
    mapping = _fresh_index(plan_, nb.cells)
    at = mapping[_runbook_cells(plan_.stored)[plan_.stopped]]
    if at is None:
        raise UsageError(f"cell {plan_.stopped} of run {plan_.old.id} is not in the runbook any more: resume with "
                         "--from-cell N naming a cell that is (nothing was executed)")
    carried = []
    for old, index in zip(old_cells, mapping):
        if index is None or index >= at or nb.cells[index].cell_type != "code" or is_setup(nb.cells[index]):
            continue
        if old.get("metadata", {}).get("papermill", {}).get("status") == COMPLETED:
            carried.append((index, old, plan_.old.id))
    return Start(index=at, restore=plan_.old.id if plan_.restore else None, carried=carried)


# ------------------------------------------------------------------ manual steps


def waiting(run_id: str) -> tuple[RunRecord, dict[str, Any]]:
    """The waiting run RUN_ID and its stored notebook; UsageError (exit 2) when it is not waiting."""
    rec = find_run(run_id)
    if rec.status != "waiting" or not rec.waiting:
        what = "Ctrl-C or kill its runner to end it" if rec.status == "running" else "nothing to confirm"
        raise UsageError(f"run {run_id} is {rec.status}, not waiting at a manual step ({what}); nothing was executed")
    return rec, read_stored(rec)


def record_attestation(conn, *, rec: RunRecord, by: str, note: str | None, identity: str,
                       out: dict[str, Any]) -> None:
    """Who confirmed RUN's manual step: a row of ``stackbook.attestations`` and its chain entry (inside the
    transaction that reopens the run). Under ``identity: database`` the attester is the session's role,
    verified (BY, when different, goes into the note); otherwise BY as declared. OUT receives the entry."""
    attestation_id = ledger.new_run_id()
    verified = identity == "database"
    who = by
    if verified:
        who = conn.execute("select session_user::text").fetchone()[0]
        if by != who:
            note = f"{note + ' ' if note else ''}(--by {by})"
    at = conn.execute(
        """insert into stackbook.attestations (id, run_id, cell_index, instruction, attested_by, attester_verified,
                                               note) values (%s, %s, %s, %s, %s, %s, %s) returning at""",
        (attestation_id, rec.id, rec.waiting["cell_index"], rec.waiting.get("instruction"), who, verified, note),
    ).fetchone()[0]
    entry = {"kind": "attestation", "id": attestation_id, "run_id": rec.id, "cell_index": rec.waiting["cell_index"],
             "instruction": rec.waiting.get("instruction"), "attested_by": who, "attester_verified": verified,
             "note": note, "at": at.isoformat()}
    chain.append(conn, "attestation", attestation_id, entry)
    out.update(entry)


def mark_attested(nb, index: int, attestation: dict[str, Any]) -> None:
    """The manual cell INDEX of NB done: who confirmed it and when, in its metadata."""
    from stackbook.run.execution import COMPLETED

    cell = nb.cells[index]
    cell.metadata.setdefault("papermill", {})["status"] = COMPLETED
    cell.metadata.setdefault("stackbook", {})["attestation"] = {
        k: attestation.get(k) for k in ("id", "attested_by", "attester_verified", "note", "at")}
