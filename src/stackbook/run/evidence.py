"""Evidence an auditor can trust: who ran what (``provenance``) and whether the record still holds (``verify``).

``provenance`` is what a run records before it starts, beside its parameters:
the operator, and the SHA-256 of the runbook's code (``notebooks.code_sha256``),
of its effective parameters (canonical JSON), of the environment file, and
whether the git working tree was dirty. The operator is known as the environment
file says: ``identity: database`` takes the PostgreSQL role of the run's session
(the database authenticated it: ``operator_verified``); otherwise it is declared,
not verified: the Airflow DAG run (``airflow:<dag_run_id>``), the Kubernetes
service account of the pod (``k8s:<namespace>:<name>``), ``$STACKBOOK_OPERATOR``,
or the OS user, in that order.

``verify`` recomputes the chain (``stackbook.run.chain``) from its first entry, in
one SQL statement (a ledger of 100,000 entries is not shipped to Python): every
entry's hash, its link to the one before, the sequence without gaps; it
compares each run's row with its latest chain entry (a field edited with SQL), and each
approval's row (``stackbook.run.approvals``) with its entry,
checks a chain head published earlier (``--head``) is still in the chain, and
re-hashes every executed notebook in the run store (local or remote) against
the hash its run recorded. ``Report.problems`` names each broken entry.
"""

from __future__ import annotations

import base64
import functools
import getpass
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from stackbook.core import environments, notebooks, project
from stackbook.core.errors import UsageError
from stackbook.run import chain, runstore
from stackbook.run.record import Provenance

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_ACCOUNT_ENV = "STACKBOOK_SERVICE_ACCOUNT"  # set by a manifest when the token is not mounted
OPERATOR_ENV = "STACKBOOK_OPERATOR"
_git_dirty: bool | None | str = "unknown"  # asked once per process


def git_dirty() -> bool | None:
    """Whether the project's git working tree has uncommitted changes to tracked files; None outside git."""
    global _git_dirty
    if _git_dirty == "unknown":
        try:
            out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project.root(),
                                 capture_output=True, text=True, timeout=10)
            _git_dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _git_dirty = None
    return _git_dirty


def _service_account() -> str | None:
    """``namespace:name`` of this pod's service account: from the mounted token's subject, else the variable."""
    named = os.environ.get(SERVICE_ACCOUNT_ENV)
    try:
        namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        payload = (SERVICE_ACCOUNT_DIR / "token").read_text().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        subject = claims.get("sub", "")  # system:serviceaccount:<namespace>:<name>
        if subject.startswith("system:serviceaccount:"):
            return subject.removeprefix("system:serviceaccount:")
    except (OSError, IndexError, ValueError, AttributeError):
        namespace = os.environ.get("POD_NAMESPACE", "")
    return f"{namespace}:{named}" if named else None


def declared_operator() -> str:
    """Who runs this process as it declares itself: the scheduler, ``$STACKBOOK_OPERATOR``, else the OS user."""
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if dag_run:
        return f"airflow:{dag_run}"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        account = _service_account()
        if account:
            return f"k8s:{account}"
    if os.environ.get(OPERATOR_ENV, "").strip():
        return os.environ[OPERATOR_ENV].strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        return f"uid:{os.getuid()}"


