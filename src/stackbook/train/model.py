"""Training the customer spend model on the marts, tracked and registered in MLflow.

The question: **how much will each customer spend in the next 90 days?** Every customer
in the Jaffle Shop data orders again (a repeat-purchase flag would be true for all of them),
so the useful thing to predict is how much: it sizes a loyalty offer, a stock plan or a
churn warning when a regular's forecast drops. The target is each customer's pre-tax spend
in the ``horizon_days`` after a cutoff; the features are what was known at the cutoff
(recency, frequency, spend, order mix). The naive baseline is persistence, "the next 90
days will look like the last 90", which is what a shop owner would guess.

MLflow tracks into the project-local PostgreSQL (database ``mlflow``, SQLAlchemy URL with
the psycopg 3 driver) unless ``$MLFLOW_TRACKING_URI`` names another store; artifacts go to
``.stackbook/mlflow/artifacts``. The registry alias ``champion`` moves to a new version only
when its test MAE beats the champion's, measured on the same held-out customers, by at
least ``min_improvement`` *and* a paired test on the held-out customers' absolute errors (a
one-sided Wilcoxon signed-rank test, ``paired_test``) says the new version's errors are smaller
at ``significance_level``: a margin on one split can be luck. The decision, the reason and the
test's result are returned, tagged on the model version and recorded by the runbook either way.

Each run also logs its training features (``training/features.csv``, what the model learnt
from, one row per customer) for the drift check (``stackbook.train.drift``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stackbook.core import environments, project
from stackbook.core.errors import TrainingError  # noqa: F401 (re-exported)
from stackbook.run import db

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in executed notebooks

TARGET = "spend_next"
BASELINE_FEATURE = "spend_last_horizon"
CHAMPION_ALIAS = "champion"
FEATURES = [
    "recency_days",
    "tenure_days",
    "orders_total",
    "orders_last_30d",
    "orders_last_horizon",
    "spend_total",
    "spend_last_30d",
    "spend_last_horizon",
    "avg_order_value",
    "avg_days_between_orders",
    "food_item_share",
    "drink_order_share",
]
ORDER_COLUMNS = ["customer_id", "ordered_at", "subtotal", "count_food_items", "count_drink_items", "count_order_items"]
# what a logged model needs to be loaded again; pinned (inferring them costs about 5 s per log_model)
PINNED_PACKAGES = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
# mlflow saves scikit-learn models with skops (no pickle); a tree ensemble needs its tree type trusted, and we
# trust it because this process built the model
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
TRAINING_FEATURES_ARTIFACT = "training/features.csv"  # X_train, indexed by customer_id
PAIRED_TEST = "wilcoxon signed-rank, one-sided, on held-out absolute errors"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the project-local database ``mlflow`` through psycopg 3."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    parts = urlsplit(db.url("mlflow"))
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def describe_store() -> dict[str, str]:
    """The tracking store and artifact root, password hidden: what to point ``mlflow ui`` at."""
    parts = urlsplit(tracking_uri())
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(":" + parts.password + "@", ":***@")
    return {"tracking_uri": urlunsplit(parts._replace(netloc=netloc)), "artifacts": str(artifacts_root())}


def artifacts_root() -> Path:
    path = project.state_dir() / "mlflow" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def configure() -> str:
    """Point mlflow's tracking and registry at our store; returns the tracking URI."""
    import warnings

    # mlflow imports tqdm.auto, which warns in a kernel without ipywidgets; progress bars are not used here
    warnings.filterwarnings("ignore", message="IProgress not found")
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, created with its artifacts under ``.stackbook/mlflow/artifacts/<name>``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifacts_root() / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # RESOURCE_ALREADY_EXISTS: created meanwhile by another process
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ------------------------------------------------------------------------------------------------ data

@dataclass
class DataSource:
    """Where the training data came from: table, rows and a checksum of its content."""

    table: str
    rows: int
    checksum: str  # md5 over the table's rows in key order


