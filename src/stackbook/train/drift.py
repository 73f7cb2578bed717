"""Drift: has the data moved away from what the champion learnt from, and were its forecasts right?

Two questions, two kinds of evidence:

- **Feature drift.** Each feature's distribution in the newest data against the champion's
  training data, by the population stability index (PSI, over deciles of the training values)
  and a two-sample Kolmogorov-Smirnov test. The newest data is built the way the training data
  was: features at the newest cutoff whose horizon is complete (newest order minus
  ``horizon_days``). Features such as tenure or order counts grow with the calendar, so features
  at another cutoff would differ by construction, not because the customers changed. The
  training data is the ``training/features.csv`` the training run logged (a champion from
  before that artifact: rebuilt from the marts with the run's cutoff, split and seed).
- **Realised error.** Predictions stored by the scoring runbook whose horizon has passed
  (``scoring date + horizon <= newest order``) against what each customer actually spent; the
  MAE against the model's own held-out test MAE.

``check_model`` returns a ``DriftReport``; ``DriftReport.check()`` fails naming each feature over
its threshold and each scoring date whose error ratio is over ``max_error_ratio``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stackbook.core.errors import DriftDetected, ScoringError
from stackbook.train import model as train_model
from stackbook.train import score as score_mod

PSI_BINS = 10


def psi(reference, current, bins: int = PSI_BINS) -> float:
    """Population stability index of CURRENT against REFERENCE over REFERENCE's quantile bins."""
    import numpy as np

    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant feature: one bin for its value, one for anything else
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(ref, edges)[0] / max(len(ref), 1)
    actual = np.histogram(cur, edges)[0] / max(len(cur), 1)
    expected, actual = np.clip(expected, 1e-4, None), np.clip(actual, 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    reference_mean: float
    current_mean: float
    drifted: bool


@dataclass
class RealisedError:
    """The error of the predictions of one scoring date, once the horizon after it has passed."""

    scoring_date: str
    model_version: str
    customers: int
    mae: float
    test_mae: float | None  # the model version's own held-out MAE
    ratio: float | None  # mae / test_mae
    too_high: bool


@dataclass
class DriftReport:
    registered_model: str
    champion_version: str
    reference: str  # where the training data came from
    reference_rows: int
    current_cutoff: str
    current_rows: int
    psi_threshold: float
    ks_pvalue_threshold: float
    max_error_ratio: float
    features: list[FeatureDrift] = field(default_factory=list)
    realised: list[RealisedError] = field(default_factory=list)
    pending_dates: list[str] = field(default_factory=list)  # scored, horizon not yet passed

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def errors_too_high(self) -> list[str]:
        return [r.scoring_date for r in self.realised if r.too_high]

    def table(self):
        import pandas as pd

        return pd.DataFrame([asdict(f) for f in self.features]).round(4)

    def realised_table(self):
        import pandas as pd

        columns = [f for f in RealisedError.__dataclass_fields__]
        return pd.DataFrame([asdict(r) for r in self.realised], columns=columns).round(3)

    def record(self) -> dict[str, Any]:
        return {"champion_version": self.champion_version, "drifted_features": self.drifted,
                "psi": {f.feature: round(f.psi, 4) for f in self.features},
                "ks_pvalue": {f.feature: round(f.ks_pvalue, 6) for f in self.features},
                "psi_threshold": self.psi_threshold, "ks_pvalue_threshold": self.ks_pvalue_threshold,
                "current_cutoff": self.current_cutoff, "reference": self.reference,
                "realised_error": [asdict(r) for r in self.realised], "pending_dates": self.pending_dates}

    def check(self) -> None:
        """DriftDetected naming every drifted feature and every scoring date whose error is too high."""
        problems = [f"{f.feature}: PSI {f.psi:.3f} (threshold {self.psi_threshold:g}), KS p {f.ks_pvalue:.2g} "
                    f"(threshold {self.ks_pvalue_threshold:g}), mean {f.reference_mean:.2f} -> {f.current_mean:.2f}"
                    for f in self.features if f.drifted]
        problems += [f"predictions of {r.scoring_date} (v{r.model_version}): realised MAE {r.mae:.2f} is "
                     f"{r.ratio:.2f}x the test MAE {r.test_mae:.2f} (at most {self.max_error_ratio:g}x)"
                     for r in self.realised if r.too_high]
        if problems:
            raise DriftDetected(f"{self.registered_model} v{self.champion_version}: " + "; ".join(problems),
                                report=self)


def compare(reference, current, psi_threshold: float, ks_pvalue_threshold: float,
            features: list[str] | None = None) -> list[FeatureDrift]:
    """Each feature of CURRENT against REFERENCE: drifted when PSI > threshold or KS p < threshold."""
    from scipy.stats import ks_2samp

    out = []
    for name in features or train_model.FEATURES:
        ref, cur = reference[name].astype(float), current[name].astype(float)
        value = psi(ref, cur)
        ks = ks_2samp(ref, cur)
        out.append(FeatureDrift(feature=name, psi=value, ks_statistic=float(ks.statistic),
                                ks_pvalue=float(ks.pvalue), reference_mean=float(ref.mean()),
                                current_mean=float(cur.mean()),
                                drifted=bool(value > psi_threshold or ks.pvalue < ks_pvalue_threshold)))
    return out


def reference_features(champ: score_mod.Champion, orders) -> tuple[Any, str]:
    """The champion's training features and where they came from (its logged artifact, else rebuilt)."""
    import io

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from sklearn.model_selection import train_test_split

    try:
        text = mlflow.artifacts.load_text(f"runs:/{champ.run_id}/{train_model.TRAINING_FEATURES_ARTIFACT}")
        frame = pd.read_csv(io.StringIO(text), index_col="customer_id")
        return frame[train_model.FEATURES], f"run {champ.run_id}: {train_model.TRAINING_FEATURES_ARTIFACT}"
    except (MlflowException, OSError):  # trained before the artifact was logged
        pass
    params = mlflow.get_run(champ.run_id).data.params
    dataset, _ = train_model.build_dataset(orders, champ.horizon_days, cutoff=params["cutoff"])
    X_train, _ = train_test_split(dataset[train_model.FEATURES], test_size=float(params.get("test_size", 0.25)),
                                  random_state=int(params.get("random_state", 42)))
    return X_train, f"rebuilt from the marts at the run's cutoff {params['cutoff']} (no logged training features)"


def realised_errors(champ_model: str, stored, orders, test_maes: dict[str, float | None],
                    max_error_ratio: float) -> tuple[list[RealisedError], list[str]]:
    """(errors of the scoring dates whose horizon has passed, dates still pending) from STORED predictions."""
    import pandas as pd

    newest = orders["ordered_at"].max()
    done, pending = [], []
    for day, group in stored.groupby("scoring_date"):
        cutoff = pd.Timestamp(group["cutoff"].iloc[0])
        horizon = pd.Timedelta(days=int(group["horizon_days"].iloc[0]))
        if cutoff + horizon > newest:
            pending.append(str(day))
            continue
        window = orders[(orders["ordered_at"] > cutoff) & (orders["ordered_at"] <= cutoff + horizon)]
        actual = window.groupby("customer_id")["subtotal"].sum().reindex(group["customer_id"]).fillna(0.0)
        mae = float((group.set_index("customer_id")["prediction"] - actual).abs().mean())
        version = str(group["model_version"].iloc[-1])
        test_mae = test_maes.get(version)
        ratio = mae / test_mae if test_mae else None
        done.append(RealisedError(scoring_date=str(day), model_version=version, customers=len(group), mae=mae,
                                  test_mae=test_mae, ratio=ratio, too_high=bool(ratio and ratio > max_error_ratio)))
    return done, pending


def _test_maes(registered_model: str, versions) -> dict[str, float | None]:
    from mlflow import MlflowClient

    client = MlflowClient()
    out: dict[str, float | None] = {}
    for v in sorted({str(v) for v in versions}):
        mv = client.get_model_version(registered_model, v)
        out[v] = client.get_run(mv.run_id).data.metrics.get("test_mae") if mv.run_id else None
    return out


def check_model(registered_model: str, *, marts_schema: str = "marts",
                predictions_table: str = score_mod.PREDICTIONS_TABLE,
                psi_threshold: float = 0.2, ks_pvalue_threshold: float = 0.001, max_error_ratio: float = 1.5,
                current_cutoff: str = "", database_url: str | None = None) -> tuple[DriftReport, Any, Any]:
    """The drift report of the champion, with the reference and current feature frames (for the plots)."""
    import pandas as pd

    champ = score_mod.champion(registered_model)
    orders, _ = train_model.load_orders(marts_schema, database_url)
    reference, where = reference_features(champ, orders)
    cutoff = (pd.Timestamp(current_cutoff) if current_cutoff
              else orders["ordered_at"].max() - pd.Timedelta(days=champ.horizon_days))
    try:
        current, _ = train_model.build_dataset(orders, champ.horizon_days, cutoff=cutoff)
    except train_model.TrainingError as exc:
        raise ScoringError(f"no current data to compare at {cutoff}: {exc}") from None
    current = current[train_model.FEATURES]
    report = DriftReport(registered_model=registered_model, champion_version=champ.version, reference=where,
                         reference_rows=len(reference), current_cutoff=str(cutoff), current_rows=len(current),
                         psi_threshold=psi_threshold, ks_pvalue_threshold=ks_pvalue_threshold,
                         max_error_ratio=max_error_ratio,
                         features=compare(reference, current, psi_threshold, ks_pvalue_threshold))
    stored = score_mod.stored(registered_model, marts_schema=marts_schema, table=predictions_table,
                              database_url=database_url)
    if not stored.empty:
        report.realised, report.pending_dates = realised_errors(
            registered_model, stored, orders, _test_maes(registered_model, stored["model_version"]), max_error_ratio)
    return report, reference, current


def plot_distributions(report: DriftReport, reference, current):
    """Each feature's distribution, training data against the newest data; drifted ones titled in red."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f.feature for f in report.features]
    cols = 4
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 2.3 * nrows))
    for ax, f in zip(np.ravel(axes), report.features):
        both = np.concatenate([reference[f.feature].to_numpy(float), current[f.feature].to_numpy(float)])
        bins = np.histogram_bin_edges(both, bins=20)
        ax.hist(reference[f.feature], bins=bins, alpha=0.5, density=True, label="training", color="#1f77b4")
        ax.hist(current[f.feature], bins=bins, alpha=0.5, density=True, label="newest", color="#ff7f0e")
        ax.set_title(f"{f.feature}\nPSI {f.psi:.2f}, KS p {f.ks_pvalue:.2g}", fontsize=8,
                     color="#c62828" if f.drifted else "black")
        ax.tick_params(labelsize=7)
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    np.ravel(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_psi(report: DriftReport):
    """PSI per feature against the threshold."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    values = [f.psi for f in report.features]
    ax.barh([f.feature for f in report.features], values,
            color=["#c62828" if f.drifted else "#2e7d32" for f in report.features])
    ax.axvline(report.psi_threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.invert_yaxis()
    ax.set_xlabel("population stability index (training -> newest)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
