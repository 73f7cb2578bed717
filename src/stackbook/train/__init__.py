"""Training: the customer spend model (``stackbook.train.model``), for ``runbooks/train``.

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
