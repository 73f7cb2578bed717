"""Evidence from the run ledger: the runs the book shows and each runbook's freshness.

Each runbook's freshness (fresh, failing, stale, never) is decided by
:mod:`stackbook.core.freshness`, which ``stackbook check`` and the alerting rules share.

What the book reads is bounded whatever the size of the ledger: the latest rows
per runbook, ``HISTORY_LIMIT`` recent runs, and for the charts either each run
of the window (up to ``CHART_POINTS``) or, beyond that, PostgreSQL's summary per
runbook and day (runs, successes, median and maximum duration): 100,000 recent
runs once meant 100,000 rows in Python, a 13 MB chart and 340 MB of memory.

Each run the book shows carries who ran it and under which approval: its row's ``operator``,
``operator_verified``, ``kind`` (``interactive``: run by hand in ``stackbook lab``), ``resumed_from``,
``waiting`` ({cell_index, instruction} of the manual step a waiting run stopped at), and, attached by
``read`` in two more queries, ``approval`` (its ``stackbook.approvals`` row: who, when, for what) and
``attestations`` (who confirmed its manual steps). A ``waiting`` run has not finished: it is shown as in
progress, never as the latest result. ``read_chain`` gives the evidence pages the chain's state at build
time (``stackbook.run.evidence.verify``: the whole chain walked in SQL, the runs of the last
``CHAIN_ROW_DAYS`` compared with their entries, notebooks not re-hashed: ``stackbook verify`` does that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from stackbook.core.freshness import (  # noqa: F401 (moved to core: the notify package uses them too)
    FINISHED_FAILED,
    STATES,
    Freshness,
    _parse_time,
    freshness,
    window_hours,
)

HISTORY_LIMIT = 50  # rows on the run-history page
CHART_DAYS = 30  # window of the run-history charts
CHART_POINTS = 300  # up to this many runs in the window the charts show each run; beyond, one point per runbook-day
RECENT_PER_RUNBOOK = 20  # full rows of the latest finished runs of each runbook in the window (the DR page's list)
CHAIN_ROW_DAYS = 1  # the book compares the rows of runs finished this recently with their chain entries
CHAIN_PROBLEMS_SHOWN = 10  # the first problems of a broken chain named on the evidence page

_COLUMNS = ("id", "runbook", "env", "status", "params", "results", "output", "started_at", "finished_at",
            "duration_s", "error", "reason", "pipeline_run_id", "attempt", "git_commit", "operator",
            "operator_verified", "approval_id", "approved_by", "resumed_from", "kind", "waiting")
NOT_FINISHED = ("running", "waiting", "skipped")  # rows that are not a run's result (yet)


def _record(row: dict) -> dict:
    rec = dict(row)
    for col in ("started_at", "finished_at"):
        if isinstance(rec.get(col), datetime):
            rec[col] = rec[col].astimezone(UTC)
    for col in ("params", "results", "error", "waiting"):
        if isinstance(rec.get(col), str):
            rec[col] = json.loads(rec[col])
    return rec


def _query(conn, sql: str, args: tuple | dict = ()) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return [_record(r) for r in cur.fetchall()]


@dataclass(frozen=True)
class ChartPoint:
    """One point of the run-history charts: one run, or one runbook's runs of one day."""

    runbook: str
    at: datetime  # the run's start, or noon (UTC) of the day
    runs: int
    succeeded: int
    median_s: float | None  # the run's duration, or the day's median (None: no duration recorded)
    max_s: float | None


@dataclass(frozen=True)
class ChartData:
    points: list[ChartPoint]
    per_day: bool  # True: one point per runbook and day (more than CHART_POINTS runs in the window)


_CHART_WHERE = """from stackbook.runs where env = %(env)s and runbook = any(%(names)s)
                   and status not in ('running', 'waiting', 'skipped') and started_at > %(since)s"""
_CHART_DAYS_SQL = f"""
    select runbook, date_trunc('day', started_at at time zone 'UTC') at time zone 'UTC' + interval '12 hours' as at,
           count(*) as runs, count(*) filter (where status = 'succeeded') as succeeded,
           percentile_cont(0.5) within group (order by duration_s) as median_s, max(duration_s) as max_s
      {_CHART_WHERE} group by 1, 2 order by 2, 1"""
