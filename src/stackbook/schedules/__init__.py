"""Schedules: what runs when, handed to cron, Airflow or Kubernetes.

stackbook has no scheduler of its own. A runbook's ``metadata.stackbook.schedule``
and a pipeline's ``stackbook.schedule`` (cron lines, UTC) are turned into:

- :mod:`.crontab`: crontab lines for one machine (``stackbook schedule crontab``);
- :mod:`.airflow`: Airflow 3 DAG files, one per scheduled pipeline or runbook,
  whose tasks call ``stackbook run`` (``stackbook schedule airflow``);
- :mod:`.kubernetes`: CronJob manifests from the platform's rendered
  manifests, so the overlays' patches apply (``stackbook schedule kubernetes``).

Nothing here imports ploomber except the Airflow generator, which expands a
pipeline's parameters (``{{placeholders}}``) the way a pipeline run does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stackbook.core.errors import StackbookError

DEFAULT_SCHEDULE_ENV = "prod"


class ScheduleError(StackbookError):
    """A schedule could not be generated (for instance a manifest that fails validation or the audit)."""

    exit_code = 1


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
    """Every pipeline and runbook that has a schedule, pipelines first, by name."""
    from stackbook.core import catalog
    from stackbook.pipelines.spec import all_pipelines

    out: list[Scheduled] = []
    if "pipeline" in kinds:
        out += [from_pipeline(spec) for spec in all_pipelines() if spec.schedule]
    if "runbook" in kinds:
        for rb in sorted(catalog.all_runbooks(), key=lambda r: r.name):
            meta = rb.metadata
            if not meta.get("schedule"):
                continue
            out.append(Scheduled(kind="runbook", name=rb.name, schedule=meta["schedule"], description=rb.title,
                                 owner=meta.get("owner"), timeout=meta.get("timeout"),
                                 retries=int(meta.get("retries") or 0), retry_delay_s=float(meta.get("retry_delay_s") or 0),
                                 secrets=list(meta.get("secrets") or []), source=rb))
    return out
