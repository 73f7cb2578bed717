"""Platform health checks used by the ``platform_check`` runbook."""

from __future__ import annotations

import os
import time
from typing import Any

from stackbook.core import environments


def database() -> dict[str, Any]:
    """Connect, time a round trip, and report what answered."""
    from stackbook.run import db

    t0 = time.perf_counter()
    with db.connect() as conn:
        row = conn.execute(
            "select current_setting('server_version'), current_database(), current_user, "
            "coalesce(current_setting('ssl', true), 'off')"
        ).fetchone()
        conn.execute("select 1").fetchone()
    return {
        "server_version": row[0],
        "database": row[1],
        "user": row[2],
        "ssl": row[3],
        "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


def kernel() -> dict[str, Any]:
    """What the kernel runs: Python, stackbook, and whether it runs under the runner."""
    import sys

    import stackbook

    return {
        "python": sys.version.split()[0],
        "stackbook": stackbook.__version__,
        "stackbook_path": os.path.dirname(stackbook.__file__),
        "run_id": os.environ.get("STACKBOOK_RUN_ID"),
        "env": environments.current_name(),
    }


def catalogue() -> list[dict[str, Any]]:
    from stackbook.core import catalog

    return [rb.summary() for rb in catalog.all_runbooks()]
