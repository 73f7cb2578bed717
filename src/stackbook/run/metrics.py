"""Prometheus metrics of the run ledger (``stackbook metrics [--out FILE] [--serve PORT]`` in ``cli.metrics``).

Metrics (labels ``runbook`` and ``env``):

``stackbook_runs_total{status}``                  runs in the ledger by final state (a counter: rows only grow)
``stackbook_runs_running``                        runs in progress now
``stackbook_last_run_duration_seconds``           wall time of the latest finished run (label ``status``: its state)
``stackbook_last_run_timestamp_seconds``          when the latest finished run ended (Unix time)
``stackbook_last_success_timestamp_seconds``      when the latest successful run ended (Unix time)

``--out FILE`` writes the Prometheus text format for node_exporter's textfile
collector (``--collector.textfile.directory``; the file is replaced atomically,
so run it from cron after each schedule); ``--serve PORT`` answers
``GET /metrics`` on 127.0.0.1 (``--host`` to change), reading the ledger at
every scrape. Alerting on staleness is then one rule:
``time() - stackbook_last_success_timestamp_seconds > 86400``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PREFIX = "stackbook"


class LedgerCollector:
    """A prometheus_client collector that reads the ledger at every collection."""

    def __init__(self, env: str | None = None):
        self.env = env

    def describe(self):
        return []  # no describe-time database access

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from stackbook.run import db, ledger

        where, args = "", ()
        if self.env:
            where, args = "where env = %s", (self.env,)
        with db.connect() as conn:
            ledger.ensure_schema(conn)
            counts = conn.execute(f"select runbook, env, status, count(*) from stackbook.runs {where} "
                                  "group by 1, 2, 3 order by 1, 2, 3", args).fetchall()
            last = conn.execute(
                f"""select distinct on (runbook, env) runbook, env, status, duration_s, extract(epoch from finished_at)
                      from stackbook.runs {where + (' and' if where else 'where')} finished_at is not null
                       and status not in ('skipped', 'upstream_failed')
                     order by runbook, env, finished_at desc""", args).fetchall()
            success = conn.execute(
                f"""select runbook, env, max(extract(epoch from finished_at)) from stackbook.runs
                     {where + (' and' if where else 'where')} status = 'succeeded' group by 1, 2 order by 1, 2""",
                args).fetchall()
        total = CounterMetricFamily(f"{PREFIX}_runs", "Runs in the stackbook ledger by runbook, environment and state",
                                    labels=["runbook", "env", "status"])
        running = GaugeMetricFamily(f"{PREFIX}_runs_running", "Runs in progress by runbook and environment",
                                    labels=["runbook", "env"])
        for runbook, env, status, n in counts:
            if status == "running":
                running.add_metric([runbook, env], n)
            else:
                total.add_metric([runbook, env, status], n)
        duration = GaugeMetricFamily(f"{PREFIX}_last_run_duration_seconds",
                                     "Wall time of the latest finished run, labelled with its state",
                                     labels=["runbook", "env", "status"])
        finished = GaugeMetricFamily(f"{PREFIX}_last_run_timestamp_seconds",
                                     "Unix time when the latest finished run ended", labels=["runbook", "env"])
        for runbook, env, status, dur, ts in last:
            duration.add_metric([runbook, env, status], float(dur or 0))
            finished.add_metric([runbook, env], float(ts))
        ok = GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                               "Unix time when the latest successful run ended", labels=["runbook", "env"])
        for runbook, env, ts in success:
            ok.add_metric([runbook, env], float(ts))
        yield from (total, running, duration, finished, ok)


def registry(env: str | None = None):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(env))
    return reg


def render(env: str | None = None) -> str:
    """The metrics in Prometheus text format."""
    from prometheus_client import generate_latest

    return generate_latest(registry(env)).decode()


def write(path: Path | str, env: str | None = None) -> Path:
    """Write the metrics to PATH atomically (node_exporter must never read half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(env)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def serve(port: int, host: str = "127.0.0.1", env: str | None = None):
    """Serve /metrics in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry(env))
