"""Freshness of a runbook in one environment: a pure function of its ledger rows and the time.

A runbook is, in one environment:

- ``fresh``: its latest finished run succeeded, within its freshness window;
- ``failing``: its latest finished run failed, timed out or was cancelled;
- ``stale``: no success within its freshness window (``freshness_hours``, else
  twice the interval of its cron ``schedule``; neither: never stale);
- ``never``: no run in this environment yet.

``skipped`` and ``refused`` rows (runs that never started) do not count either way; a ``waiting`` run (stopped
at a manual step until someone attests it) has not finished: it is in progress, as a ``running`` one, and
neither fresh success nor failure. An interactive run (``kind = 'interactive'``) that succeeded counts as any
success does. It lives in core because the book
(its badges), ``stackbook check`` and the alerting rules (``stackbook.notify``)
must agree on it, and the notify package sits below the book.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

FINISHED_FAILED = ("failed", "timed_out", "cancelled", "upstream_failed")
STATES = ("fresh", "failing", "stale", "never")


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

        it = croniter(schedule, datetime(2026, 1, 1, tzinfo=UTC))
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
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def label(self) -> str:
        return {"fresh": "fresh", "failing": "failing", "stale": "stale", "never": "never run"}[self.state]

    @property
    def shown_run(self) -> dict | None:
        """The run whose executed notebook the runbook's page shows: the latest finished one."""
        return self.latest


def freshness(metadata: dict[str, Any], runs: list[dict], env: str, now: datetime | None = None) -> Freshness:
    """Freshness of one runbook in ``env`` from its ledger rows (any order)."""
    now = now or datetime.now(UTC)
    hours = window_hours(metadata)
    ordered = sorted((r for r in runs if r.get("env") == env), key=lambda r: (_parse_time(r["started_at"]), r["id"]),
                     reverse=True)
    running = next((r for r in ordered if r["status"] in ("running", "waiting")), None)
    finished = [r for r in ordered if r["status"] not in ("running", "waiting", "skipped", "refused")]
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
