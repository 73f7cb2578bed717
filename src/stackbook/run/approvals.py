"""Approvals bound to what they approve: ``stackbook approve`` records one, ``stackbook run --approval ID``
consumes it.

An approval is a recorded act, not a flag. ``record`` writes one row of ``stackbook.approvals`` for one
runbook's code as it is now (``notebooks.code_sha256``), the exact effective parameters a run would get
(``engine.resolve``: -p over -f over the environment file over the defaults; their canonical JSON hashed
as a run's provenance hashes its parameters), one environment and its file's bytes, who gave it and until
when; and appends it to the evidence chain (``chain.append``, kind ``approval``, ``evidence.approval_entry``)
in the same transaction. ``used_by`` and ``used_at`` are not in the entry: they change once, when a run
consumes the approval (``ledger.consume_approval``, in the transaction that inserts the run's row, so two
runs can never both use one approval).

Which runs need one (``needed``): a destructive runbook (``metadata.stackbook.destructive``) run with
``dry_run`` False in an environment whose file requires approval (``environments.ApprovalPolicy``:
``approval: {approvers: [...], two_person: true}``, or the older ``require_approval: true``, which any
approver satisfies). ``check`` is what ``engine.prepare`` asks before a kernel starts: the approval must
exist and be for this runbook, this environment, this code, these parameters and this environment file, not
expired, not used, given by a listed approver and, with ``two_person``, not by the run's own operator. Each
mismatch is named in one ``ApprovalRefused`` (exit 3); nothing is executed and the ledger is unchanged.

Identity, as the environment file says (``identity``, as for a run's operator in ``stackbook.run.evidence``):
with ``identity: database`` the approver is the PostgreSQL role of the ``approve`` session, verified, and
the operator compared with it is the role of the run's session; otherwise the approver is ``--by NAME`` and
the operator ``evidence.declared_operator()``, both declared, not verified: two-person approval then rests
on people not lying about their names, and says so in ``approver_verified``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from stackbook.core import catalog, environments, notebooks
from stackbook.core.errors import ApprovalRefused, UsageError
from stackbook.run import chain, evidence, ledger, scrub

DEFAULT_EXPIRES = "24h"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(?:\d+[smhd])+")


@dataclass
class Approval:
    """One row of ``stackbook.approvals``."""

    id: str
    runbook: str
    env: str
    code_sha256: str
    params: dict[str, Any]
    params_sha256: str
    env_file_sha256: str | None
    approved_by: str
    approver_verified: bool
    reason: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    used_by: str | None = None
    used_at: datetime | None = None
    expired: bool = False  # by the database's clock when read (``get``), as consuming it is; not a column

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Approval:
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return {f.name: (v.isoformat() if isinstance(v := getattr(self, f.name), datetime) else v)
                for f in fields(self)}


def parse_duration(text: str, option: str = "--expires") -> timedelta:
    """``30m``, ``4h``, ``2d``, ``1h30m`` (and seconds, ``90s``) as a timedelta; UsageError (exit 2) otherwise."""
    value = (text or "").strip().lower()
    if not _DURATION_RE.fullmatch(value) or not any(int(n) for n in re.findall(r"\d+", value)):
        raise UsageError(f"{option} {notebooks.shown(text)} is not a duration: use a number and a unit, e.g. 30m, "
                         "4h or 2d (s, m, h, d; nothing was recorded)")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value)))


def needed(runbook: notebooks.Runbook, env: environments.Environment, values: dict[str, Any]) -> bool:
    """Whether a run of RUNBOOK in ENV with VALUES needs an approval: destructive, not a dry run, and ENV's
    file requires one."""
    return (bool(runbook.metadata.get("destructive")) and values.get("dry_run", False) is False
            and env.approval.required)


def canonical_params(values: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """VALUES as recorded (JSON) and their SHA-256: the canonical JSON a run's ``params_sha256`` covers."""
    text = chain.canonical_json(values)
    return json.loads(text), chain.sha256_text(text)


def new_id() -> str:
    return "apr-" + ledger.new_run_id()


def get(conn, approval_id: str) -> Approval | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select *, coalesce(expires_at <= now(), false) as expired from stackbook.approvals "
                    "where id = %s", (approval_id,))
        row = cur.fetchone()
    return Approval.from_row(row) if row else None