def load_orders(schema: str = "marts", database_url: str | None = None):
    """The ``orders`` mart (the columns the features need) and its ``DataSource``."""
    import pandas as pd
    import psycopg
    from psycopg import sql

    table = sql.Identifier(schema, "orders")
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ORDER_COLUMNS)
    try:
        with psycopg.connect(database_url or db.url(), autocommit=True) as conn:
            cur = conn.execute(sql.SQL("select order_id, {} from {} order by order_id").format(columns, table))
            frame = pd.DataFrame(cur.fetchall(), columns=["order_id", *ORDER_COLUMNS])
            checksum = conn.execute(
                sql.SQL("select md5(coalesce(string_agg(t::text, '|' order by t.order_id), '')) from {} as t")
                .format(table)).fetchone()[0]
    except psycopg.errors.UndefinedTable:
        raise TrainingError(f"no table {schema}.orders: build the marts first "
                            "(stackbook run build_warehouse)") from None
    except psycopg.errors.UndefinedColumn as exc:
        raise TrainingError(f"{schema}.orders lacks a column the features need ({exc}); expected "
                            f"{', '.join(ORDER_COLUMNS)}") from None
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"])
    for col in ("subtotal",):
        frame[col] = frame[col].astype(float)
    return frame, DataSource(table=f"{schema}.orders", rows=len(frame), checksum=checksum)


def build_dataset(orders, horizon_days: int = 90, cutoff=None):
    """One row per customer who ordered before the cutoff: features known then, and the target.

    The cutoff defaults to the last order minus ``horizon_days``, so the target window is fully
    observed. Returns (frame with FEATURES + TARGET indexed by customer_id, cutoff).
    """
    import numpy as np
    import pandas as pd

    if orders.empty:
        raise TrainingError("the orders mart is empty: load and build the warehouse first")
    horizon = pd.Timedelta(days=horizon_days)
    cutoff = pd.Timestamp(cutoff) if cutoff is not None else orders["ordered_at"].max() - horizon
    past = orders[orders["ordered_at"] <= cutoff]
    future = orders[(orders["ordered_at"] > cutoff) & (orders["ordered_at"] <= cutoff + horizon)]
    if past.empty:
        raise TrainingError(f"no orders before the cutoff {cutoff}: the data spans less than {horizon_days} days")

    age_days = (cutoff - past["ordered_at"]).dt.total_seconds() / 86400
    g = past.assign(age_days=age_days,
                    in_30=age_days <= 30, in_h=age_days <= horizon_days,
                    drink=past["count_drink_items"] > 0).groupby("customer_id")
    frame = pd.DataFrame({
        "recency_days": g["age_days"].min(),
        "tenure_days": g["age_days"].max(),
        "orders_total": g.size(),
        "orders_last_30d": g["in_30"].sum(),
        "orders_last_horizon": g["in_h"].sum(),
        "spend_total": g["subtotal"].sum(),
        "food_items": g["count_food_items"].sum(),
        "items": g["count_order_items"].sum(),
        "drink_orders": g["drink"].sum(),
    })
    frame["spend_last_30d"] = past[age_days <= 30].groupby("customer_id")["subtotal"].sum()
    frame["spend_last_horizon"] = past[age_days <= horizon_days].groupby("customer_id")["subtotal"].sum()
    frame[["spend_last_30d", "spend_last_horizon"]] = frame[["spend_last_30d", "spend_last_horizon"]].fillna(0.0)
    frame["avg_order_value"] = frame["spend_total"] / frame["orders_total"]
    frame["avg_days_between_orders"] = np.where(frame["orders_total"] > 1,
                                                (frame["tenure_days"] - frame["recency_days"])
                                                / (frame["orders_total"] - 1).clip(lower=1), horizon_days)
    frame["food_item_share"] = (frame["food_items"] / frame["items"].replace(0, np.nan)).fillna(0.0)
    frame["drink_order_share"] = frame["drink_orders"] / frame["orders_total"]
    frame[TARGET] = future.groupby("customer_id")["subtotal"].sum().reindex(frame.index).fillna(0.0)
    frame = frame[FEATURES + [TARGET]].astype(float).sort_index()
    return frame, cutoff


# --------------------------------------------------------------------------------------------- training

@dataclass
class TrainParams:
    horizon_days: int = 90
    test_size: float = 0.25
    n_estimators: int = 100
    max_depth: int = 3
    learning_rate: float = 0.1
    random_state: int = 42


@dataclass
class Trained:
    """A fitted model with its held-out evaluation."""

    model: Any
    params: TrainParams
    source: DataSource
    cutoff: str
    X_train: Any
    X_test: Any
    y_test: Any
    predictions: Any
    metrics: dict[str, float]
    seconds: float

    @property
    def feature_importance(self):
        import pandas as pd

        return pd.Series(self.model.feature_importances_, index=FEATURES).sort_values(ascending=False)


