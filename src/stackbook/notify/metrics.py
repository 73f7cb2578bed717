"""The notifications in Prometheus's text format, beside the ledger's metrics (``stackbook metrics``).

``stackbook_notifications_total{runbook, env, event, status}`` counts the rows of
``stackbook.notifications``: deliveries ``sent`` and ``failed``. For every
(runbook, env, event) that has rows, both statuses are exported (zero when there
are none), so the ``failed`` series exists before the first failure and
``increase()`` sees that failure: a counter series that appears at 1 shows no
increase. Runbook labels are bounded as the ledger's are (``run.metrics``): a
runbook of the catalogue, else ``(other)`` (pipelines' summaries, notebooks run
by path).

``registry``, ``render``, ``write`` and ``serve`` are those of ``run.metrics`` with this
collector added: what ``stackbook metrics`` exposes (the run layer cannot import
this package, so the addition is made here).
"""

from __future__ import annotations

NAME = "stackbook_notifications"
_SQL = """select case when runbook = any(%(names)s) then runbook else %(other)s end as label, env, event,
                 count(*) filter (where status = 'sent'), count(*) filter (where status = 'failed')
            from stackbook.notifications {where} group by 1, 2, 3 order by 1, 2, 3"""


class NotificationCollector:
    """A prometheus_client collector that reads ``stackbook.notifications`` at every collection."""

    def __init__(self, env: str | None = None):
        self.env = env

    def describe(self):
        return []  # no describe-time database access

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        from stackbook.notify import store
        from stackbook.run import db
        from stackbook.run.metrics import OTHER, catalogue_names

        where = "where env = %(env)s" if self.env else ""
        with db.connect() as conn:
            store.ensure_schema(conn)
            rows = conn.execute(_SQL.format(where=where),
                                {"names": catalogue_names(), "other": OTHER, "env": self.env}).fetchall()
        total = CounterMetricFamily(NAME, "Notification deliveries by runbook, environment, event and outcome",
                                    labels=["runbook", "env", "event", "status"])
        for runbook, env, event, sent, failed in rows:
            total.add_metric([runbook, env, event, "sent"], sent)
            total.add_metric([runbook, env, event, "failed"], failed)
        yield total


def registry(env: str | None = None):
    """The ledger's collector (``run.metrics``) and this one: what ``stackbook metrics`` exposes."""
    from stackbook.run import metrics as ledger_metrics

    reg = ledger_metrics.registry(env)
    reg.register(NotificationCollector(env))
    return reg


def render(env: str | None = None) -> str:
    """Every stackbook metric in Prometheus text format."""
    from prometheus_client import generate_latest

    return generate_latest(registry(env)).decode()


def write(path, env: str | None = None):
    """Write the metrics to PATH atomically (node_exporter must never read half a file)."""
    from stackbook.core.files import atomic_write_text

    return atomic_write_text(path, render(env), mode=0o644)  # node_exporter may run as another user


def serve(port: int, host: str = "127.0.0.1", env: str | None = None):
    """Serve /metrics in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry(env))