def _approver(conn, env: environments.Environment, by: str | None) -> tuple[str, bool]:
    """(who approves, verified): the session's role under ``identity: database``, else ``--by NAME``."""
    by = (by or "").strip() or None
    if env.identity == "database":
        role = conn.execute("select session_user::text").fetchone()[0]
        if by is not None and by != role:
            raise UsageError(f"--by {by!r} is not who approves: environment {env.name!r} has identity: database, so "
                             f"the approver is the database role of this session, {role!r}; leave out --by or "
                             f"connect as {by!r} (nothing was recorded)", env=env.name)
        return role, True
    if by is None:
        raise UsageError(f"who approves? give --by NAME: environment {env.name!r} knows approvers by the name they "
                         "declare (identity: database would take the database role; nothing was recorded)",
                         env=env.name)
    return by, False


def _refuse_unneeded(runbook: notebooks.Runbook, env: environments.Environment, values: dict[str, Any]) -> None:
    if needed(runbook, env, values):
        return
    if not runbook.metadata.get("destructive"):
        why = f"runbook {runbook.name!r} is not destructive"
    elif values.get("dry_run", False) is not False:
        why = "these parameters make a dry run (dry_run is not False)"
    else:
        why = f"environment {env.name!r} requires no approval (no approval: block in {env.path})"
    raise UsageError(f"{why}: such a run needs no approval, so none was recorded; approve the run you mean to "
                     "make, e.g. with -p dry_run=false", runbook=runbook.name, env=env.name)


def _refuse_secrets(runbook: notebooks.Runbook, env: environments.Environment, values: dict[str, Any]) -> None:
    """ParameterError (exit 2) when a value holds one of the runbook's secrets set here or the database password,
    as a run refuses it (``engine.check_no_secret_params``): an approval's parameters are recorded and shown."""
    from stackbook.run import engine

    names = [*runbook.metadata.get("secrets", []), *runbook.metadata.get("optional_secrets", [])]
    known = {**scrub.collect_optional(names, env.name, runbook.name), **engine._database_password()}
    engine.check_no_secret_params(values, known, runbook.name, env.name)


def record(conn, runbook: notebooks.Runbook, env: environments.Environment, values: dict[str, Any], *,
           by: str | None, reason: str | None = None, expires: str = DEFAULT_EXPIRES) -> Approval:
    """An approval of a run of RUNBOOK in ENV with VALUES (effective, checked, free of secrets), given by BY
    (or the session's role), recorded and appended to the chain in one transaction; returns it."""
    from psycopg.rows import dict_row

    _refuse_unneeded(runbook, env, values)
    _refuse_secrets(runbook, env, values)
    lifetime = parse_duration(expires)
    approver, verified = _approver(conn, env, by)
    policy = env.approval
    if policy.approvers and approver not in policy.approvers:
        raise ApprovalRefused(f"{approver!r} is not among the approvers of environment {env.name!r} "
                              f"({', '.join(policy.approvers)}; {env.path}): nothing was recorded",
                              runbook=runbook.name, env=env.name)
    params, digest = canonical_params(values)
    approval_id = new_id()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """insert into stackbook.approvals (id, runbook, env, code_sha256, params, params_sha256,
                                                env_file_sha256, approved_by, approver_verified, reason, expires_at)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s)) returning *""",
            (approval_id, runbook.name, env.name, notebooks.code_sha256(notebooks.read_json(runbook.path)),
             json.dumps(params), digest, evidence.file_sha256(env.path), approver, verified, reason,
             lifetime.total_seconds()))
        row = cur.fetchone()
        chain.append(conn, "approval", approval_id, evidence.approval_entry(row))
    return Approval.from_row(row)


def _changed(approved: dict[str, Any], now: dict[str, Any]) -> str:
    """``target ('a' approved, 'b' now), ...``: each parameter whose value differs, named."""
    missing = "(none)"
    keys = sorted(k for k in {*approved, *now} if approved.get(k, missing) != now.get(k, missing))
    return ", ".join(f"{k} ({notebooks.shown(approved.get(k, missing))} approved, "
                     f"{notebooks.shown(now.get(k, missing))} now)" for k in keys) or "their encoding"


