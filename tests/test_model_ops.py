"""The model after training, against real MLflow on the real PostgreSQL: scoring, drift, serving, rollback,
and the significance test of the champion decision.

The orders mart is test_train's synthetic one (a year of 400 customers) in a scratch schema; the
experiment and registered model get throwaway names and are deleted afterwards. The runbooks run
through the real CLI (kernels, ledger); the server is a real ``mlflow models serve`` on 127.0.0.1.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import psycopg
import pytest

from stackbook.core.errors import DriftDetected, RollbackError, TrainingError
from stackbook.train import drift, registry, score, serve
from stackbook.train import model as train
from tests.test_train import ORDERS_SQL

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _scratch(url: str) -> str:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    return schema


def _drop(url: str, *schemas: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'drop schema if exists "{schema}" cascade')


@pytest.fixture(scope="module")
def mart(database_url):
    schema = _scratch(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select setseed(0.42)")
        conn.execute(ORDERS_SQL.format(schema=f'"{schema}"'))
    yield schema
    _drop(database_url, schema)


@pytest.fixture(scope="module")
def champion(mart, names):
    """Version 1, trained with the defaults on the mart: the champion."""
    experiment, model = names
    trained = train.train(mart)
    logged = train.log(trained, experiment, model)
    decision = train.decide(trained, logged, min_improvement=0.02)
    assert decision.promoted and logged.version == "1"
    return trained, logged


def _alias(model: str) -> str:
    found = train.current_champion(model)
    return str(found.version) if found else None


# ------------------------------------------------------------------------------------------------ scoring


def test_scoring_a_date_twice_leaves_one_set_of_predictions(mart, names, champion, cli, db):
    _, model = names
    first = cli("run", "score_customers", "-e", "dev", "--json", "-p", f"registered_model={model}",
                "-p", f"marts_schema={mart}", "-p", "scoring_date=2024-10-01")
    assert first.code == 0, first
    scoring = first.json()["results"]["scoring"]
    assert scoring["model_version"] == "1" and scoring["replaced"] == 0 and scoring["rows"] > 300
    second = score.score(model, marts_schema=mart, scoring_date="2024-10-01")
    assert second.replaced == second.rows == scoring["rows"]
    stored = score.stored(model, marts_schema=mart, scoring_date="2024-10-01")
    assert len(stored) == scoring["rows"] and stored["customer_id"].is_unique
    assert (stored["prediction"] >= 0).all() and set(stored["model_version"]) == {"1"}
    other = score.score(model, marts_schema=mart, scoring_date="2024-08-01")  # another date: a set of its own
    counts = db.execute(f'select scoring_date::text, count(*) from "{mart}".customer_spend_predictions '
                        "where registered_model = %s group by 1 order by 1", (model,)).fetchall()
    assert counts == [("2024-08-01", other.rows), ("2024-10-01", scoring["rows"])]


def test_scoring_without_a_champion_or_with_a_bad_date_is_a_clear_error(mart, champion):
    with pytest.raises(score.ScoringError, match=r"has no alias 'champion': train one first"):
        score.score(f"t_none_{uuid.uuid4().hex[:6]}", marts_schema=mart)
    _, logged = champion
    with pytest.raises(score.ScoringError, match=r"scoring_date 'yesterday' is not a date: use YYYY-MM-DD"):
        score.score(logged.registered_model, marts_schema=mart, scoring_date="yesterday")


# -------------------------------------------------------------------------------------------------- drift


def test_psi_and_ks_trip_on_shifted_data_and_not_on_a_sample_of_the_same():
    rng = np.random.default_rng(7)
    reference = pd.DataFrame({f: rng.gamma(2.0, 10.0, 600) for f in train.FEATURES})
    same = pd.DataFrame({f: rng.gamma(2.0, 10.0, 800) for f in train.FEATURES})
    shifted = same.assign(spend_total=same["spend_total"] * 1.8, recency_days=same["recency_days"] + 15)
    assert drift.compare(reference, same, 0.2, 0.001) and not any(
        f.drifted for f in drift.compare(reference, same, 0.2, 0.001))
    found = {f.feature: f for f in drift.compare(reference, shifted, 0.2, 0.001)}
    assert {n for n, f in found.items() if f.drifted} == {"spend_total", "recency_days"}
    assert found["spend_total"].psi > 0.2 and found["recency_days"].ks_pvalue < 0.001
    assert drift.psi(reference["spend_total"], reference["spend_total"]) == pytest.approx(0.0, abs=1e-9)


def test_drift_runbook_passes_on_unchanged_data_and_fails_naming_shifted_features(mart, names, champion, cli,
                                                                                  database_url):
    _, model = names
    ok = cli("run", "check_model_drift", "-e", "dev", "--json", "-p", f"registered_model={model}",
             "-p", f"marts_schema={mart}")
    assert ok.code == 0, ok
    recorded = ok.json()["results"]
    assert recorded["drifted_features"] == [] and set(recorded["psi"]) == set(train.FEATURES)
    assert "training/features.csv" in recorded["reference"]  # the logged training data, not a rebuild
    shifted = _scratch(database_url)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'create table "{shifted}".orders as select order_id, customer_id, ordered_at, '
                         "round(subtotal * 3, 2) as subtotal, count_food_items, count_drink_items, count_order_items "
                         f'from "{mart}".orders')
        bad = cli("run", "check_model_drift", "-e", "dev", "--json", "-p", f"registered_model={model}",
                  "-p", f"marts_schema={shifted}")
        assert bad.code == 1, bad
        doc = bad.json()
        assert doc["error"]["ename"] == "DriftDetected"
        assert "spend_total: PSI" in doc["error"]["evalue"] and "avg_order_value: PSI" in doc["error"]["evalue"]
        assert {"spend_total", "avg_order_value"} <= set(doc["results"]["drifted_features"])
        assert "recency_days" not in doc["results"]["drifted_features"]  # only money was shifted
    finally:
        _drop(database_url, shifted)


def test_realised_error_once_the_horizon_has_passed(mart, names, champion):
    _, model = names
    score.score(model, marts_schema=mart, scoring_date="2024-08-01")  # horizon ends 2024-10-30, before the newest order
    score.score(model, marts_schema=mart, scoring_date="2024-12-01")  # horizon not yet passed
    report, _, _ = drift.check_model(model, marts_schema=mart)
    done = {r.scoring_date: r for r in report.realised}
    assert "2024-08-01" in done and "2024-12-01" in report.pending_dates
    realised = done["2024-08-01"]
    assert realised.mae > 0 and realised.test_mae and realised.ratio == pytest.approx(realised.mae / realised.test_mae)
    report.check()  # within 1.5x of the test MAE
    strict, _, _ = drift.check_model(model, marts_schema=mart, max_error_ratio=0.01)
    with pytest.raises(DriftDetected, match=r"predictions of 2024-08-01 \(v1\): realised MAE"):
        strict.check()


# ------------------------------------------------------------------------------------------------ serving


def test_served_predictions_equal_in_process_ones_and_the_server_is_gone(mart, names, champion, cli):
    _, model = names
    port = serve.free_port()
    res = cli("run", "serve_model", "-e", "dev", "--json", "-p", f"registered_model={model}",
              "-p", f"marts_schema={mart}", "-p", "requests=60", "-p", f"port={port}")
    assert res.code == 0, res
    served = res.json()["results"]["serving"]
    assert served["matched"] == served["requests"] == 60 and served["mismatches"] == []
    assert served["url"] == f"http://127.0.0.1:{port}" and served["p99_ms"] >= served["p50_ms"] > 0
    assert serve.serving_processes(port) == []


def test_the_server_is_stopped_when_a_cell_fails(mart, names, champion, cli):
    _, model = names
    port = serve.free_port()
    res = cli("run", "serve_model", "-e", "dev", "--json", "-p", f"registered_model={model}",
              "-p", f"marts_schema={mart}", "-p", "requests=20", "-p", f"port={port}", "-p", "max_p99_ms=0.0001")
    assert res.code == 1, res
    doc = res.json()
    assert doc["error"]["ename"] == "ServingError" and "max_p99_ms=0.0001" in doc["error"]["evalue"]
    assert doc["results"]["serving"]["pid"]  # it was running when the check failed
    assert serve.serving_processes(port) == []


def test_model_server_context_stops_the_whole_process_group(champion):
    _, logged = champion
    with pytest.raises(RuntimeError, match="boom"), serve.ModelServer(f"models:/{logged.registered_model}/1") as server:
        assert serve.serving_processes(server.port)  # control: the search finds the live server
        raise RuntimeError("boom")
    assert server.process.poll() is not None and serve.serving_processes(server.port) == []


# --------------------------------------------------------------------------- significance and rollback


def test_champion_decision_records_a_paired_significance_test(mart, names, champion):
    from mlflow import MlflowClient

    experiment, model = names
    challenger = train.train(mart, train.TrainParams(random_state=7))
    logged = train.log(challenger, experiment, model)
    kept = train.decide(challenger, logged, min_improvement=-1.0, significance_level=1e-12)
    assert not kept.promoted and kept.p_value is not None and kept.significant is False
    assert kept.test.startswith("wilcoxon") and "not significantly" in kept.reason
    assert MlflowClient().get_model_version(model, logged.version).tags["champion_p_value"]
    assert _alias(model) == "1"
    with pytest.raises(TrainingError, match=r"significance_level must be in \(0, 1\]"):
        train.decide(challenger, logged, min_improvement=0.0, significance_level=0.0)
    # any p-value below 1 passes at level 1: a second version is promoted, with its test recorded
    third = train.log(challenger, experiment, model)
    promoted = train.decide(challenger, third, min_improvement=-1.0, significance_level=1.0)
    assert promoted.promoted and promoted.p_value < 1.0 and _alias(model) == third.version
    assert "paired test p =" in promoted.reason


def test_rollback_dry_run_changes_nothing_and_a_real_one_moves_the_alias(names, champion, cli, db):
    _, model = names
    before = _alias(model)
    assert before != "1", "test_champion_decision_records_a_paired_significance_test promotes a later version"
    dry = cli("run", "rollback_model", "-e", "dev", "--json", "-p", f"registered_model={model}")
    assert dry.code == 0, dry
    plan = dry.json()["results"]["rollback"]
    assert plan["applied"] is False and plan["current"] == before and plan["target"] == "1" and plan["possible"]
    assert _alias(model) == before
    # bad input: no reason; nothing moves, and the failed run says why
    refused = cli("run", "rollback_model", "-e", "dev", "--json", "-p", f"registered_model={model}",
                  "-p", "dry_run=false")
    assert refused.code == 1 and "needs a reason" in refused.json()["error"]["evalue"]
    assert _alias(model) == before
    with pytest.raises(RollbackError, match=r"has no version 999"):
        registry.plan_rollback(model, to_version="999")
    real = cli("run", "rollback_model", "-e", "dev", "--json", "-p", f"registered_model={model}",
               "-p", "dry_run=false", "-p", "reason=forecasts too high since the last promotion")
    assert real.code == 0, real
    results = real.json()["results"]
    assert results["rollback"]["applied"] is True and results["champion_after"] == "1" and _alias(model) == "1"
    from mlflow import MlflowClient

    client = MlflowClient()
    target = client.get_model_version(model, "1").tags
    assert target["champion_decision"] == "rolled_back_to" and "forecasts too high" in target["champion_reason"]
    assert "forecasts too high" in client.get_model_version(model, before).tags["rolled_back_from"]
    assert '"to": "1"' in client.get_registered_model(model).tags["last_rollback"]
    row = db.execute("select results from stackbook.runs where id = %s", (real.json()["id"],)).fetchone()[0]
    assert row["rollback"]["reason"] == "forecasts too high since the last promotion"
