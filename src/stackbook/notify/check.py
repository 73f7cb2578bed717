"""``stackbook check -e ENV``: which runbooks are stale or failing, told once per episode.

Meant for cron or a CronJob (``stackbook schedule`` adds it to what it
generates) and as a health probe: exit 0 when every watched runbook is fresh, 1
otherwise. A runbook's state is the book's (``core.freshness``):
*fresh*, *failing* (its latest finished run did not succeed), *stale* (no
success within its freshness window: ``freshness_hours``, else twice its cron
interval) or never run. A runbook with a window that never ran is stale; one
without a window that never ran is on demand and not watched.

The first check that finds a runbook stale or failing opens an *episode*
(``stackbook.notify_episodes``) and sends one message to the routes that cover
the runbook and ask for ``stale`` (a failing runbook: also for the failed run's
own event); later checks stay quiet until a check finds the runbook fresh
again, which closes the episode. A failing runbook whose failed run was already
announced by the runner gets no second message, and a message that reached no
channel is tried again by the next check. Rows left ``running`` by a runner that
died are reaped first, so a killed runner's run is found here and told.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from stackbook.core import catalog, environments, freshness
from stackbook.core.environments import Environment
from stackbook.notify import dispatch, message, routes, store
from stackbook.notify.deliver import Delivery
from stackbook.notify.events import RunView

HEALTHY = ("fresh", "on demand")
_COLS = "id, runbook, env, status, error, started_at, finished_at, output, path, reason"
_STATE_SQL = f"""
    select r.* from unnest(%(names)s::text[]) as n(name) cross join lateral (
        (select {_COLS} from stackbook.runs where env = %(env)s and runbook = n.name
            and status not in ('running', 'skipped') order by started_at desc, id desc limit 1)
        union
        (select {_COLS} from stackbook.runs where env = %(env)s and runbook = n.name and status = 'succeeded'
          order by started_at desc, id desc limit 1)) r"""


@dataclass
class RunbookState:
    runbook: str
    state: str  # fresh, failing, stale, on demand
    detail: str
    window_hours: float | None
    path: str | None = None
    latest: RunView | None = None
    last_success: RunView | None = None
    episode_since: datetime | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY

    def to_json(self) -> dict[str, Any]:
        return {"runbook": self.runbook, "state": self.state, "detail": self.detail,
                "window_hours": self.window_hours, "latest": _run_json(self.latest),
                "last_success": _run_json(self.last_success),
                "episode_since": _iso(self.episode_since), "notified": [d.to_json() for d in self.deliveries]}


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _run_json(run: RunView | None) -> dict | None:
    return None if run is None else {"id": run.id, "status": run.status, "finished_at": _iso(run.finished_at)}


@dataclass
class CheckReport:
    env: str
    checked_at: datetime
    runbooks: list[RunbookState]

    @property
    def healthy(self) -> bool:
        return all(r.healthy for r in self.runbooks)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "checked_at": self.checked_at.isoformat(), "healthy": self.healthy,
                "exit_code": self.exit_code, "runbooks": [r.to_json() for r in self.runbooks]}


def _hours(value: float) -> str:
    return f"{value:g} h"


def _state(rb, rows: list[dict], env: str, now: datetime) -> RunbookState:
    fr = freshness.freshness(rb.metadata, rows, env, now)
    latest = RunView.of(fr.latest) if fr.latest else None
    success = RunView.of(fr.last_success) if fr.last_success else None
    state, hours = fr.state, fr.window_hours
    if state == "never":
        state, detail = (("stale", f"never succeeded in {env} (freshness window {_hours(hours)})") if hours
                         else ("on demand", "never run; no schedule or freshness window"))
    elif state == "failing":
        detail = f"its latest run {latest.id} {latest.status}"
    elif state == "stale":
        age = (now - (success.finished_at or success.started_at)).total_seconds() if success else None
        detail = (f"no success within its freshness window of {_hours(hours)}"
                  + (f" (last success {message.duration(age)} ago)" if age is not None else ""))
    else:
        detail = "latest run succeeded" + (f" within {_hours(hours)}" if hours else "")
    return RunbookState(runbook=rb.name, state=state, detail=detail, window_hours=hours, path=str(rb.path),
                        latest=latest, last_success=success)


def states(conn, env: str, patterns: list[str] | None = None, now: datetime | None = None) -> list[RunbookState]:
    """The state of every runbook of the catalogue (or those matching PATTERNS) in ENV."""
    from psycopg.rows import dict_row

    now = now or datetime.now(UTC)
    runbooks = [rb for rb in catalog.all_runbooks()
                if not patterns or any(fnmatch.fnmatchcase(rb.name, p) for p in patterns)]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_STATE_SQL, {"names": [rb.name for rb in runbooks], "env": env}).fetchall()
    by_runbook: dict[str, list[dict]] = {}
    for row in rows:
        by_runbook.setdefault(row["runbook"], []).append(row)
    return [_state(rb, by_runbook.get(rb.name, []), env, now) for rb in sorted(runbooks, key=attrgetter("name"))]


def _pairs(st: RunbookState, env: Environment, route_list: list[routes.Route]):
    """The message of one stale or failing runbook, for the routes that ask for it."""
    failing = st.state == "failing"
    candidates = [st.latest.status, "stale"] if failing else ["stale"]
    msg = message.for_stale(st.runbook, env, st.state, st.detail, st.latest, st.last_success, st.path)
    pairs = []
    for route in route_list:
        event = route.first_wanted(candidates) if route.matches(st.runbook) else None
        if event is not None:
            pairs += [(c, replace(msg, event=event)) for c in route.channels]
    return pairs


def _tell(conn, st: RunbookState, env: Environment, route_list: list[routes.Route]) -> None:
    """Open (or keep) the episode; the first check of the episode notifies."""
    episode = store.open_episode(conn, st.runbook, env.name, st.state, st.latest.id if st.latest else None)
    st.episode_since = episode["opened_at"]
    if not store.claim(conn, episode["id"]):
        return  # told already (or another check is telling)
    if st.state == "failing" and store.sent_about(conn, st.latest.id):
        return  # the runner announced this failure
    pairs = _pairs(st, env, route_list)
    if not pairs:
        return
    run_id = st.latest.id if st.state == "failing" else None
    scrubber = dispatch.scrubber_for(route_list, env, conn=conn)
    st.deliveries = dispatch.send_recorded(conn, pairs, scrubber, run_id=run_id, runbook=st.runbook, env=env.name)
    dispatch.report(st.deliveries, f"{st.runbook} ({st.state})")
    if not any(d.sent for d in st.deliveries):
        store.unclaim(conn, episode["id"])


def check(env_name: str, patterns: list[str] | None = None, now: datetime | None = None) -> CheckReport:
    """Check ENV: every watched runbook's state, episodes opened and closed, the first check of one notifies."""
    from stackbook.run import ledger

    env = environments.load(env_name)
    route_list = routes.parse(env)  # a wrong route is an error before anything is recorded
    now = now or datetime.now(UTC)
    with ledger.session() as conn:
        store.ensure_schema(conn)
        found = states(conn, env.name, patterns, now)
        episodes = store.open_episodes(conn, env.name)
        for st in found:
            if st.healthy:
                if st.runbook in episodes:
                    store.close_episode(conn, episodes[st.runbook]["id"])
            else:
                _tell(conn, st, env, route_list)
    return CheckReport(env=env.name, checked_at=now, runbooks=found)
