"""Usage tracking off: the environment every process stackbook starts gets.

dbt, MLflow, ploomber and Great Expectations report usage or look online for new versions unless
told not to; nothing stackbook runs may wait on an outside host. Kernels,
the book build, cron lines, Airflow tasks and pods all get these values.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF = {
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DO_NOT_TRACK": "1",
    "PLOOMBER_STATS_ENABLED": "false",
    "PLOOMBER_VERSION_CHECK_DISABLED": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",  # Great Expectations 1.x (its data contexts read it when not configured)
}


def telemetry_off(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Switch usage tracking off in ``environ`` (this process's environment by default); returns it."""
    target = os.environ if environ is None else environ
    target.update(TELEMETRY_OFF)
    return target
