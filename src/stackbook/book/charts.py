"""Static SVG charts of the run history (matplotlib, Agg; no JavaScript needed to show them).

Output is deterministic for the same runs (fixed SVG id salt, no date in the
metadata), so an unchanged chart is not rewritten and does not trigger a rebuild.

They draw :class:`stackbook.book.evidence.ChartPoint` values: each run while the
window holds few (``evidence.CHART_POINTS``), else one point per runbook and day
(its median duration, its maximum as a small triangle), so a chart's size and
the time to draw it do not grow with the ledger.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stackbook.book.evidence import ChartData

STATUS_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "timed_out": "#ef6c00", "cancelled": "#757575",
                  "upstream_failed": "#8e24aa"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "stackbook", "svg.fonttype": "path", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "stackbook"})
    _pyplot().close(fig)
    return buf.getvalue()


def _empty(plt, text: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#555555")
    return _svg(fig)


def duration_over_time(chart: ChartData, env: str) -> str:
    """Seconds each run took (or each day's median), by start time, one series per runbook; failures crossed."""
    plt = _pyplot()
    points = [p for p in chart.points if p.median_s is not None]
    if not points:
        return _empty(plt, f"no finished runs in {env} yet")
    by_runbook: dict[str, list] = defaultdict(list)
    for p in points:
        by_runbook[p.runbook].append(p)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for name in sorted(by_runbook):
        rows = by_runbook[name]
        line = ax.plot([p.at for p in rows], [p.median_s for p in rows], marker="o", markersize=3, linewidth=1,
                       label=name)[0]
        if chart.per_day:
            ax.plot([p.at for p in rows], [p.max_s for p in rows], linestyle="none", marker="^", markersize=3,
                    alpha=0.5, color=line.get_color())
        bad = [p for p in rows if p.succeeded < p.runs]
        if bad:
            ax.plot([p.at for p in bad], [p.median_s for p in bad], linestyle="none", marker="x", markersize=7,
                    color=line.get_color())
    ax.set_ylabel("duration (s)")
    what = "median per runbook and day, ^: the day's longest; x: a run that did not succeed" if chart.per_day \
        else "x: not succeeded"
    ax.set_title(f"Run duration in {env} ({what})", loc="left")
    ax.grid(axis="y", alpha=0.3)
    fig.autofmt_xdate()
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def success_rate(chart: ChartData, env: str) -> str:
    """Share of finished runs that succeeded, per runbook, with the run count on each bar."""
    plt = _pyplot()
    runs: Counter[str] = Counter()
    succeeded: Counter[str] = Counter()
    for p in chart.points:
        runs[p.runbook] += p.runs
        succeeded[p.runbook] += p.succeeded
    if not runs:
        return _empty(plt, f"no finished runs in {env} yet")
    names = sorted(runs)
    rates = [100 * succeeded[n] / runs[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.0))
    colours = [STATUS_COLOURS["succeeded"] if r >= 90 else "#f9a825" if r >= 50 else STATUS_COLOURS["failed"]
               for r in rates]
    bars = ax.barh(names, rates, color=colours)
    for bar, name in zip(bars, names):
        ax.text(min(bar.get_width() + 1, 101), bar.get_y() + bar.get_height() / 2, f"{succeeded[name]}/{runs[name]}",
                va="center", fontsize=7)
    ax.set_xlim(0, 110)
    ax.invert_yaxis()
    ax.set_xlabel("succeeded (%)")
    ax.set_title(f"Success rate per runbook in {env}", loc="left")
    return _svg(fig)
