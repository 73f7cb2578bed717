"""Static SVG charts of the run history (matplotlib, Agg; no JavaScript needed to show them).

Output is deterministic for the same runs (fixed SVG id salt, no date in the
metadata), so an unchanged chart is not rewritten and does not trigger a rebuild.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

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


def duration_over_time(runs: list[dict[str, Any]], env: str) -> str:
    """Seconds each run took, by start time, one series per runbook; failures marked with a cross."""
    plt = _pyplot()
    runs = [r for r in runs if r.get("duration_s") is not None]
    if not runs:
        return _empty(plt, f"no finished runs in {env} yet")
    by_runbook: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_runbook[r["runbook"]].append(r)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for name in sorted(by_runbook):
        rows = by_runbook[name]
        line = ax.plot([r["started_at"] for r in rows], [r["duration_s"] for r in rows], marker="o", markersize=3,
                       linewidth=1, label=name)[0]
        bad = [r for r in rows if r["status"] != "succeeded"]
        if bad:
            ax.plot([r["started_at"] for r in bad], [r["duration_s"] for r in bad], linestyle="none", marker="x",
                    markersize=7, color=line.get_color())
    ax.set_ylabel("duration (s)")
    ax.set_title(f"Run duration in {env} (x: not succeeded)", loc="left")
    ax.grid(axis="y", alpha=0.3)
    fig.autofmt_xdate()
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def success_rate(runs: list[dict[str, Any]], env: str) -> str:
    """Share of finished runs that succeeded, per runbook, with the run count on each bar."""
    plt = _pyplot()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in runs:
        counts[r["runbook"]][1] += 1
        counts[r["runbook"]][0] += r["status"] == "succeeded"
    if not counts:
        return _empty(plt, f"no finished runs in {env} yet")
    names = sorted(counts)
    rates = [100 * counts[n][0] / counts[n][1] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.0))
    colours = [STATUS_COLOURS["succeeded"] if r >= 90 else "#f9a825" if r >= 50 else STATUS_COLOURS["failed"]
               for r in rates]
    bars = ax.barh(names, rates, color=colours)
    for bar, name in zip(bars, names):
        ok, total = counts[name]
        ax.text(min(bar.get_width() + 1, 101), bar.get_y() + bar.get_height() / 2, f"{ok}/{total}", va="center",
                fontsize=7)
    ax.set_xlim(0, 110)
    ax.invert_yaxis()
    ax.set_xlabel("succeeded (%)")
    ax.set_title(f"Success rate per runbook in {env}", loc="left")
    return _svg(fig)
