"""Evidence from the run ledger: the runs the book shows and each runbook's freshness.

Each runbook's freshness (fresh, failing, stale, never) is decided by
:mod:`stackbook.core.freshness`, which ``stackbook check`` and the alerting rules share.

What the book reads is bounded whatever the size of the ledger: the latest rows
per runbook, ``HISTORY_LIMIT`` recent runs, and for the charts either each run
of the window (up to ``CHART_POINTS``) or, beyond that, PostgreSQL's summary per
runbook and day (runs, successes, median and maximum duration): 100,000 recent
runs once meant 100,000 rows in Python, a 13 MB chart and 340 MB of memory.
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

_COLUMNS = ("id", "runbook", "env", "status", "params", "results", "output", "started_at", "finished_at",
            "duration_s", "error", "reason", "pipeline_run_id", "attempt", "git_commit")


def _record(row: dict) -> dict:
    rec = dict(row)
    for col in ("started_at", "finished_at"):
        if isinstance(rec.get(col), datetime):
            rec[col] = rec[col].astimezone(UTC)
    for col in ("params", "results", "error"):
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
                   and status not in ('running', 'skipped') and started_at > %(since)s"""
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

    def runs_of(self, runbook: str) -> list[dict]:
        return self.per_runbook.get(runbook, [])

    def latest(self, runbook: str, status: str | None = None) -> dict | None:
        rows = [r for r in self.runs_of(runbook) if r["status"] not in ("running", "skipped")
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
            {_latest_sql(cols, "status not in ('running', 'skipped')")}
            union {_latest_sql(cols, "status = 'succeeded'")}
            union {_latest_sql(cols, "status = 'running'")}) r""", {"env": env, "names": runbooks})
    per: dict[str, list[dict]] = {}
    for row in rows:
        per.setdefault(row["runbook"], []).append(row)
    history = _query(conn, f"select {cols} from stackbook.runs order by started_at desc, id desc limit %s",
                     (HISTORY_LIMIT,))
    since = now - timedelta(days=CHART_DAYS)
    recent = _query(conn, f"""
        select r.* from unnest(%(names)s::text[]) as n(name) cross join lateral (
            select {cols} from stackbook.runs
             where env = %(env)s and runbook = n.name and status not in ('running', 'skipped')
               and started_at > %(since)s
             order by started_at desc, id desc limit %(limit)s) r
         order by r.started_at, r.id""", {"env": env, "names": runbooks, "since": since, "limit": RECENT_PER_RUNBOOK})
    return Ledger(env=env, per_runbook=per, history=history, chart_runs=recent,
                  chart=read_chart(conn, env, runbooks, since))
