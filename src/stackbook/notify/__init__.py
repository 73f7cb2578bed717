"""Notifications: tell people when a runbook fails, recovers or goes stale.

A scheduled runbook that fails is in the ledger, the book and ``/metrics``, but a
person finds out only by looking. This package tells them: routes in the
environment file (``notify:``) send messages through Apprise (Slack, Teams,
email, PagerDuty, Opsgenie, webhooks ...) after a run is recorded,
``stackbook check`` tells stale and failing runbooks once per episode, and
``stackbook metrics --rules`` writes Prometheus alerting rules for those who
alert from Prometheus instead.

Modules, one concern each:

- ``events``: the events a route asks for (``@register(Event(...))``) and ``RunView``
- ``routes``: the ``notify:`` list checked, ``${VAR}`` resolved, channels named without their URL
- ``channels``: which Apprise plugin serves a scheme (``register(ChannelKind(...))``)
- ``message``: the title and the plain text of each message
- ``deliver``: Apprise with a short timeout and bounded retries, one ``Delivery`` per channel
- ``store``: the ``stackbook.notifications`` and ``stackbook.notify_episodes`` tables
- ``dispatch``: ``after_run``, ``after_pipeline``, ``test_routes``: routes to recorded deliveries
- ``check``: ``stackbook check`` and its episodes
- ``rules``: Prometheus alerting rules (``@alert(Alert(...))``)
- ``metrics``: ``stackbook_notifications_total`` beside the ledger's metrics

The functions here are the package's front door: they look at the
environment's ``notify`` key and import the rest (``dispatch``, and through it
Apprise, only when a message is sent) when there are routes. A run in an
environment without routes pays that one dictionary lookup.
"""

from __future__ import annotations

import logging
from typing import Any

from stackbook.core import environments
from stackbook.core.environments import Environment

log = logging.getLogger("stackbook.notify")


def _with_routes(env: Environment | str) -> Environment | None:
    """ENV when it has routes, else None; nothing else of the package is imported to find out."""
    try:
        env = env if isinstance(env, Environment) else environments.load(str(env))
    except environments.EnvironmentFileError as exc:
        log.warning("notifications not sent: %s", exc)
        return None
    return env if env.data.get("notify") else None


def channel_secrets(env: Environment | str) -> dict[str, str]:
    """The secrets of ENV's routes, for a run's scrubber; ``NotifyConfigError`` (exit 2) when a route is wrong."""
    env = env if isinstance(env, Environment) else environments.load(str(env))
    if not env.data.get("notify"):
        return {}
    from stackbook.notify import dispatch

    return dispatch.channel_secrets(env)


def after_run(record: Any, env: Environment | str, *, conn=None) -> list:
    """Notify the routes that cover a finished run (``dispatch.after_run``); never raises."""
    env = _with_routes(env)
    if env is None:
        return []
    from stackbook.notify import dispatch

    return dispatch.after_run(record, env, conn=conn)


def after_cancelled(run_id: str | None, env: Environment | str) -> list:
    """``after_run`` for a run that ended with Ctrl-C or SIGTERM; never raises."""
    env = _with_routes(env) if run_id else None
    if env is None:
        return []
    from stackbook.notify import dispatch

    return dispatch.after_cancelled(run_id, env)


def after_pipeline(summary: dict, env: Environment | str, *, conn=None) -> list:
    """One summary message when a pipeline run failed (``dispatch.after_pipeline``); never raises."""
    env = _with_routes(env) if summary.get("status") == "failed" else None
    if env is None:
        return []
    from stackbook.notify import dispatch

    return dispatch.after_pipeline(summary, env, conn=conn)


def test_routes(env: Environment | str, route: int | None = None) -> list:
    """``stackbook notify test`` (``dispatch.test_routes``)."""
    from stackbook.notify import dispatch

    return dispatch.test_routes(env, route)


__all__ = ["after_run", "after_cancelled", "after_pipeline", "channel_secrets", "test_routes"]
