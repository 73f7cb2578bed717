"""Schedules: what runs when, handed to cron, Airflow or Kubernetes.

stackbook has no scheduler of its own. A runbook's ``metadata.stackbook.schedule``
and a pipeline's ``stackbook.schedule`` (cron lines, UTC) are turned into:

- :mod:`.crontab`: crontab lines for one machine (``stackbook schedule crontab``);
- :mod:`.airflow`: Airflow 3 DAG files, one per scheduled pipeline or runbook,
  whose tasks call ``stackbook run`` (``stackbook schedule airflow``);
- :mod:`.kubernetes`: CronJob manifests from the platform's rendered
  manifests, so the overlays' patches apply (``stackbook schedule kubernetes``).

Crontab lines and CronJobs also run ``stackbook check -e ENV`` every
``CHECK_SCHEDULE``: the runbooks that are stale or failing are told once per
episode (``stackbook.notify``). The Airflow DAGs need no such task: their
tasks are ``stackbook run``, which notifies, and Airflow's own failure
callbacks stay off so that nobody is told twice.

Nothing here imports ploomber except the Airflow generator, which expands a
pipeline's parameters (``{{placeholders}}``) the way a pipeline run does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stackbook.core.errors import (
    ScheduleError as ScheduleError,  # re-exported: `from stackbook.schedules import ScheduleError`
)
from stackbook.core.errors import StackbookError

DEFAULT_SCHEDULE_ENV = "prod"
CHECK_SCHEDULE = "*/15 * * * *"  # `stackbook check`: stale or failing runbooks, told once per episode
CHECK_TIMEOUT_S = 300


@dataclass
class Scheduled:
    kind: str  # "pipeline" or "runbook"
    name: str
    schedule: str
    description: str = ""
    owner: str | None = None
    timeout: float | None = None  # seconds, None: no limit
    retries: int = 0
    retry_delay_s: float = 0
    secrets: list[str] = field(default_factory=list)
    profile: str | None = None  # pipelines: env.<profile>.yaml overlay
    source: Any = None  # the PipelineSpec or Runbook

    @property
    def slug(self) -> str:
        return f"{self.kind}-{self.name}"

    def command(self, env: str) -> list[str]:
        """The stackbook arguments that run it (after the `stackbook` executable)."""
        if self.kind == "pipeline":
            ref = self.name if getattr(self.source, "in_project", True) else str(self.source.path)
            args = ["pipeline", "run", ref, "-e", env]
            if self.profile:
                args += ["--profile", self.profile]
            return args
        return ["run", self.name, "-e", env]


def from_pipeline(spec) -> Scheduled:
    """A pipeline as a scheduled item; its secrets are those of its runbooks, its timeout their sum."""
    from stackbook.core import catalog

    secrets: list[str] = []
    timeouts: list[float] = []
    for t in spec.tasks:
        try:
            rb = catalog.load(str(spec.resolve_source(t.source)))
        except StackbookError:
            continue  # a runbook not written yet: its task still gets scheduled
        secrets += [s for s in rb.metadata.get("secrets") or [] if s not in secrets]
        if rb.metadata.get("timeout"):
            timeouts.append(float(rb.metadata["timeout"]))
    timeout = spec.meta.get("timeout") or (sum(timeouts) if timeouts else None)
    return Scheduled(kind="pipeline", name=spec.name, schedule=spec.schedule or "@daily",
                     description=spec.description, owner=spec.meta.get("owner"), timeout=timeout,
                     secrets=secrets, profile=spec.meta.get("profile"), source=spec)


def scheduled(kinds: tuple[str, ...] = ("pipeline", "runbook")) -> list[Scheduled]:
    """Every pipeline and runbook that has a schedule, pipelines first, by name.

    Strict: a spec or runbook that cannot be read raises, so no generated schedule silently lacks it.
    """
    from stackbook.core import catalog
    from stackbook.pipelines.spec import all_pipelines

    specs = all_pipelines() if "pipeline" in kinds else []
    runbooks = catalog.all_runbooks() if "runbook" in kinds else []
    return _items(specs, runbooks)


def listing() -> tuple[list[Scheduled], list]:
    """``scheduled()`` for ``stackbook schedule list``: files that cannot be read come back as ``catalog.Broken``."""
    from stackbook.core import catalog
    from stackbook.pipelines.spec import scan

    specs, broken_specs = scan()
    runbooks, broken_runbooks = catalog.scan()
    return _items(specs, runbooks), broken_specs + broken_runbooks


def _items(specs: list, runbooks: list) -> list[Scheduled]:
    out = [from_pipeline(spec) for spec in specs if spec.schedule]
    for rb in sorted(runbooks, key=lambda r: r.name):
        meta = rb.metadata
        if not meta.get("schedule"):
            continue
        out.append(Scheduled(kind="runbook", name=rb.name, schedule=meta["schedule"], description=rb.title,
                             owner=meta.get("owner"), timeout=meta.get("timeout"),
                             retries=int(meta.get("retries") or 0), retry_delay_s=float(meta.get("retry_delay_s") or 0),
                             secrets=list(meta.get("secrets") or []), source=rb))
    return out