def file_sha256(path: Path | str | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance(runbook: notebooks.Runbook, env: environments.Environment, params: dict[str, Any]) -> Provenance:
    """The evidence of a run of RUNBOOK in ENV with PARAMS (as recorded, scrubbed) known before it starts."""
    verified = env.identity == "database"
    return Provenance(
        operator=None if verified else declared_operator(),  # None: the session's role, filled in by the row
        operator_verified=verified,
        code_sha256=notebooks.code_sha256(notebooks.read_json(runbook.path)),
        params_sha256=chain.sha256_text(chain.canonical_json(params)),
        env_file_sha256=file_sha256(env.path),
        git_dirty=git_dirty(),
    )


#: the columns of an approval its chain entry holds (``used_by`` and ``used_at`` change once, when a run uses it)
APPROVAL_FIELDS = ("id", "runbook", "env", "code_sha256", "params", "params_sha256", "env_file_sha256",
                   "approved_by", "approver_verified", "reason", "created_at", "expires_at")


def approval_entry(row: dict[str, Any]) -> dict[str, Any]:
    """The chain entry of an approval (``stackbook.run.approvals``) from its row, times in UTC."""
    return {"kind": "approval", **{name: chain._json_value(row.get(name)) for name in APPROVAL_FIELDS}}


@dataclass
class Problem:
    """One thing that does not hold: the entry (its seq) or run it is about, and what is wrong."""

    what: str
    seq: int | None = None
    ref: str | None = None

    def __str__(self) -> str:
        where = f"entry {self.seq}" if self.seq is not None else "chain"
        return f"{where}{f' (run {self.ref})' if self.ref else ''}: {self.what}"

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ref": self.ref, "problem": self.what}


@dataclass
class Report:
    """What ``verify`` found: the chain's length and head, how much it checked, and every problem."""

    entries: int = 0
    head: str = chain.GENESIS
    runs_checked: int = 0
    notebooks_checked: int = 0
    notebook_seconds: float = 0.0
    published_head: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        rate = self.notebooks_checked / self.notebook_seconds if self.notebook_seconds else None
        return {"ok": self.ok, "entries": self.entries, "head": self.head, "published_head": self.published_head,
                "runs_checked": self.runs_checked, "notebooks_checked": self.notebooks_checked,
                "notebooks_per_s": round(rate, 1) if rate else None,
                "problems": [p.to_json() for p in self.problems]}


@dataclass
class _Walk:
    """One verify: its report, the window of runs it checks, and the latest entry of each of those runs."""

    report: Report
    since: datetime | None
    env: str | None
    runs: list[tuple] = field(default_factory=list)  # (seq, run id, env, output, notebook_sha256)


# The chain recomputed in the database: each entry's hash from its body, the body against the jsonb entry, the
# link to the entry before and the sequence; only the entries where something does not hold come back.
_WALK_SQL = """
select seq, ref, prev_seq, body is null as no_body, hash_ok and body_ok and ref_ok as intact,
       prev_hash = coalesce(prev_row_hash, %(genesis)s) as links
  from (select seq, kind, ref, body, prev_hash, lag(seq) over w as prev_seq, lag(hash) over w as prev_row_hash,
               coalesce(encode(sha256(convert_to(prev_hash || body, 'UTF8')), 'hex') = hash, false) as hash_ok,
               coalesce(body::jsonb = entry, false) as body_ok,
               coalesce(entry->>'kind' = kind and (kind not in ('run', 'approval') or entry->>'id' = ref),
                        false) as ref_ok
          from stackbook.chain window w as (order by seq)) walk
 where not (hash_ok and body_ok and ref_ok) or seq <> coalesce(prev_seq, 0) + 1
    or prev_hash <> coalesce(prev_row_hash, %(genesis)s)
 order by seq
"""


def _walk_chain(conn, walk: _Walk) -> None:
    problems = walk.report.problems
    for seq, ref, prev_seq, no_body, intact, links in conn.execute(_WALK_SQL, {"genesis": chain.GENESIS}):
        before = prev_seq or 0
        if seq != before + 1:
            gone = f"{before + 1}" if seq == before + 2 else f"{before + 1} to {seq - 1}"
            problems.append(Problem(f"entry {gone} missing (deleted) between entry {before} and entry {seq}",
                                    seq=seq, ref=ref))
        if not links:
            problems.append(Problem("does not link to the entry before it (its prev_hash is not that entry's hash)",
                                    seq=seq, ref=ref))
        if no_body:
            problems.append(Problem("has no canonical body to hash (written by an earlier stackbook)",
                                    seq=seq, ref=ref))
        elif not intact:
            problems.append(Problem("its hash does not match its contents: the entry was edited", seq=seq, ref=ref))
    count, last = conn.execute("select count(*), (select hash from stackbook.chain order by seq desc limit 1) "
                               "from stackbook.chain").fetchone()
    walk.report.entries, walk.report.head = count, last or chain.GENESIS
    published = walk.report.published_head
    if published and not conn.execute("select exists (select 1 from stackbook.chain where hash = %s)",
                                      (published,)).fetchone()[0]:
        problems.append(Problem(
            f"the published head {published[:12]}... is not in the chain ({count} entries, head "
            f"{walk.report.head[:12]}...): entries after it were deleted, or the chain was rewritten"))


_LATEST_SQL = """
select distinct on (ref) seq, ref, entry->>'env', entry->>'output', entry->>'notebook_sha256'
  from stackbook.chain
 where kind = 'run' and (%(since)s::timestamptz is null or at >= %(since)s::timestamptz)
   and (%(env)s::text is null or entry->>'env' = %(env)s::text)
 order by ref, seq desc
"""


_TIMES = ("started_at", "finished_at")
_JSONB = ("params", "results")
_LATER_JSONB = ("waiting", "cells")


def _same_as_entry_sql() -> str:
    """A predicate: row ``r`` equals chain entry ``c.entry`` (compared in the database: a large ledger is not
    shipped to Python; a row it flags is compared field by field in Python, which names the field)."""
    terms = []
    for name in chain.RUN_FIELDS:
        if name in _TIMES:
            terms.append(f"(c.entry->>'{name}')::timestamptz is not distinct from r.{name}")
        elif name in _JSONB:
            terms.append(f"c.entry->'{name}' = r.{name}")
        elif name == "error":
            terms.append("c.entry->'error' = case when r.error is null or r.error = 'null'::jsonb then 'null'::jsonb "
                         "else jsonb_build_object('cell_index', r.error->'cell_index', 'ename', r.error->'ename', "
                         "'evalue', r.error->'evalue') end")
        else:
            terms.append(f"(c.entry->>'{name}') is not distinct from r.{name}::text")
    for column, key in chain.LATER_FIELDS.items():  # entries older than a column do not hold it
        if column in _LATER_JSONB:
            same = f"c.entry->'{key}' = coalesce(r.{column}, 'null'::jsonb)"
        else:
            same = f"(c.entry->>'{key}') is not distinct from r.{column}::text"
        terms.append(f"(not (c.entry ? '{key}') or {same})")
    return " and ".join(terms)


def _suspects(conn, walk: _Walk) -> list[tuple]:
    """(seq, run id, entry) of the runs whose row is gone or may differ from their latest entry."""
    sql = (f"with latest as ({_LATEST_SQL}) select c.seq, c.ref, c.entry from latest l "
           "join stackbook.chain c on c.seq = l.seq left join stackbook.runs r on r.id = c.ref "
           f"where r.id is null or not coalesce(({_same_as_entry_sql()}), false) order by c.seq")
    return conn.execute(sql, {"since": walk.since, "env": walk.env}).fetchall()


def _compare_rows(conn, walk: _Walk) -> None:
    """Each run's row now against its latest chain entry: a field edited, or the row gone."""
    from psycopg.rows import dict_row

    suspects = _suspects(conn, walk)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"select {', '.join(chain.ROW_COLUMNS)} from stackbook.runs where id = any(%s)",
                    ([ref for _, ref, _ in suspects],))
        rows = {r["id"]: r for r in cur.fetchall()}
    for seq, run_id, entry in suspects:
        row = rows.get(run_id)
        if row is None:
            walk.report.problems.append(Problem("its run's row is gone from stackbook.runs", seq=seq, ref=run_id))
            continue
        now = chain.run_entry(row)
        for key in [k for k in chain.compared_keys(entry) if now.get(k) != entry.get(k)]:
            walk.report.problems.append(Problem(
                f"field {key} edited: the ledger row says {notebooks.shown(now.get(key))}, the chain "
                f"{notebooks.shown(entry.get(key))}", seq=seq, ref=run_id))
    walk.runs = conn.execute(_LATEST_SQL, {"since": walk.since, "env": walk.env}).fetchall()
    walk.report.runs_checked = len(walk.runs)