_CHART_RUNS_SQL = f"""
    select runbook, started_at as at, 1 as runs, (status = 'succeeded')::int as succeeded,
           duration_s as median_s, duration_s as max_s {_CHART_WHERE} order by started_at, id"""


def read_chart(conn, env: str, runbooks: list[str], since: datetime) -> ChartData:
    """The charts' points: every run since ``since`` when there are at most CHART_POINTS, else per runbook-day.

    The summary per runbook and day comes first (at most runbooks x CHART_DAYS rows, whatever the ledger holds);
    its counts say whether the runs themselves are few enough to fetch.
    """
    from psycopg.rows import dict_row

    args = {"env": env, "names": runbooks, "since": since}
    with conn.cursor(row_factory=dict_row) as cur:
        days = cur.execute(_CHART_DAYS_SQL, args).fetchall()
        per_day = sum(d["runs"] for d in days) > CHART_POINTS
        rows = days if per_day else cur.execute(_CHART_RUNS_SQL, args).fetchall()
    points = [ChartPoint(runbook=r["runbook"], at=r["at"].astimezone(UTC), runs=int(r["runs"]),
                         succeeded=int(r["succeeded"]), median_s=r["median_s"], max_s=r["max_s"]) for r in rows]
    return ChartData(points=points, per_day=per_day)


@dataclass
class Ledger:
    """What the book reads from the ledger for one environment, in three queries."""

    env: str
    per_runbook: dict[str, list[dict]]  # runbook -> its latest finished, latest success and running rows
    history: list[dict]  # recent runs, every environment, newest first
    chart_runs: list[dict]  # each runbook's RECENT_PER_RUNBOOK latest finished runs within CHART_DAYS, oldest first
    chart: ChartData = field(default_factory=lambda: ChartData([], False))  # what the charts draw
    chain: ChainState | None = None  # the evidence chain at build time (None: not read)

    def runs_of(self, runbook: str) -> list[dict]:
        return self.per_runbook.get(runbook, [])

    def latest(self, runbook: str, status: str | None = None) -> dict | None:
        rows = [r for r in self.runs_of(runbook) if r["status"] not in NOT_FINISHED
                and (status is None or r["status"] == status)]
        return max(rows, key=lambda r: (r["started_at"], r["id"]), default=None)


def _latest_sql(cols: str, condition: str) -> str:
    """The latest row of runbook ``n.name`` in ``%(env)s`` that meets ``condition`` (inside a lateral join)."""
    return f"""(select {cols} from stackbook.runs where env = %(env)s and runbook = n.name and {condition}
                 order by started_at desc, id desc limit 1)"""


def read(conn, env: str, runbooks: list[str], now: datetime | None = None) -> Ledger:
    """The rows the book needs; ``runbooks`` limits the per-runbook rows (history covers every runbook)."""
    from stackbook.run import ledger

    ledger.ensure_schema(conn)
    cols = ", ".join(_COLUMNS)
    now = now or datetime.now(UTC)
    # per runbook, three index lookups (runbook, env, started_at desc) rather than sorting every row of env
    rows = _query(conn, f"""
        select r.* from unnest(%(names)s::text[]) as n(name) cross join lateral (
            {_latest_sql(cols, "status not in ('running', 'waiting', 'skipped')")}
            union {_latest_sql(cols, "status = 'succeeded'")}
            union {_latest_sql(cols, "status in ('running', 'waiting')")}) r""", {"env": env, "names": runbooks})
    per: dict[str, list[dict]] = {}
    for row in rows:
        per.setdefault(row["runbook"], []).append(row)
    history = _query(conn, f"select {cols} from stackbook.runs order by started_at desc, id desc limit %s",
                     (HISTORY_LIMIT,))
    since = now - timedelta(days=CHART_DAYS)
    recent = _query(conn, f"""
        select r.* from unnest(%(names)s::text[]) as n(name) cross join lateral (
            select {cols} from stackbook.runs
             where env = %(env)s and runbook = n.name and status not in ('running', 'waiting', 'skipped')
               and started_at > %(since)s
             order by started_at desc, id desc limit %(limit)s) r
         order by r.started_at, r.id""", {"env": env, "names": runbooks, "since": since, "limit": RECENT_PER_RUNBOOK})
    attach_acts(conn, [*rows, *history, *recent])
    return Ledger(env=env, per_runbook=per, history=history, chart_runs=recent,
                  chart=read_chart(conn, env, runbooks, since), chain=read_chain(conn, env, now))


