"""stackbook.train and train_customer_model against real MLflow on the real PostgreSQL.

The orders mart is a synthetic one in a scratch schema (a year of 400 customers ordering at
steady, different rates); experiments and registered models get throwaway names and are deleted after.
"""

from __future__ import annotations

import uuid

import pandas as pd
import psycopg
import pytest

from stackbook.train import model as train

# mlflow 3.17's SQLAlchemy store still uses the deprecated noload strategy; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ORDERS_SQL = """
create table {schema}.orders as
with customers as materialized (
    -- occasional customers at steady rates: their last 90 days are a noisy guide to the next 90,
    -- their whole history a better one (what the model learns and the persistence baseline misses)
    select i as n, 0.01 + 0.15 * random() as rate, 6 + 20 * random() as basket,
           (random() * 150)::int as first_day
    from generate_series(1, 400) as i
),
days as materialized (
    select n, rate, basket, day
    from customers, generate_series(0, 364) as day
    where day >= first_day
)
select md5(n || '-' || day) as order_id,
       'c' || n as customer_id,
       timestamp '2024-01-01 08:00' + day * interval '1 day' + (random() * 600)::int * interval '1 minute' as ordered_at,
       round((basket * (0.6 + 0.8 * random()))::numeric, 2) as subtotal,
       (random() < 0.7)::int as count_food_items,
       (random() < 0.6)::int as count_drink_items,
       2 as count_order_items
from days
where random() < rate
"""


@pytest.fixture(scope="module")
def mart(database_url):
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
        conn.execute("select setseed(0.42)")
        conn.execute(ORDERS_SQL.format(schema=f'"{schema}"'))
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{schema}" cascade')


def test_tracking_store_is_the_local_mlflow_database_through_psycopg3(database_url):
    uri = train.tracking_uri()
    assert uri.startswith("postgresql+psycopg://") and uri.endswith("/mlflow_test")  # the tests' own (conftest)
    shown = train.describe_store()
    from stackbook.run import db

    assert db.password(db.url()) not in shown["tracking_uri"] and ":***@" in shown["tracking_uri"]
    from stackbook.core import project

    assert shown["artifacts"] == str(project.state_dir() / "mlflow" / "artifacts")


def test_dataset_uses_only_what_was_known_at_the_cutoff():
    orders = pd.DataFrame({
        "order_id": ["a", "b", "c", "d", "e"],
        "customer_id": ["x", "x", "x", "y", "y"],
        "ordered_at": pd.to_datetime(["2024-01-01", "2024-03-01", "2024-05-01", "2024-02-15", "2024-07-01"]),
        "subtotal": [10.0, 20.0, 40.0, 5.0, 99.0],
        "count_food_items": [1, 0, 1, 1, 0],
        "count_drink_items": [0, 1, 1, 0, 1],
        "count_order_items": [1, 1, 2, 1, 1],
    })
    frame, cutoff = train.build_dataset(orders, horizon_days=90, cutoff="2024-03-31")
    assert str(cutoff.date()) == "2024-03-31"
    x, y = frame.loc["x"], frame.loc["y"]
    assert (x["orders_total"], x["spend_total"], x[train.TARGET]) == (2, 30.0, 40.0)
    assert x["recency_days"] == 30 and x["tenure_days"] == 90
    assert x["spend_last_30d"] == 20.0 and x["spend_last_horizon"] == 30.0
    assert (y["orders_total"], y[train.TARGET]) == (1, 0.0)  # y's July order is past the 90-day window
    assert list(frame.columns) == train.FEATURES + [train.TARGET]


def test_missing_mart_is_a_clear_error(database_url):
    with pytest.raises(train.TrainingError, match=r"no table no_such_schema\.orders: build the marts first"):
        train.load_orders("no_such_schema")


@pytest.fixture(scope="module")
def champion(mart, names):
    """A first model, trained with the defaults, logged and registered: it becomes the champion."""
    experiment, model = names
    good = train.train(mart)
    logged = train.log(good, experiment, model)
    return good, logged, train.decide(good, logged, min_improvement=0.02)


def test_first_model_becomes_champion_with_its_lineage_logged(mart, names, champion):
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    experiment, model = names
    good, logged, decision = champion
    assert good.metrics["test_mae"] < good.metrics["baseline_persistence_mae"]
    assert decision.promoted and decision.champion_after == logged.version == "1"
    assert decision.reason.startswith("no champion yet")

    client = MlflowClient()
    run = client.get_run(logged.run_id)
    assert run.data.tags["data.table"] == f"{mart}.orders"
    assert int(run.data.tags["data.rows"]) == good.source.rows
    assert len(run.data.tags["data.checksum"]) == 32 and run.data.tags["git_commit"]
    assert run.data.params["n_estimators"] == "100" and "test_mae" in run.data.metrics
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == f"{mart}.orders"
    info = get_model_info(logged.model_uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    requirements = (train.artifacts_root() / experiment).rglob("requirements.txt")
    pinned = next(requirements).read_text()
    assert "scikit-learn==" in pinned and "skops==" in pinned
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"


def test_worse_model_leaves_the_champion_and_says_why(mart, names, champion):
    from mlflow import MlflowClient

    experiment, model = names
    client = MlflowClient()
    worse = train.train(mart, train.TrainParams(n_estimators=3, learning_rate=0.05))
    logged2 = train.log(worse, experiment, model)
    decision2 = train.decide(worse, logged2, min_improvement=0.02)
    assert not decision2.promoted
    assert decision2.champion_version == "1" and decision2.champion_after == "1"
    assert decision2.improvement < 0 and decision2.reason.startswith("kept champion v1")
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    tags = client.get_model_version(model, logged2.version).tags
    assert tags["champion_decision"] == "kept" and tags["champion_reason"] == decision2.reason


def test_runbook_records_the_decision_and_keeps_the_champion(mart, names, champion, cli):
    experiment, model = names
    res = cli("run", "train_customer_model", "-e", "dev", "--json", "-p", f"marts_schema={mart}",
              "-p", f"experiment={experiment}", "-p", f"registered_model={model}", "-p", "min_improvement=0.5")
    assert res.code == 0, res
    results = res.json()["results"]
    decision = results["champion_decision"]
    assert decision["promoted"] is False and decision["champion_after"] == "1"
    assert decision["new_version"] != "1" and "kept champion v1" in decision["reason"]
    assert results["training_data"]["table"] == f"{mart}.orders"
    assert results["test_mae"] < results["baseline_mae"]
