"""The model-drift page: ``check_model_drift``'s figures over time, from the ledger.

Each drift run records the population stability index of every feature (``psi``), the
thresholds, the drifted features and the realised error of earlier predictions
(``realised_error``). The page draws the PSI of each feature across the recent runs against
the threshold, and the realised MAE of each scoring date against the model's test MAE; below,
the latest run's figures and the recent runs. Charts are static SVG (``charts``), redrawn only
when the runs they show changed.
"""

from __future__ import annotations

import functools
from operator import itemgetter
from typing import Any

from stackbook.book import charts, pages

RUNBOOK = "check_model_drift"
PAGE = "reports/drift"
PSI_CHART = "reports/_charts/drift_psi.svg"
ERROR_CHART = "reports/_charts/drift_error.svg"


def drift_runs(ledger) -> list[dict]:
    """The recent finished drift runs that recorded PSI values, oldest first."""
    return [r for r in ledger.chart_runs if r["runbook"] == RUNBOOK and (r.get("results") or {}).get("psi")]


def psi_over_time(runs: list[dict[str, Any]], env: str) -> str:
    """PSI of each feature per run, with the threshold of the latest run dashed."""
    plt = charts._pyplot()
    if not runs:
        return charts._empty(plt, f"no drift check in {env} yet")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    features = sorted({f for r in runs for f in r["results"]["psi"]})
    for feature in features:
        points = [(r["started_at"], r["results"]["psi"][feature]) for r in runs if feature in r["results"]["psi"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1, label=feature)
    threshold = runs[-1]["results"].get("psi_threshold")
    if threshold is not None:
        ax.axhline(threshold, color="#c62828", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylabel("PSI (training -> newest)")
    ax.set_title(f"Feature drift of the champion in {env}", loc="left")
    ax.grid(axis="y", alpha=0.3)
    fig.autofmt_xdate()
    ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return charts._svg(fig)


def realised_over_time(runs: list[dict[str, Any]], env: str) -> str:
    """Realised MAE per scoring date (from the latest run that has any) against the model's test MAE."""
    plt = charts._pyplot()
    latest = next((r for r in reversed(runs) if r["results"].get("realised_error")), None)
    if latest is None:
        return charts._empty(plt, "no predictions whose horizon has passed yet")
    rows = sorted(latest["results"]["realised_error"], key=itemgetter("scoring_date"))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    dates = [e["scoring_date"] for e in rows]
    ax.plot(dates, [e["mae"] for e in rows], marker="o", linewidth=1, label="realised MAE")
    tests = [e.get("test_mae") for e in rows]
    if any(t is not None for t in tests):
        ax.plot(dates, tests, linestyle="--", linewidth=1, color="#555555", label="test MAE of the version")
    ax.set_ylabel("MAE ($)")
    ax.set_title(f"Realised error of the predictions by scoring date in {env}", loc="left")
    ax.legend(fontsize=7, frameon=False)
    fig.autofmt_xdate()
    return charts._svg(fig)


def page(env: str, runs: list[dict], link: pages.RunLink, doc: str | None) -> str:
    """The page's MyST text."""
    title = "Model drift"
    if not runs:
        return pages._no_run(title, RUNBOOK, env, doc is not None)
    latest = runs[-1]
    res = latest["results"]
    drifted = res.get("drifted_features") or []
    lines = [f"# {title}", ""] + pages._run_header(latest, link, doc, RUNBOOK)
    said = (f"no feature drifted beyond PSI {res.get('psi_threshold')} or KS p {res.get('ks_pvalue_threshold')}"
            if not drifted else "drifted: " + ", ".join(drifted))
    ok = not drifted and latest["status"] == "succeeded"
    lines += [f'<p class="sb-status-line">{pages.verdict(ok, pages.esc(said))}</p>',
              "", "## Feature drift over time", "", f"![PSI per feature over time in {env}](_charts/drift_psi.svg)", "",
              "## Realised error", "", f"![Realised MAE by scoring date in {env}](_charts/drift_error.svg)", "",
              f"## Latest run: champion v{pages.esc(res.get('champion_version', '?'))}", "",
              pages.table(["feature", "PSI", "KS p-value"],
                          [[pages.code(f), f"{v:.4f}", f"{(res.get('ks_pvalue') or {}).get(f, float('nan')):.3g}"]
                           for f, v in sorted(res["psi"].items(), key=itemgetter(1), reverse=True)]), "",
              "## Recent drift checks", "",
              pages.table(["run", "status", "started", "champion", "max PSI", "drifted"],
                          [[pages.download(r["id"], link(r["env"], RUNBOOK, r["id"])), pages.status_chip(r["status"]),
                            pages.when(r["started_at"]), pages.esc(r["results"].get("champion_version", "–")),
                            f"{max(r['results']['psi'].values()):.3f}",
                            pages.esc(", ".join(r["results"].get("drifted_features") or []) or "none")]
                           for r in reversed(runs)])]
    return "\n".join(lines) + "\n"


def write(writer: Any, env: str, ledger, docs: dict[str, str], link: pages.RunLink) -> None:
    """The drift page and its two charts."""
    runs = drift_runs(ledger)
    data = [[r["id"], r["status"], r["started_at"], r["results"].get("psi"), r["results"].get("realised_error")]
            for r in runs]
    writer.chart(PSI_CHART, [env, data], functools.partial(psi_over_time, runs, env))
    writer.chart(ERROR_CHART, [env, data], functools.partial(realised_over_time, runs, env))
    writer.text(PAGE + ".md", page(env, runs, link, docs.get(RUNBOOK)))