def attach_acts(conn, rows: list[dict]) -> None:
    """Each row's ``approval`` (its stackbook.approvals row, or None) and ``attestations`` (oldest first)."""
    approval_ids = sorted({r["approval_id"] for r in rows if r.get("approval_id")})
    approvals = {a["id"]: a for a in _query(
        conn, "select id, approved_by, approver_verified, reason, created_at, params_sha256, code_sha256 "
              "from stackbook.approvals where id = any(%s)", (approval_ids,))} if approval_ids else {}
    attested: dict[str, list[dict]] = {}
    for a in _query(conn, "select run_id, cell_index, instruction, attested_by, attester_verified, note, at "
                          "from stackbook.attestations where run_id = any(%s) order by at, id",
                    (sorted({r["id"] for r in rows}),)):
        attested.setdefault(a["run_id"], []).append(a)
    for row in rows:
        row["approval"] = approvals.get(row.get("approval_id"))
        row["attestations"] = attested.get(row["id"], [])


@dataclass(frozen=True)
class ChainState:
    """The evidence chain at build time: entries and head, how many runs were compared, the first problems."""

    entries: int
    head: str
    runs_checked: int
    problems: list[str]  # the first CHAIN_PROBLEMS_SHOWN
    problem_count: int
    row_days: int = CHAIN_ROW_DAYS

    @property
    def ok(self) -> bool:
        return not self.problem_count


# What identifies the chain's contents: its row versions (an UPDATE gives a row a newer xmin and a new ctid, a
# DELETE changes the count), 0.07 s at 100,000 entries beside 1.7 s to recompute their SHA-256s; a VACUUM FULL
# moves rows too, which only costs one walk more.
_SIGNATURE_SQL = """select count(*), concat_ws(':', max(seq), sum(xmin::text::bigint), sum(hashtext(ctid::text)))
                      from stackbook.chain"""
_WALK_CACHE: dict[str, tuple[int, str, list[str], int]] = {}
_FAR = datetime(9999, 1, 1, tzinfo=UTC)  # ``since`` that selects no run: verify walks the chain only


def _walk(conn) -> tuple[int, str, list[str], int]:
    """(entries, head, first problems, problem count) of the chain walked whole; kept while its contents are
    the same (in this process and under the state folder), so that a rebuild does not redo 100,000 hashes."""
    from stackbook.core import project
    from stackbook.core.files import atomic_write_text
    from stackbook.run import db
    from stackbook.run import evidence as run_evidence

    count, digest = conn.execute(_SIGNATURE_SQL).fetchone()
    key = f"{db.target_of(conn)} {count} {digest}"
    path = project.state_dir() / "book" / "chain_walk.json"
    if key not in _WALK_CACHE:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                _WALK_CACHE[key] = tuple(cached["walk"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if key not in _WALK_CACHE:
        report = run_evidence.verify(conn, since=_FAR, notebooks_too=False)
        _WALK_CACHE.clear()
        _WALK_CACHE[key] = (report.entries, report.head, [str(p) for p in report.problems[:CHAIN_PROBLEMS_SHOWN]],
                            len(report.problems))
        try:
            atomic_write_text(path, json.dumps({"key": key, "walk": _WALK_CACHE[key]}))
        except OSError:
            pass  # a read-only state folder: the next build walks again
    return _WALK_CACHE[key]


def read_chain(conn, env: str, now: datetime) -> ChainState | None:
    """The chain walked whole (every hash, link and seq, in SQL; cached while the chain is unchanged), the rows
    of ENV's runs finished in the last CHAIN_ROW_DAYS compared with their entries; None when there is no chain."""
    from stackbook.run import evidence as run_evidence

    if not conn.execute("select to_regclass('stackbook.chain') is not null").fetchone()[0]:
        return None
    entries, head, problems, count = _walk(conn)
    rows = run_evidence.verify(conn, since=now - timedelta(days=CHAIN_ROW_DAYS), env=env, notebooks_too=False,
                               chain_too=False)
    shown = (problems + [str(p) for p in rows.problems])[:CHAIN_PROBLEMS_SHOWN]
    return ChainState(entries=entries, head=head, runs_checked=rows.runs_checked, problems=shown,
                      problem_count=count + len(rows.problems))