def mismatches(found: Approval, runbook: notebooks.Runbook, env: environments.Environment,
               values: dict[str, Any], operator: str) -> list[str]:
    """What does not hold between approval FOUND and a run of RUNBOOK in ENV with VALUES by OPERATOR."""
    out = []
    if found.runbook != runbook.name:
        out.append(f"it was given for runbook {found.runbook!r}, not {runbook.name!r}")
    if found.env != env.name:
        out.append(f"it was given for environment {found.env!r}, not {env.name!r}")
    code = notebooks.code_sha256(notebooks.read_json(runbook.path))
    if found.code_sha256 != code:
        out.append(f"it was given for other code: runbook {runbook.name!r} changed since (code sha256 "
                   f"{found.code_sha256[:12]}... approved, {code[:12]}... now)")
    params, digest = canonical_params(values)
    if found.params_sha256 != digest:
        out.append(f"it was given for other parameters: this run's differ in {_changed(found.params, params)}")
    if found.env == env.name and found.env_file_sha256 != evidence.file_sha256(env.path):
        out.append(f"the environment file {env.path} changed since it was given")
    if found.expired:
        out.append(f"it expired at {found.expires_at.isoformat(timespec='seconds')}")
    if found.used_by:
        out.append(f"it was already used by run {found.used_by}")
    policy = env.approval
    if policy.approvers and found.approved_by not in policy.approvers:
        out.append(f"it was given by {found.approved_by!r}, who is not among the approvers of environment "
                   f"{env.name!r} ({', '.join(policy.approvers)})")
    if policy.two_person and found.approved_by == operator:
        out.append(f"it was given by {found.approved_by!r}, the operator of this run: environment {env.name!r} "
                   "needs two persons (an approver other than the operator)")
    return out


def operator(conn, env: environments.Environment) -> str:
    """Who the run's operator will be, as ``evidence.provenance`` records it."""
    if env.identity == "database":
        return conn.execute("select session_user::text").fetchone()[0]
    return evidence.declared_operator()


def shown_name(runbook: notebooks.Runbook) -> str:
    """How a command names RUNBOOK: its name for a runbook of the catalogue, else its path."""
    return runbook.name if catalog.is_runbook_path(runbook.path) else str(runbook.path)


def how_to_approve(runbook: notebooks.Runbook, env: environments.Environment, cli_params: list[str],
                   params_file: str | None) -> str:
    """The ``stackbook approve`` command line for the same runbook, environment and parameters."""
    import shlex

    args = ["stackbook", "approve", shown_name(runbook), "-e", env.name]
    for value in cli_params:
        args += ["-p", value]
    if params_file:
        args += ["-f", params_file]
    if env.identity != "database":
        args += ["--by", "NAME"]
    return shlex.join(args)


def check(conn, runbook: notebooks.Runbook, env: environments.Environment, values: dict[str, Any],
          approval_id: str | None, how: str) -> Approval:
    """The approval APPROVAL_ID a run of RUNBOOK in ENV with VALUES needs (``needed``), found and matching;
    ``ApprovalRefused`` (exit 3) naming each mismatch otherwise. HOW: the command that records one."""
    policy = env.approval
    who = (f"one of {', '.join(policy.approvers)}" if policy.approvers else "an approver")
    who += ", not you," if policy.two_person else ""
    if not approval_id:
        raise ApprovalRefused(
            f"runbook {runbook.name!r} is destructive and dry_run is False in environment {env.name!r}, which "
            f"requires an approval: ask {who} to record one with `{how}` and run again with --approval ID "
            "(nothing was executed)", runbook=runbook.name, env=env.name)
    found = get(conn, approval_id)
    if found is None:
        raise ApprovalRefused(f"no approval {approval_id!r} in the ledger: ask {who} to record one with `{how}` "
                              "(nothing was executed)", runbook=runbook.name, env=env.name)
    problems = mismatches(found, runbook, env, values, operator(conn, env))
    if problems:
        raise ApprovalRefused(f"approval {approval_id} does not approve this run: {'; '.join(problems)}. Ask {who} "
                              f"to approve this run with `{how}` (nothing was executed)",
                              runbook=runbook.name, env=env.name)
    return found
