"""The events a ``notify:`` route can ask for, registered in one place.

Each event is declared with ``@register(Event(...))``; an event the runner decides
from a finished ledger row carries the function that decides it (``trigger(run,
previous)``, where ``previous`` is the latest earlier finished run of the same
runbook in the same environment). ``stale`` has no trigger: ``stackbook check``
finds it. The registry order is the order of preference when a run matches
several events a route asks for (``recovered`` before ``succeeded``), so a route
gets at most one message per run. ``waiting`` exists only when the ledger knows
that state (runbooks with manual steps).

``RunView`` is the one shape the notify package reads a run in: the ledger's
``RunRecord``, or a plain mapping of the same fields (a ``--json`` document, a
row read with psycopg's dict rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stackbook.run import ledger

FAILED_STATES = ("failed", "timed_out", "cancelled")  # a finished run that did not succeed


@dataclass(frozen=True)
class Event:
    name: str
    summary: str  # one line for help texts and the README
    source: str  # "run": decided from a finished run; "check": found by `stackbook check`
    kind: str  # Apprise's notify type: info, success, warning, failure
    mark: str  # the first characters of the title: what a phone's lock screen shows first


EVENTS: dict[str, Event] = {}
TRIGGERS: dict[str, Callable[[RunView, RunView | None], bool]] = {}


class register:  # noqa: N801 - used as the decorator ``@register(Event(...))``, like the audit's
    """Declare an event; used as a decorator, the function decides when a finished run triggers it."""

    def __init__(self, event: Event):
        if event.name in EVENTS:
            raise ValueError(f"duplicate notify event {event.name!r}")
        EVENTS[event.name] = event
        self.event = event

    def __call__(self, trigger: Callable[[RunView, RunView | None], bool]) -> Callable:
        TRIGGERS[self.event.name] = trigger
        return trigger


def _field(record: Any, name: str, default: Any = None) -> Any:
    value = record.get(name, default) if isinstance(record, Mapping) else getattr(record, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class RunView:
    """The fields of a run a message needs, from a ``RunRecord`` or a mapping of the same names."""

    id: str
    runbook: str
    env: str
    status: str
    error: dict = field(default_factory=dict)
    duration_s: float | None = None
    output: str | None = None
    path: str | None = None
    reason: str | None = None
    approved_by: str | None = None
    approval_id: str | None = None  # the recorded approval the run consumed (``stackbook approve``)
    host: str | None = None
    pipeline_run_id: str | None = None
    started_at: Any = None
    finished_at: Any = None
    attempt: int = 1

    @classmethod
    def of(cls, record: Any) -> RunView:
        if isinstance(record, RunView):
            return record
        error = _field(record, "error", {})
        if not isinstance(error, Mapping):
            error = {k: _field(error, k) for k in ("cell_index", "ename", "evalue")}
        return cls(
            id=str(_field(record, "id", "")), runbook=str(_field(record, "runbook", "")),
            env=str(_field(record, "env", "")), status=str(_field(record, "status", "")), error=dict(error),
            duration_s=_field(record, "duration_s"), output=_field(record, "output"), path=_field(record, "path"),
            reason=_field(record, "reason"), approved_by=_field(record, "approved_by"), host=_field(record, "host"),
            approval_id=_field(record, "approval_id"),
            pipeline_run_id=_field(record, "pipeline_run_id"), started_at=_field(record, "started_at"),
            finished_at=_field(record, "finished_at"), attempt=int(_field(record, "attempt", 1)),
        )

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATES


@register(Event("failed", "a run failed: a cell raised, the kernel died, or its notebook could not be stored",
                "run", "failure", "✖"))
def _failed(run: RunView, previous: RunView | None) -> bool:
    return run.status == "failed"


@register(Event("timed_out", "a run exceeded its timeout (the runbook's metadata, --timeout or --cell-timeout)",
                "run", "failure", "⏱"))
def _timed_out(run: RunView, previous: RunView | None) -> bool:
    return run.status == "timed_out"


@register(Event("cancelled", "a run was cancelled (Ctrl-C, SIGTERM, a pipeline run interrupted)",
                "run", "warning", "■"))
def _cancelled(run: RunView, previous: RunView | None) -> bool:
    return run.status == "cancelled"


@register(Event("recovered", "the first success after a failure; the message names the failure it ends",
                "run", "success", "✔"))
def _recovered(run: RunView, previous: RunView | None) -> bool:
    return run.status == "succeeded" and previous is not None and previous.failed


if "waiting" in ledger.STATES:  # runbooks with manual steps: a run waits for a person
    @register(Event("waiting", "a run waits for a manual step", "run", "warning", "⏸"))
    def _waiting(run: RunView, previous: RunView | None) -> bool:
        return run.status == "waiting"


@register(Event("succeeded", "every successful run", "run", "success", "✔"))
def _succeeded(run: RunView, previous: RunView | None) -> bool:
    return run.status == "succeeded"


register(Event("stale", "found by `stackbook check`: no success within the runbook's freshness window, or its "
               "latest run failed and nobody was told", "check", "warning", "⚠"))


def names() -> list[str]:
    return list(EVENTS)


def of_run(run: RunView, previous: RunView | None) -> list[str]:
    """The events a finished run triggers, in order of preference."""
    return [name for name, trigger in TRIGGERS.items() if trigger(run, previous)]