def _unchained_rows(conn, walk: _Walk) -> None:
    """Finished rows since the chain began that no entry holds (a row inserted with SQL)."""
    rows = conn.execute(
        "select id from stackbook.runs r where status <> 'running' and finished_at >= (select min(at) from "
        "stackbook.chain) and (%(since)s::timestamptz is null or finished_at >= %(since)s::timestamptz) "
        "and (%(env)s::text is null or env = %(env)s::text) "
        "and not exists (select 1 from stackbook.chain c where c.ref = r.id) order by finished_at",
        {"since": walk.since, "env": walk.env}).fetchall()
    for (run_id,) in rows:
        walk.report.problems.append(Problem("a finished run that is not in the chain (its row was written "
                                            "outside stackbook)", ref=run_id))


_APPROVALS_SQL = """
select distinct on (c.ref) c.seq, c.ref, c.entry from stackbook.chain c
 where c.kind = 'approval' and (%(since)s::timestamptz is null or c.at >= %(since)s::timestamptz)
   and (%(env)s::text is null or c.entry->>'env' = %(env)s::text)
 order by c.ref, c.seq desc
"""


def _compare_approvals(conn, walk: _Walk) -> None:
    """Each approval's row against its chain entry (a field edited with SQL, the row gone), and approvals that
    no entry holds (a row inserted with SQL)."""
    from psycopg.rows import dict_row

    entries = conn.execute(_APPROVALS_SQL, {"since": walk.since, "env": walk.env}).fetchall()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from stackbook.approvals where id = any(%s)", ([ref for _, ref, _ in entries],))
        rows = {r["id"]: r for r in cur.fetchall()}
    for seq, ref, entry in entries:
        if ref not in rows:
            walk.report.problems.append(Problem(f"approval {ref}'s row is gone from stackbook.approvals", seq=seq))
            continue
        now = approval_entry(rows[ref])
        for key in [k for k in APPROVAL_FIELDS if now.get(k) != entry.get(k)]:
            walk.report.problems.append(Problem(
                f"approval {ref}: field {key} edited: the approvals row says {notebooks.shown(now.get(key))}, the "
                f"chain {notebooks.shown(entry.get(key))}", seq=seq))
    loose = conn.execute(
        "select id from stackbook.approvals a where (%(since)s::timestamptz is null or created_at >= "
        "%(since)s::timestamptz) and (%(env)s::text is null or env = %(env)s::text) and not exists "
        "(select 1 from stackbook.chain c where c.kind = 'approval' and c.ref = a.id) order by created_at",
        {"since": walk.since, "env": walk.env}).fetchall()
    for (approval_id,) in loose:
        walk.report.problems.append(Problem(f"approval {approval_id} is not in the chain (its row was written "
                                            "outside stackbook)"))


