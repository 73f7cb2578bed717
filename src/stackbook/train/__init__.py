"""Training and the model's life after it, for ``runbooks/train``.

- ``model``: the customer spend model: data, fit, MLflow tracking, the champion decision (with its paired test)
- ``score``: batch prediction with the champion into a marts table, one set per scoring date
- ``drift``: feature drift against the champion's training data, realised error of earlier predictions
- ``serve``: ``mlflow models serve`` of a version on 127.0.0.1, REST smoke test and latency
- ``registry``: rolling the ``champion`` alias back, planned first

The names a runbook calls are re-exported here, so ``from stackbook import train`` and
``train.fit(...)`` keep working.
"""

from stackbook.train.model import (
    TrainParams,
    build_dataset,
    configure,
    current_champion,
    decide,
    describe_store,
    fit,
    load_orders,
    log,
    pinned_requirements,
    plot_feature_importance,
    plot_predictions,
    summary,
)

__all__ = ["TrainParams", "build_dataset", "configure", "current_champion", "decide", "describe_store", "fit",
           "load_orders", "log", "pinned_requirements", "plot_feature_importance", "plot_predictions", "summary"]
