"""The book's evidence stays bounded as the ledger grows: charts per run while runs are few, per runbook and
day beyond `evidence.CHART_POINTS`; the rows read into Python do not grow with the ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stackbook.book import charts, evidence

RUNBOOKS = ["platform_check", "dr_drill"]


@pytest.fixture()
def scratch_env(db):
    """An environment name no one else uses; its rows are deleted afterwards."""
    from stackbook.run import ledger

    ledger.ensure_schema(db)
    env = f"t_bookscale_{uuid.uuid4().hex[:10]}"
    yield env
    db.execute("delete from stackbook.runs where env = %s", (env,))


def fill(db, env: str, n: int, days: int = 10) -> None:
    """``n`` finished runs, alternating between two runbooks, spread over ``days`` days; every 10th failed."""
    now = datetime.now(UTC)
    with db.cursor().copy("copy stackbook.runs (id, runbook, env, status, host, started_at, finished_at, "
                          "duration_s) from stdin") as copy:
        for i in range(n):
            started = now - timedelta(days=days) * (i + 0.5) / n
            duration = 1.0 + i % 7
            copy.write_row((f"{env}-{i:06d}", RUNBOOKS[i % 2], env, "failed" if i % 10 == 0 else "succeeded",
                            "test", started, started + timedelta(seconds=duration), duration))


def test_few_runs_are_drawn_one_by_one(db, scratch_env):
    fill(db, scratch_env, 40)
    led = evidence.read(db, scratch_env, RUNBOOKS)
    assert not led.chart.per_day and len(led.chart.points) == 40
    assert sum(p.runs for p in led.chart.points) == 40 and sum(p.succeeded for p in led.chart.points) == 36
    svg = charts.duration_over_time(led.chart, scratch_env)
    assert svg.lstrip().startswith("<?xml") and "not succeeded" in svg


def test_many_runs_are_summed_per_runbook_and_day_in_sql(db, scratch_env):
    n = 20_000
    fill(db, scratch_env, n, days=10)
    led = evidence.read(db, scratch_env, RUNBOOKS)
    chart = led.chart
    assert chart.per_day and len(chart.points) <= len(RUNBOOKS) * 11  # ten days, maybe cut into eleven
    assert sum(p.runs for p in chart.points) == n
    assert sum(p.succeeded for p in chart.points) == n - n // 10
    assert all(1.0 <= p.median_s <= p.max_s <= 7.0 for p in chart.points)
    # full rows: a bounded number per runbook, newest kept (the DR page lists the latest drills)
    assert len(led.chart_runs) == len(RUNBOOKS) * evidence.RECENT_PER_RUNBOOK
    assert {r["id"] for r in led.chart_runs if r["runbook"] == "platform_check"} == {
        f"{scratch_env}-{i:06d}" for i in range(0, 2 * evidence.RECENT_PER_RUNBOOK, 2)}
    # per runbook: its latest finished run and its latest success, whatever the ledger holds
    assert {r["id"] for r in led.runs_of("platform_check")} == {f"{scratch_env}-000000", f"{scratch_env}-000002"}
    assert [r["id"] for r in led.runs_of("dr_drill")] == [f"{scratch_env}-000001"]
    duration = charts.duration_over_time(chart, scratch_env)
    rate = charts.success_rate(chart, scratch_env)
    assert len(duration) < 300_000 and "median per runbook and day" in duration
    # per runbook, summed over the days (every failure is an even run: platform_check's)
    assert "8000/10000" in rate and "10000/10000" in rate and "18000/20000" not in rate