@functools.lru_cache(maxsize=64)
def _endpoint(env: str | None) -> str | None:
    """ENV's ``s3_endpoint``, its file read once per verify however many notebooks it has."""
    return runstore.env_endpoint(env)


def read_notebook_bytes(location: str, env: str | None = None) -> bytes | None:
    """The bytes of an executed notebook in the run store (an s3:// one at ENV's ``s3_endpoint``); None when gone."""
    try:
        return runstore.read_bytes(location, _endpoint(env) if location.startswith("s3://") else None)
    except FileNotFoundError:
        return None


def _check_notebooks(walk: _Walk) -> None:
    """Every executed notebook of the runs checked, re-hashed from the run store."""
    import time

    t0, count = time.perf_counter(), 0
    _endpoint.cache_clear()  # an environment file edited since the last verify of this process
    for seq, run_id, env, location, expected in walk.runs:
        if not expected or not location:
            continue
        count += 1
        try:
            data = read_notebook_bytes(location, env)
        except UsageError as exc:  # a store that refuses or cannot be reached: this notebook is not verified
            walk.report.problems.append(Problem(f"executed notebook cannot be checked: {exc}", seq=seq, ref=run_id))
            continue
        if data is None:
            walk.report.problems.append(Problem(f"executed notebook {location} is gone", seq=seq, ref=run_id))
        elif hashlib.sha256(data).hexdigest() != expected:
            walk.report.problems.append(Problem(
                f"executed notebook {location} changed (sha256 {hashlib.sha256(data).hexdigest()[:12]}..., "
                f"recorded {expected[:12]}...)", seq=seq, ref=run_id))
    walk.report.notebooks_checked, walk.report.notebook_seconds = count, time.perf_counter() - t0


def verify(conn, *, since: datetime | None = None, published_head: str | None = None,
           notebooks_too: bool = True, env: str | None = None, chain_too: bool = True) -> Report:
    """The chain recomputed from its first entry, each run (finished since SINCE; of ENV only when given)
    compared with its entry and its executed notebook re-hashed, PUBLISHED_HEAD looked for. ``chain_too``
    False skips the walk (the book caches it while the chain is unchanged): only its length and head are read."""
    if published_head is not None and not chain.HASH_RE.fullmatch(published_head):
        raise UsageError(f"--head {notebooks.shown(published_head)} is not a chain hash (64 hex digits, as "
                         "`stackbook verify` prints it)")
    walk = _Walk(report=Report(published_head=published_head), since=since, env=env)
    if chain_too:
        _walk_chain(conn, walk)
    else:
        walk.report.entries, walk.report.head = chain.head(conn)
    _compare_rows(conn, walk)
    _unchained_rows(conn, walk)
    _compare_approvals(conn, walk)
    if notebooks_too:
        _check_notebooks(walk)
    return walk.report
