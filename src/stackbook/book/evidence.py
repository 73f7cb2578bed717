"""Evidence from the run ledger: the runs the book shows and each runbook's freshness.

A runbook is, in one environment:

- ``fresh``: its latest finished run succeeded, within its freshness window;
- ``failing``: its latest finished run failed, timed out or was cancelled;
- ``stale``: no success within its freshness window (``freshness_hours``, else
  twice the interval of its cron ``schedule``; neither: never stale);
- ``never``: no run in this environment yet.

``skipped`` rows do not count either way. ``freshness`` is a pure function of
ledger rows and the time, so it is tested without waiting for time to pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

FINISHED_FAILED = ("failed", "timed_out", "cancelled", "upstream_failed")
STATES = ("fresh", "failing", "stale", "never")
HISTORY_LIMIT = 50  # rows on the run-history page
CHART_DAYS = 30  # window of the run-history charts

_COLUMNS = ("id", "runbook", "env", "status", "params", "results", "output", "started_at", "finished_at",
            "duration_s", "error", "reason", "pipeline_run_id", "attempt", "git_commit")


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def window_hours(metadata: dict[str, Any]) -> float | None:
    """Hours a success stays fresh: ``freshness_hours``, else twice the cron interval of ``schedule``."""
    if metadata.get("freshness_hours"):
        return float(metadata["freshness_hours"])
    schedule = metadata.get("schedule")
    if not schedule:
        return None
    try:
        from croniter import croniter

        it = croniter(schedule, datetime(2026, 1, 1, tzinfo=timezone.utc))
        first, second = it.get_next(datetime), it.get_next(datetime)
    except (ValueError, KeyError):
        return None
    return 2 * (second - first).total_seconds() / 3600


@dataclass
class Freshness:
    state: str  # one of STATES
    env: str
    window_hours: float | None
    latest: dict | None = None  # latest finished run (any final status but skipped)
    last_success: dict | None = None
    running: dict | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def label(self) -> str:
        return {"fresh": "fresh", "failing": "failing", "stale": "stale", "never": "never run"}[self.state]

    @property
    def shown_run(self) -> dict | None:
        """The run whose executed notebook the runbook's page shows: the latest finished one."""
        return self.latest


def freshness(metadata: dict[str, Any], runs: list[dict], env: str, now: datetime | None = None) -> Freshness:
    """Freshness of one runbook in ``env`` from its ledger rows (any order)."""
    now = now or datetime.now(timezone.utc)
    hours = window_hours(metadata)
    ordered = sorted((r for r in runs if r.get("env") == env), key=lambda r: (_parse_time(r["started_at"]), r["id"]),
                     reverse=True)
    running = next((r for r in ordered if r["status"] == "running"), None)
    finished = [r for r in ordered if r["status"] not in ("running", "skipped")]
    latest = finished[0] if finished else None
    success = next((r for r in finished if r["status"] == "succeeded"), None)
    result = Freshness(state="never", env=env, window_hours=hours, latest=latest, last_success=success,
                       running=running, checked_at=now)
    if latest is None:
        return result
    if latest["status"] in FINISHED_FAILED:
        result.state = "failing"
        return result
    when = _parse_time(success.get("finished_at") or success["started_at"]) if success else None
    if when is None or (hours is not None and now - when > timedelta(hours=hours)):
        result.state = "stale"
    else:
        result.state = "fresh"
    return result


def _record(row: dict) -> dict:
    rec = dict(row)
    for col in ("started_at", "finished_at"):
        if isinstance(rec.get(col), datetime):
            rec[col] = rec[col].astimezone(timezone.utc)
    for col in ("params", "results", "error"):
        if isinstance(rec.get(col), str):
            rec[col] = json.loads(rec[col])
    return rec


def _query(conn, sql: str, args: tuple | dict = ()) -> list[dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return [_record(r) for r in cur.fetchall()]


@dataclass
class Ledger:
    """What the book reads from the ledger for one environment, in three queries."""

    env: str
    per_runbook: dict[str, list[dict]]  # runbook -> its latest finished, latest success and running rows
    history: list[dict]  # recent runs, every environment, newest first
    chart_runs: list[dict]  # finished runs of this environment within CHART_DAYS, oldest first

    def runs_of(self, runbook: str) -> list[dict]:
        return self.per_runbook.get(runbook, [])

    def latest(self, runbook: str, status: str | None = None) -> dict | None:
        rows = [r for r in self.runs_of(runbook) if r["status"] not in ("running", "skipped")
                and (status is None or r["status"] == status)]
        return max(rows, key=lambda r: (r["started_at"], r["id"]), default=None)


def read(conn, env: str, runbooks: list[str], now: datetime | None = None) -> Ledger:
    """The rows the book needs; ``runbooks`` limits the per-runbook rows (history covers every runbook)."""
    from stackbook.run import ledger

    ledger.ensure_schema(conn)
    cols = ", ".join(_COLUMNS)
    now = now or datetime.now(timezone.utc)
    rows = _query(conn, f"""
        (select distinct on (runbook) {cols} from stackbook.runs
          where env = %(env)s and runbook = any(%(names)s) and status not in ('running', 'skipped')
          order by runbook, started_at desc, id desc)
        union
        (select distinct on (runbook) {cols} from stackbook.runs
          where env = %(env)s and runbook = any(%(names)s) and status = 'succeeded'
          order by runbook, started_at desc, id desc)
        union
        (select distinct on (runbook) {cols} from stackbook.runs
          where env = %(env)s and runbook = any(%(names)s) and status = 'running'
          order by runbook, started_at desc, id desc)""", {"env": env, "names": runbooks})
    per: dict[str, list[dict]] = {}
    for row in rows:
        per.setdefault(row["runbook"], []).append(row)
    history = _query(conn, f"select {cols} from stackbook.runs order by started_at desc, id desc limit %s",
                     (HISTORY_LIMIT,))
    charts = _query(conn, f"""select {cols} from stackbook.runs
                               where env = %s and status not in ('running', 'skipped')
                                 and started_at > %s order by started_at, id""",
                    (env, now - timedelta(days=CHART_DAYS)))
    return Ledger(env=env, per_runbook=per, history=history, chart_runs=charts)