def _scores(y_true, y_pred, prefix: str) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {f"{prefix}_mae": float(mean_absolute_error(y_true, y_pred)),
            f"{prefix}_rmse": float(mean_squared_error(y_true, y_pred) ** 0.5),
            f"{prefix}_r2": float(r2_score(y_true, y_pred))}


def fit(dataset, params: TrainParams, source: DataSource, cutoff) -> Trained:
    """Hold out ``test_size`` of the customers, fit gradient boosting, score it and the baselines."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import train_test_split

    if len(dataset) < 20:
        raise TrainingError(f"only {len(dataset)} customers ordered before the cutoff: too few to train and hold out "
                            "a test set (load more data, e.g. load_jaffle_shop with more years)")
    started = time.perf_counter()
    X, y = dataset[FEATURES], dataset[TARGET]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=params.test_size,
                                                        random_state=params.random_state)
    model = GradientBoostingRegressor(n_estimators=params.n_estimators, max_depth=params.max_depth,
                                      learning_rate=params.learning_rate, random_state=params.random_state)
    model.fit(X_train, y_train)
    predictions = model.predict(X_test)
    metrics = {**_scores(y_test, predictions, "test"),
               # naive baseline: the next horizon looks like the last one
               **_scores(y_test, X_test[BASELINE_FEATURE], "baseline_persistence"),
               # the trivial one: everybody spends the training mean
               **_scores(y_test, [float(y_train.mean())] * len(y_test), "baseline_mean")}
    metrics["improvement_over_baseline"] = 1 - metrics["test_mae"] / max(metrics["baseline_persistence_mae"], 1e-9)
    metrics["train_rows"], metrics["test_rows"] = float(len(X_train)), float(len(X_test))
    return Trained(model=model, params=params, source=source, cutoff=str(cutoff), X_train=X_train, X_test=X_test,
                   y_test=y_test, predictions=predictions, metrics=metrics,
                   seconds=round(time.perf_counter() - started, 3))


def train(schema: str = "marts", params: TrainParams | None = None, database_url: str | None = None) -> Trained:
    """Load the orders mart, build the per-customer dataset and fit: no MLflow yet."""
    params = params or TrainParams()
    orders, source = load_orders(schema, database_url)
    dataset, cutoff = build_dataset(orders, params.horizon_days)
    return fit(dataset, params, source, cutoff)


# ------------------------------------------------------------------------------------------------ MLflow

def pinned_requirements() -> list[str]:
    """Exact versions of what loading the model needs, from this environment."""
    out = []
    for name in PINNED_PACKAGES:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_commit() -> str | None:
    return project.git_commit()


@dataclass
class Logged:
    run_id: str
    experiment_id: str
    model_uri: str
    registered_model: str
    version: str
    log_model_seconds: float


def log(trained: Trained, experiment: str, registered_model: str, infer_requirements: bool = False) -> Logged:
    """Log params, metrics, data source, git commit and the model (signature, input example) and register it."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    exp_id = experiment_id(experiment)
    params = asdict(trained.params)
    commit = _git_commit()
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{registered_model}-{time.strftime('%Y%m%dT%H%M%S')}") as run:
        mlflow.log_params({**params, "model": "GradientBoostingRegressor", "target": f"{TARGET}_{trained.params.horizon_days}d",
                           "features": ",".join(FEATURES), "cutoff": trained.cutoff})
        mlflow.log_metrics(trained.metrics)
        mlflow.set_tags({
            "data.table": trained.source.table, "data.rows": str(trained.source.rows),
            "data.checksum": trained.source.checksum, "mlflow.source.git.commit": commit or "unknown",
            "git_commit": commit or "unknown", "stackbook.run_id": os.environ.get("STACKBOOK_RUN_ID", ""),
            "stackbook.env": environments.current_name(),
        })
        dataset = mlflow.data.from_pandas(trained.X_train.reset_index(drop=True), name=trained.source.table,
                                          digest=trained.source.checksum[:8])
        mlflow.log_input(dataset, context="training",
                         tags={"table": trained.source.table, "rows": str(trained.source.rows),
                               "checksum": trained.source.checksum})
        mlflow.log_text(trained.X_train.to_csv(index_label="customer_id"), TRAINING_FEATURES_ARTIFACT)
        signature = infer_signature(trained.X_test, trained.predictions)
        started = time.perf_counter()
        info = mlflow.sklearn.log_model(
            trained.model, name="model", signature=signature, input_example=trained.X_test.head(3),
            pip_requirements=None if infer_requirements else pinned_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        seconds = time.perf_counter() - started
        mlflow.log_metric("log_model_seconds", seconds)
        version = register(registered_model, info.model_uri, run.info.run_id, info.model_id)
    return Logged(run_id=run.info.run_id, experiment_id=exp_id, model_uri=info.model_uri,
                  registered_model=registered_model, version=str(version.version),
                  log_model_seconds=round(seconds, 3))


def register(name: str, model_uri: str, run_id: str, model_id: str | None = None):
    """A new version of registered model ``name`` (created when absent) for a logged model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="Next-90-day spend per customer (stackbook "
                                                             "runbooks/train/train_customer_model)")
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile; anything else re-raises
    return client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id)


@dataclass
class Decision:
    """Whether the champion alias moved, and why."""

    promoted: bool
    reason: str
    registered_model: str
    new_version: str
    new_mae: float
    champion_version: str | None = None
    champion_mae: float | None = None
    improvement: float | None = None  # 1 - new_mae / champion_mae
    min_improvement: float = 0.0
    champion_after: str | None = None
    test: str | None = None  # the paired test made (None: no champion to compare with on the same customers)
    p_value: float | None = None  # the chance of errors this much smaller if the two models were equally good
    significance_level: float = 0.05
    significant: bool | None = None  # p_value < significance_level

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_champion(registered_model: str):
    """The model version holding the alias ``champion``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure()
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, CHAMPION_ALIAS)
    except MlflowException:
        return None


