"""Prometheus metrics of the run ledger (``stackbook metrics [--out FILE] [--serve PORT]`` in ``cli.metrics``).

Metrics (labels ``runbook`` and ``env``; ``runbook`` is a runbook of the catalogue, ``runbooks/``, or
``(other)`` for every other name in the ledger summed together: notebooks run by path, runbooks since removed
or renamed. The number of series is bounded by the catalogue, not by the ledger: 100,000 distinct names once
made 400,000 series, 36 MB a scrape):

``stackbook_runs_total{status}``                  runs in the ledger by final state (a counter: rows only grow)
``stackbook_runs_running``                        runs in progress now
``stackbook_runs_waiting``                        runs stopped at a manual step now, until attested or cancelled
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

from pathlib import Path

from stackbook.core.files import atomic_write_text

PREFIX = "stackbook"
OTHER = "(other)"  # the runbook label of every name that is not in the catalogue

# Every query labels a row with its runbook when the name is in the catalogue (%(names)s), else with OTHER,
# so PostgreSQL does the summing and the result has at most (catalogue + 1) x envs x states rows.
_LABEL = "case when runbook = any(%(names)s) then runbook else %(other)s end"
_COUNTS = f"""select {_LABEL} as label, env, status, count(*) from stackbook.runs {{where}}
               group by 1, 2, 3 order by 1, 2, 3"""
_LAST = f"""select distinct on (label, env) label, env, status, duration_s, extract(epoch from finished_at)
              from (select {_LABEL} as label, * from stackbook.runs {{where}}) runs
             where finished_at is not null and status not in ('skipped', 'upstream_failed', 'refused', 'waiting')
             order by label, env, finished_at desc"""
_SUCCESS = f"""select {_LABEL} as label, env, max(extract(epoch from finished_at)) from stackbook.runs
                {{where}} {{and_}} status = 'succeeded' group by 1, 2 order by 1, 2"""


def catalogue_names() -> list[str]:
    """The runbook names of the catalogue (file stems under ``runbooks/``): the ones that get series of their own."""
    from stackbook.core import catalog

    return sorted({p.stem for p in catalog.paths()})


def _read_ledger(env: str | None) -> tuple[list, list, list]:
    from stackbook.run import db, ledger

    args = {"names": catalogue_names(), "other": OTHER, "env": env}
    where = "where env = %(env)s" if env else ""
    and_ = "and" if env else "where"
    with db.connect() as conn:
        ledger.ensure_schema(conn)
        counts = conn.execute(_COUNTS.format(where=where), args).fetchall()
        last = conn.execute(_LAST.format(where=where), args).fetchall()
        success = conn.execute(_SUCCESS.format(where=where, and_=and_), args).fetchall()
    return counts, last, success


class LedgerCollector:
    """A prometheus_client collector that reads the ledger at every collection."""

    def __init__(self, env: str | None = None):
        self.env = env

    def describe(self):
        return []  # no describe-time database access

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts, last, success = _read_ledger(self.env)
        total = CounterMetricFamily(f"{PREFIX}_runs", "Runs in the stackbook ledger by runbook, environment and state",
                                    labels=["runbook", "env", "status"])
        running = GaugeMetricFamily(f"{PREFIX}_runs_running", "Runs in progress by runbook and environment",
                                    labels=["runbook", "env"])
        waiting = GaugeMetricFamily(f"{PREFIX}_runs_waiting",
                                    "Runs waiting at a manual step (stackbook attest) by runbook and environment",
                                    labels=["runbook", "env"])
        for runbook, env, status, n in counts:
            if status in ("running", "waiting"):  # states a run leaves again: gauges, not the counter
                (running if status == "running" else waiting).add_metric([runbook, env], n)
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
        yield from (total, running, waiting, duration, finished, ok)


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
    return atomic_write_text(path, render(env), mode=0o644)  # node_exporter may run as another user


def serve(port: int, host: str = "127.0.0.1", env: str | None = None):
    """Serve /metrics in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry(env))
