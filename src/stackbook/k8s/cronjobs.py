"""Kubernetes CronJobs for scheduled runbooks and pipelines (``stackbook schedule kubernetes``).

The CronJobs come from the platform's own manifests (``infra/k8s``, rendered by
:mod:`stackbook.k8s.render` for one environment), so every overlay patch
(namespace, image tag, resources) applies: a runbook's CronJob is the one its
``RunbookCronJobs`` generator makes; a pipeline's is made by the same generator
and then pointed at ``stackbook pipeline run NAME`` (name ``pipeline-<name>``,
label ``stackbook.dev/pipeline``). Every manifest is validated against the
Kubernetes schemas and checked by the audit's Kubernetes rules before it is
written: a failure is an error naming the resource and the rule.

Pods have a read-only root filesystem and an emptyDir at /tmp, so a pipeline's
incremental state (.stackbook/pipelines/) does not survive between runs there:
every scheduled pipeline run in Kubernetes runs every task.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

from stackbook.schedules import DEFAULT_SCHEDULE_ENV, ScheduleError, Scheduled, scheduled

PIPELINE_LABEL = "stackbook.dev/pipeline"
NAME_MAX = 52  # Kubernetes appends 11 characters to a CronJob's name for its Jobs


def _name(prefix: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug}"[:NAME_MAX].rstrip("-")


def _pipeline_cronjob(item: Scheduled, env: str) -> dict:
    from stackbook.k8s import render
    from stackbook.k8s.render import RUNBOOK_LABEL, pod_spec

    pseudo = SimpleNamespace(name=item.name, metadata={"schedule": item.schedule, "timeout": item.timeout,
                                                         "secrets": list(item.secrets)})
    rendered = [m for m in render.render(env, runbooks=[pseudo]) if m.get("kind") == "CronJob"]
    if not rendered:
        raise ScheduleError(f"the Kubernetes overlay of {env!r} makes no runner CronJob (no RunbookCronJobs "
                            "generator in infra/k8s): cannot schedule pipelines there")
    cj = copy.deepcopy(rendered[0])
    meta = cj["metadata"]
    meta["name"] = _name("pipeline", item.name)
    for labels in (meta.get("labels") or {}, cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]):
        labels.pop(RUNBOOK_LABEL, None)
        labels[PIPELINE_LABEL] = item.name
    container = pod_spec(cj)["containers"][0]
    container["args"] = [a if a != env else "$(STACKBOOK_ENV)" for a in item.command(env)]
    return cj


def manifests(env: str = DEFAULT_SCHEDULE_ENV, items: list[Scheduled] | None = None) -> list[dict]:
    """CronJobs of every scheduled runbook and pipeline in environment ENV, validated and audited."""
    from stackbook.k8s import render
    from stackbook.k8s.render import RUNBOOK_LABEL

    items = scheduled() if items is None else items
    runbooks = {i.name for i in items if i.kind == "runbook"}
    out = []
    if runbooks:
        rbs = [i.source for i in items if i.kind == "runbook"]
        out += [m for m in render.render(env, runbooks=rbs)
                if m.get("kind") == "CronJob" and (m["metadata"].get("labels") or {}).get(RUNBOOK_LABEL) in runbooks]
    out += [_pipeline_cronjob(i, env) for i in items if i.kind == "pipeline"]
    check(out)
    return out


def check(cronjobs: list[dict]) -> None:
    """Schema validation and the audit's Kubernetes rules; raises ScheduleError listing every problem."""
    from stackbook.audit.kubernetes import check_all
    from stackbook.k8s.validate import validate_manifests

    problems = [str(p) for p in validate_manifests(cronjobs)]
    problems += [f"{f.resource}: {f.id} {f.title}: {f.evidence}" for f in check_all(cronjobs)
                 if f.status != "pass"]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ScheduleError(f"{len(problems)} problem(s) in the generated CronJobs:\n{lines}")


def write(out: Path | str, cronjobs: list[dict]) -> list[Path]:
    """One YAML file per CronJob in OUT; returns the files."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for cj in cronjobs:
        path = out / f"cronjob-{cj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(cj, sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths


def dump(cronjobs: list[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(cronjobs, sort_keys=False)
