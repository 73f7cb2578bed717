"""From a finished run (or pipeline run, or a test) to messages on the routed channels, recorded.

``after_run(record, env)`` is what ``stackbook run`` calls (through the package's
front door, ``stackbook.notify.after_run``, which returns at once when the
environment has no routes) once the ledger row is final: it reads the
environment's routes, decides the events the run triggers (the
previous finished run of the same runbook and environment tells ``recovered``),
builds one message per route that covers the runbook and asks for one of them,
sends it to every channel of the route, records one row per channel in
``stackbook.notifications`` and logs each failure (scrubbed) to standard error.
It never raises: a notification problem is reported, and the run's status and
exit code stay what they were.

Runs of the same pipeline run (earlier attempts of a retried task) do not count
as the previous run: a task that failed once and then succeeded was never
announced as failed, so its success is not a recovery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stackbook.core import environments
from stackbook.core.environments import Environment
from stackbook.core.errors import NotifyConfigError, SecretError, StackbookError
from stackbook.notify import deliver, events, message, routes, store
from stackbook.notify.deliver import Delivery
from stackbook.notify.events import RunView
from stackbook.notify.message import Message
from stackbook.run import scrub

log = logging.getLogger("stackbook.notify")


def environment(env: Environment | str) -> Environment:
    return env if isinstance(env, Environment) else environments.load(str(env))


def channel_secrets(env: Environment) -> dict[str, str]:
    """The secrets the environment's routes hold (resolved URLs, ``${VAR}`` values), for a run's scrubber.

    Raises ``NotifyConfigError`` (exit 2) when a route is wrong, so a bad route stops a run before it starts;
    a ``${VAR}`` that is not set is only a warning here (the channel's deliveries are recorded as failed).
    """
    if not routes.configured(env):
        return {}
    route_list = routes.parse(env, strict=False)
    for channel in (c for r in route_list for c in r.channels if c.problem):
        log.warning("%s; its messages will be recorded as failed", channel.problem)
    return routes.secrets(route_list)


@contextmanager
def _connection(conn=None) -> Iterator[Any]:
    if conn is not None:
        yield conn
        return
    from stackbook.run import ledger

    with ledger.session(reap_stale=False) as own:
        yield own


def _runbook_secrets(run: RunView, env: Environment) -> dict[str, str]:
    """The runbook's declared secrets that are set: scrubbed again from messages (the ledger row already is)."""
    if not run.path:
        return {}
    try:
        meta = (json.loads(Path(run.path).read_text(encoding="utf-8")).get("metadata") or {}).get("stackbook") or {}
    except (OSError, ValueError):
        return {}
    names = [n for n in [*(meta.get("secrets") or []), *(meta.get("optional_secrets") or [])] if isinstance(n, str)]
    try:
        return scrub.collect_optional(names, env.name) if names else {}
    except SecretError:
        return {}


def scrubber_for(route_list: list[routes.Route], env: Environment, run: RunView | None = None,
                 conn=None) -> scrub.Scrubber:
    """The routes' secrets, the run's declared ones and the database password (from CONN, when there is one)."""
    values = {**(_runbook_secrets(run, env) if run else {}), **routes.secrets(route_list)}
    password = conn.info.password if conn is not None else None
    if password:
        values.setdefault("DATABASE_PASSWORD", password)
    return scrub.Scrubber(values)


def _scrubbed(msg: Message, scrubber: scrub.Scrubber) -> Message:
    return Message(event=msg.event, title=scrubber.text(msg.title), body=scrubber.text(msg.body))


_HISTORY_SQL = f"""
    select id, runbook, env, status, error, started_at, finished_at, output, path, reason
      from stackbook.runs
     where runbook = %(runbook)s and env = %(env)s and id <> %(id)s
       and status not in ('running', 'skipped', 'upstream_failed', 'refused')
       and started_at <= coalesce((select started_at from stackbook.runs where id = %(id)s), now())
       and (%(pipeline_run_id)s::text is null or pipeline_run_id is distinct from %(pipeline_run_id)s)
     order by started_at desc, id desc limit {message.RECOVERY_LOOKBACK}"""


def history(conn, run: RunView) -> list[RunView]:
    """The finished runs before RUN of the same runbook and environment, newest first."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_HISTORY_SQL, {"runbook": run.runbook, "env": run.env, "id": run.id,
                                          "pipeline_run_id": run.pipeline_run_id}).fetchall()
    return [RunView.of(r) for r in rows]


def _failures(earlier: list[RunView]) -> list[RunView]:
    out = []
    for run in earlier:
        if not run.failed:
            break
        out.append(run)
    return out


def _messages(run: RunView, env: Environment, wanted: list[routes.Route], earlier: list[RunView]):
    previous = earlier[0] if earlier else None
    candidates = events.of_run(run, previous)
    pairs = []
    for route in wanted:
        event = route.first_wanted(candidates)
        if event is not None:
            msg = message.for_run(event, run, env, ended=_failures(earlier) if event == "recovered" else None)
            pairs += [(channel, msg) for channel in route.channels]
    return pairs


def report(deliveries: list[Delivery], subject: str) -> None:
    """Each failed delivery on standard error (already scrubbed); the row has it too."""
    for d in deliveries:
        if d.sent:
            log.info("notified route %d %s (%s) about %s", d.route, d.channel, d.event, subject)
        else:
            log.warning("notification of %s (%s) to route %d %s failed after %d attempt(s): %s; recorded, "
                        "the run is unaffected", subject, d.event, d.route, d.channel, d.attempts, d.error)


def send_recorded(conn, pairs: list[tuple[routes.Channel, Message]], scrubber: scrub.Scrubber, *,
                  run_id: str | None, runbook: str | None, env: str) -> list[Delivery]:
    """Scrub, send, and record one row per channel."""
    deliveries = deliver.send_all([(c, _scrubbed(m, scrubber)) for c, m in pairs], scrubber)
    store.record(conn, deliveries, run_id=run_id, runbook=runbook, env=env)
    return deliveries


def _after_failure(run: RunView, env: Environment, route_list: list[routes.Route], wanted: list[routes.Route],
                   conn=None) -> list[Delivery]:
    """What a failure triggers does not depend on the runs before it: the messages leave at once, and the
    database is reached while they travel (Apprise's import included, about 0.1 s of the 0.2 s a failed run
    may spend on its notifications). The row's fields were scrubbed by the runner, the database password
    included; the messages are scrubbed again of every other secret."""
    t0 = time.monotonic()
    scrubber = scrubber_for(route_list, env, run)
    sending = deliver.start([(c, _scrubbed(m, scrubber)) for c, m in _messages(run, env, wanted, [])], scrubber)
    if not sending:
        return []
    with _connection(conn) as c:
        deliveries = deliver.finish(sending, t0)
        store.record(c, deliveries, run_id=run.id, runbook=run.runbook, env=env.name)
    report(deliveries, f"run {run.id} of {run.runbook}")
    return deliveries


def _after_run(record: Any, env: Environment, conn=None) -> list[Delivery]:
    run = RunView.of(record)
    route_list = routes.parse(env, strict=False)
    wanted = [r for r in route_list if r.matches(run.runbook)]
    if not wanted:
        return []
    if run.failed:
        return _after_failure(run, env, route_list, wanted, conn)
    with _connection(conn) as c:
        pairs = _messages(run, env, wanted, history(c, run))
        if not pairs:
            return []
        deliveries = send_recorded(c, pairs, scrubber_for(route_list, env, run, c), run_id=run.id,
                                   runbook=run.runbook, env=env.name)
    report(deliveries, f"run {run.id} of {run.runbook}")
    return deliveries


def _guarded(what: str, fn, *args) -> list[Delivery]:
    """The boundary between a finished run and its notifications: nothing here may change the run's outcome.

    What can go wrong is reported on standard error and the caller goes on: the run is final and recorded,
    and a delivery that failed is on its row. An exception of a kind not expected here is a bug: it is
    reported as one, and still not raised into the run's exit code.
    """
    import psycopg

    try:
        return fn(*args)
    except (StackbookError, OSError, psycopg.Error) as exc:  # a wrong route, the database, the network
        log.warning("notifications of %s were not sent: %s", what, " ".join(str(exc).split()))
    except Exception as exc:  # noqa: BLE001 - see above: reported as a bug, never raised into the run
        log.error("notifications of %s failed (a bug in stackbook.notify, please report it): %s: %s", what,
                  type(exc).__name__, " ".join(str(exc).split()))
    return []


def after_run(record: Any, env: Environment, *, conn=None) -> list[Delivery]:
    """Notify the routes of ENV that cover this finished run; never raises (see the module docstring).

    RECORD is a ``RunRecord`` or a mapping of its fields. ``stackbook.notify.after_run`` is the front door:
    it loads ENV by name and returns at once when it has no routes.
    """
    return _guarded(f"run {RunView.of(record).id if record else None}", _after_run, record, env, conn)


def _after_cancelled(run_id: str, env: Environment) -> list[Delivery]:
    from stackbook.run import ledger

    with ledger.session(reap_stale=False) as conn:
        record = ledger.get_run(conn, run_id)
        return _after_run(record, env, conn) if record is not None else []


def after_cancelled(run_id: str, env: Environment) -> list[Delivery]:
    """``after_run`` for a run that ended with Ctrl-C or SIGTERM (the runner raises; its row says ``cancelled``)."""
    return _guarded(f"run {run_id}", _after_cancelled, run_id, env)


def _after_pipeline(summary: dict, env: Environment, conn=None) -> list[Delivery]:
    route_list = routes.parse(env, strict=False)
    failed = set(summary.get("failed") or [])
    names = [summary.get("pipeline") or "", *(t.get("runbook") or "" for t in summary.get("tasks", [])
                                               if t.get("name") in failed)]
    wanted = [r for r in route_list if "failed" in r.events and r.matches(*names)]
    if not wanted:
        return []
    msg = message.for_pipeline(summary, env)
    pairs = [(channel, msg) for route in wanted for channel in route.channels]
    with _connection(conn) as c:
        deliveries = send_recorded(c, pairs, scrubber_for(route_list, env, conn=c),
                                   run_id=summary.get("pipeline_run_id"),
                                   runbook=f"pipeline:{summary.get('pipeline')}", env=env.name)
    report(deliveries, f"pipeline run {summary.get('pipeline_run_id')}")
    return deliveries


def after_pipeline(summary: dict, env: Environment, *, conn=None) -> list[Delivery]:
    """One summary message about a failed pipeline run (its failed tasks were told one by one); never raises."""
    if summary.get("status") != "failed":
        return []
    return _guarded(f"pipeline run {summary.get('pipeline_run_id')}", _after_pipeline, summary, env, conn)


def test_routes(env: Environment | str, route: int | None = None) -> list[Delivery]:
    """``stackbook notify test``: a test message through every channel of every route (or of route ROUTE).

    Raises ``NotifyConfigError`` when there are no routes, ROUTE does not exist or a route is wrong; the
    deliveries are returned, not recorded (they are about no run).
    """
    env = environment(env)
    route_list = routes.parse(env)
    where = env.path or f"{env.name}.yml"
    if not route_list:
        raise NotifyConfigError(f"{where} has no notify routes: add a `notify:` list (README, Notifications)",
                                env=env.name)
    if route is not None and not 0 <= route < len(route_list):
        raise NotifyConfigError(f"{where} has no notify route {route}: it has {len(route_list)} "
                                f"(0 to {len(route_list) - 1})", env=env.name)
    chosen = route_list if route is None else [route_list[route]]
    scrubber = scrubber_for(route_list, env)
    pairs = [(c, _scrubbed(message.for_test(env, r, c.label), scrubber)) for r in chosen for c in r.channels]
    return deliver.send_all(pairs, scrubber)