def champion_mae(registered_model: str, version, trained: Trained) -> tuple[float, str, Any]:
    """The champion's MAE on this run's held-out customers, how it was measured, and its absolute errors there
    (its logged test MAE and None when it cannot be reloaded: the paired test then cannot be made)."""
    import mlflow
    import numpy as np

    try:
        model = mlflow.pyfunc.load_model(f"models:/{registered_model}/{version.version}")
        errors = np.abs(trained.y_test.to_numpy() - np.asarray(model.predict(trained.X_test), dtype=float))
        return float(errors.mean()), "same held-out customers", errors
    except Exception as exc:  # different features, missing artifacts: fall back to what it logged, and say why
        run = mlflow.get_run(version.run_id) if version.run_id else None
        logged = run.data.metrics.get("test_mae") if run else None
        if logged is None:
            raise TrainingError(f"cannot evaluate champion {registered_model} v{version.version} ({exc}) and it "
                                "logged no test_mae") from None
        cause = (str(exc).strip().splitlines() or [""])[0][:200]
        return float(logged), f"its logged test_mae (could not re-score it: {type(exc).__name__}: {cause})", None


def paired_test(new_errors, champion_errors) -> float:
    """One-sided p-value that the new model's absolute errors are smaller than the champion's on the same
    customers (Wilcoxon signed-rank); 1.0 when the errors are identical."""
    import numpy as np
    from scipy.stats import wilcoxon

    diff = np.asarray(champion_errors, dtype=float) - np.asarray(new_errors, dtype=float)
    if not np.any(diff):
        return 1.0
    return float(wilcoxon(diff, alternative="greater").pvalue)


def _compare(decision: Decision, trained: Trained, champion) -> None:
    """Fill in DECISION against a champion: the margin, the paired test, the verdict and its reason."""
    import numpy as np

    version, new_mae = decision.new_version, decision.new_mae
    old_mae, how, old_errors = champion_mae(decision.registered_model, champion, trained)
    improvement = 1 - new_mae / old_mae if old_mae > 0 else (0.0 if new_mae == 0 else -1.0)
    decision.champion_version, decision.champion_mae = str(champion.version), old_mae
    decision.improvement = improvement
    if old_errors is not None:
        new_errors = np.abs(trained.y_test.to_numpy() - np.asarray(trained.predictions, dtype=float))
        decision.test, decision.p_value = PAIRED_TEST, paired_test(new_errors, old_errors)
        decision.significant = decision.p_value < decision.significance_level
    test = (f"paired test p = {decision.p_value:.3g} at level {decision.significance_level:g}" if decision.test
            else "no paired test: the champion could not be re-scored on these customers")
    if improvement < decision.min_improvement:
        decision.reason = (f"kept champion v{champion.version}: version {version} MAE {new_mae:.2f} vs "
                           f"{old_mae:.2f} ({how}) is a {improvement:.1%} improvement, below the required "
                           f"{decision.min_improvement:.1%}; {test}")
    elif decision.significant is False:
        decision.reason = (f"kept champion v{champion.version}: version {version} MAE {new_mae:.2f} beats "
                           f"{old_mae:.2f} ({how}) by {improvement:.1%}, but not significantly ({test})")
    else:
        decision.promoted = True
        decision.reason = (f"version {version} MAE {new_mae:.2f} beats champion v{champion.version} MAE "
                           f"{old_mae:.2f} ({how}) by {improvement:.1%}, at least the required "
                           f"{decision.min_improvement:.1%}; {test}")


