"""Batch scoring: the champion's next-horizon spend forecast for every customer, into a marts table.

Why a table keyed by scoring date: consumers (a loyalty offer, a stock plan) read "the forecast
as of D" with SQL, and the drift check later compares those forecasts with what customers
actually spent once the horizon has passed. A scoring date D means the features as of the end
of D (every order up to and including that day); scoring D again, with the same or another
champion, replaces D's rows in one transaction, so a date never holds two sets of predictions.

The model is the version behind the registry alias ``champion`` at the time of scoring, loaded
through MLflow's pyfunc flavour (what ``mlflow models serve`` serves too), with the horizon it
was trained for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from stackbook.core.errors import ScoringError
from stackbook.run import db
from stackbook.train import model as train_model

PREDICTIONS_TABLE = "customer_spend_predictions"


@dataclass
class Champion:
    """The model version behind ``champion``: its number, the run it came from and its training settings."""

    registered_model: str
    version: str
    run_id: str
    horizon_days: int
    test_mae: float | None
    model: Any  # mlflow.pyfunc.PyFuncModel

    @property
    def uri(self) -> str:
        return f"models:/{self.registered_model}/{self.version}"


def champion(registered_model: str, version: str | None = None) -> Champion:
    """The champion of REGISTERED_MODEL (or VERSION of it), loaded; ScoringError when there is none."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    train_model.configure()
    client = MlflowClient()
    try:
        mv = (client.get_model_version(registered_model, version) if version
              else client.get_model_version_by_alias(registered_model, train_model.CHAMPION_ALIAS))
    except MlflowException:
        which = f"version {version}" if version else f"alias {train_model.CHAMPION_ALIAS!r}"
        raise ScoringError(f"registered model {registered_model!r} has no {which}: train one first "
                           "(stackbook run train_customer_model)") from None
    run = client.get_run(mv.run_id)
    model = mlflow.pyfunc.load_model(f"models:/{registered_model}/{mv.version}")
    return Champion(registered_model=registered_model, version=str(mv.version), run_id=mv.run_id,
                    horizon_days=int(run.data.params.get("horizon_days", 90)),
                    test_mae=run.data.metrics.get("test_mae"), model=model)


def cutoff_of(scoring_date: date) -> datetime:
    """The last moment of SCORING_DATE: features count every order of that day."""
    return datetime.combine(scoring_date, datetime.min.time()) + timedelta(days=1) - timedelta(microseconds=1)


def parse_date(text: str, orders) -> date:
    """``YYYY-MM-DD``, or the day of the newest order when TEXT is empty."""
    if not text:
        return orders["ordered_at"].max().date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ScoringError(f"scoring_date {text!r} is not a date: use YYYY-MM-DD, or leave it empty for the day "
                           "of the newest order") from None


def features_at(orders, scoring_date: date, horizon_days: int):
    """The model's features per customer as of the end of SCORING_DATE (the target column dropped)."""
    dataset, _ = train_model.build_dataset(orders, horizon_days, cutoff=cutoff_of(scoring_date))
    return dataset[train_model.FEATURES]


@dataclass
class Scored:
    """One scoring run: where the predictions went, for which date, with which model."""

    table: str
    scoring_date: str
    cutoff: str
    registered_model: str
    model_version: str
    rows: int
    replaced: int  # rows of an earlier scoring of the same date that were replaced
    scored_at: str
    seconds: float
    predictions: Any  # DataFrame: customer_id, prediction

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "predictions"}


def _ensure_table(conn, schema: str, table: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("""
        create table if not exists {}.{} (
            registered_model text not null,
            scoring_date date not null,
            customer_id text not null,
            prediction double precision not null,
            model_version text not null,
            horizon_days integer not null,
            cutoff timestamp not null,
            scored_at timestamptz not null,
            primary key (registered_model, scoring_date, customer_id)
        )""").format(sql.Identifier(schema), sql.Identifier(table)))


def write(conn, schema: str, table: str, champ: Champion, scoring_date: date, frame) -> tuple[int, str]:
    """Replace SCORING_DATE's predictions of the model by FRAME's in one transaction; (rows replaced, scored_at)."""
    from psycopg import sql

    scored_at = datetime.now(UTC)
    target = sql.Identifier(schema, table)
    with conn.transaction():
        _ensure_table(conn, schema, table)
        replaced = conn.execute(sql.SQL("delete from {} where registered_model = %s and scoring_date = %s")
                                .format(target), (champ.registered_model, scoring_date)).rowcount
        with conn.cursor().copy(sql.SQL("copy {} (registered_model, scoring_date, customer_id, prediction, "
                                        "model_version, horizon_days, cutoff, scored_at) from stdin")
                                .format(target)) as copy:
            for customer, prediction in zip(frame["customer_id"], frame["prediction"]):
                copy.write_row((champ.registered_model, scoring_date, customer, float(prediction), champ.version,
                                champ.horizon_days, cutoff_of(scoring_date), scored_at))
    return replaced, scored_at.isoformat()


def score(registered_model: str, *, marts_schema: str = "marts", scoring_date: str = "",
          table: str = PREDICTIONS_TABLE, database_url: str | None = None) -> Scored:
    """Score every customer who had ordered by SCORING_DATE with the champion, into ``<marts_schema>.<table>``."""
    import numpy as np
    import pandas as pd
    import psycopg

    started = time.perf_counter()
    champ = champion(registered_model)
    orders, _ = train_model.load_orders(marts_schema, database_url)
    day = parse_date(scoring_date, orders)
    try:
        features = features_at(orders, day, champ.horizon_days)
    except train_model.TrainingError as exc:
        raise ScoringError(f"nothing to score at {day}: {exc}") from None
    predictions = np.clip(np.asarray(champ.model.predict(features), dtype=float), 0.0, None)  # spend is never negative
    frame = pd.DataFrame({"customer_id": features.index.astype(str), "prediction": predictions})
    with psycopg.connect(database_url or db.url(), autocommit=True) as conn:
        replaced, scored_at = write(conn, marts_schema, table, champ, day, frame)
    return Scored(table=f"{marts_schema}.{table}", scoring_date=day.isoformat(), cutoff=str(cutoff_of(day)),
                  registered_model=registered_model, model_version=champ.version, rows=len(frame), replaced=replaced,
                  scored_at=scored_at, seconds=round(time.perf_counter() - started, 3), predictions=frame)


def stored(registered_model: str, *, marts_schema: str = "marts", table: str = PREDICTIONS_TABLE,
           scoring_date: str | None = None, database_url: str | None = None):
    """The stored predictions (all dates, or one) as a DataFrame; empty when the table does not exist yet."""
    import pandas as pd
    import psycopg
    from psycopg import sql

    columns = ["scoring_date", "customer_id", "prediction", "model_version", "horizon_days", "cutoff", "scored_at"]
    query = sql.SQL("select {} from {} where registered_model = %s").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(marts_schema, table))
    args: list[Any] = [registered_model]
    if scoring_date:
        query += sql.SQL(" and scoring_date = %s")
        args.append(date.fromisoformat(scoring_date))
    with psycopg.connect(database_url or db.url(), autocommit=True) as conn:
        try:
            rows = conn.execute(query + sql.SQL(" order by scoring_date, customer_id"), args).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
    return pd.DataFrame(rows, columns=columns)
