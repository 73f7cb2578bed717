"""What ``stackbook schedule kubernetes`` schedules as CronJobs, validated and audited before it is written.

The manifests are shaped by the Kubernetes adapter (:mod:`stackbook.k8s.cronjobs`);
this module decides which runbooks and pipelines get one, and refuses the set when a
manifest breaks the Kubernetes schemas or the audit's Kubernetes rules, naming the
resource and the rule.
"""

from __future__ import annotations

from stackbook.core.errors import ManifestError
from stackbook.k8s import cronjobs
from stackbook.schedules import (
    CHECK_SCHEDULE,
    CHECK_TIMEOUT_S,
    DEFAULT_SCHEDULE_ENV,
    Scheduled,
    ScheduleError,
    scheduled,
)

write = cronjobs.write
dump = cronjobs.dump


def manifests(env: str = DEFAULT_SCHEDULE_ENV, items: list[Scheduled] | None = None) -> list[dict]:
    """CronJobs of every scheduled runbook and pipeline in environment ENV, validated and audited."""
    items = scheduled() if items is None else items
    runbooks = [i.source for i in items if i.kind == "runbook"]
    try:
        out = cronjobs.runbook_cronjobs(env, runbooks) if runbooks else []
        out += [cronjobs.pipeline_cronjob(env, i.name, i.schedule, i.timeout, list(i.secrets), i.command(env))
                for i in items if i.kind == "pipeline"]
        if out:
            out.append(cronjobs.check_cronjob(env, CHECK_SCHEDULE, CHECK_TIMEOUT_S))
    except ManifestError as exc:
        raise ScheduleError(str(exc)) from None
    check(out)
    return out


def check(manifests: list[dict]) -> None:
    """Schema validation and the audit's Kubernetes rules; raises ScheduleError listing every problem."""
    from stackbook.audit.kubernetes import check_all
    from stackbook.k8s.validate import validate_manifests

    problems = [str(p) for p in validate_manifests(manifests)]
    problems += [f"{f.resource}: {f.id} {f.title}: {f.evidence}" for f in check_all(manifests)
                 if f.status != "pass"]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ScheduleError(f"{len(problems)} problem(s) in the generated CronJobs:\n{lines}")