def decide(trained: Trained, logged: Logged, min_improvement: float, significance_level: float = 0.05) -> Decision:
    """Move ``champion`` to the new version only if its MAE beats the champion's by ``min_improvement`` and the
    paired test on the held-out errors is significant at ``significance_level``.

    The decision is tagged on the new version (``champion_decision``, ``champion_reason``, ``champion_p_value``)
    either way.
    """
    from mlflow import MlflowClient

    if not 0 < significance_level <= 1:
        raise TrainingError(f"significance_level must be in (0, 1], got {significance_level!r}")
    client = MlflowClient()
    name, version = logged.registered_model, logged.version
    new_mae = trained.metrics["test_mae"]
    champion = current_champion(name)
    decision = Decision(promoted=False, reason="", registered_model=name, new_version=version, new_mae=new_mae,
                        min_improvement=min_improvement, significance_level=significance_level)
    if champion is None:
        decision.promoted = True
        decision.reason = f"no champion yet: version {version} (test MAE {new_mae:.2f}) becomes the champion"
    elif str(champion.version) == version:
        decision.promoted = True
        decision.reason = f"version {version} already holds the alias"
    else:
        _compare(decision, trained, champion)
    if decision.p_value is not None:
        client.set_model_version_tag(name, version, "champion_p_value", f"{decision.p_value:.6g}")
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, "champion_decision", "promoted" if decision.promoted else "kept")
    client.set_model_version_tag(name, version, "champion_reason", decision.reason)
    client.set_tag(logged.run_id, "champion_decision", "promoted" if decision.promoted else "kept")
    after = current_champion(name)
    decision.champion_after = str(after.version) if after else None
    return decision


# ---------------------------------------------------------------------------------------------- plots

def plot_predictions(trained: Trained):
    """Predicted against actual next-horizon spend on the held-out customers, model and persistence baseline."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    actual = trained.y_test.to_numpy()
    ax.scatter(actual, trained.X_test[BASELINE_FEATURE], s=12, alpha=0.45, label="baseline: last period's spend",
               color="#bbbbbb")
    ax.scatter(actual, trained.predictions, s=12, alpha=0.7, label="model", color="#1f77b4")
    top = float(max(actual.max(), trained.predictions.max(), 1.0))
    ax.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--", label="perfect")
    ax.set_xlabel(f"actual spend in the next {trained.params.horizon_days} days ($)")
    ax.set_ylabel("predicted ($)")
    ax.set_title(f"held-out customers: MAE model {trained.metrics['test_mae']:.1f}, "
                 f"baseline {trained.metrics['baseline_persistence_mae']:.1f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_feature_importance(trained: Trained):
    """Impurity-based feature importance of the fitted model."""
    import matplotlib.pyplot as plt

    importance = trained.feature_importance.sort_values()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.barh(importance.index, importance.to_numpy(), color="#1f77b4")
    ax.set_xlabel("importance (share of impurity reduction)")
    ax.set_title("what the model relies on")
    fig.tight_layout()
    plt.close(fig)
    return fig


def summary(trained: Trained):
    """Model and baselines side by side (MAE, RMSE, R²) as a small table."""
    import pandas as pd

    rows = []
    for label, prefix in (("model", "test"), ("baseline: last period's spend", "baseline_persistence"),
                          ("baseline: mean", "baseline_mean")):
        rows.append({"predictor": label, "mae": trained.metrics[f"{prefix}_mae"],
                     "rmse": trained.metrics[f"{prefix}_rmse"], "r2": trained.metrics[f"{prefix}_r2"]})
    return pd.DataFrame(rows).round(3)
