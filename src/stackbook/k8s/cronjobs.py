"""Kubernetes CronJobs of the platform's own manifests, shaped for a runbook, a pipeline or ``stackbook check``.

The CronJobs come from ``infra/k8s`` rendered by :mod:`stackbook.k8s.render` for one
environment, so every overlay patch (namespace, image tag, resources) applies: a
runbook's CronJob is the one its ``RunbookCronJobs`` generator makes; a pipeline's is
made by the same generator and then pointed at another command (name ``pipeline-<name>``,
label ``stackbook.dev/pipeline``); ``stackbook check -e ENV`` gets one too
(``stackbook-check``, the same pod). What is scheduled is decided by
:mod:`stackbook.schedules.kubernetes`, which also validates and audits the result.

Pods have a read-only root filesystem and an emptyDir at /tmp, so a pipeline's
incremental state (.stackbook/pipelines/) does not survive between runs there:
every scheduled pipeline run in Kubernetes runs every task.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

from stackbook.core.errors import ManifestError

PIPELINE_LABEL = "stackbook.dev/pipeline"
CHECK_LABEL = "stackbook.dev/check"
NAME_MAX = 52  # Kubernetes appends 11 characters to a CronJob's name for its Jobs


def _name(prefix: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug}"[:NAME_MAX].rstrip("-")


def pipeline_cronjob(env: str, name: str, schedule: str, timeout: float | None, secrets: list[str],
                     args: list[str]) -> dict:
    """The runner CronJob of ENV's overlay, renamed for pipeline NAME and running ``stackbook ARGS``."""
    from stackbook.k8s import render
    from stackbook.k8s.render import RUNBOOK_LABEL, pod_spec

    pseudo = SimpleNamespace(name=name, metadata={"schedule": schedule, "timeout": timeout, "secrets": secrets})
    rendered = [m for m in render.render(env, runbooks=[pseudo]) if m.get("kind") == "CronJob"]
    if not rendered:
        raise ManifestError(f"the Kubernetes overlay of {env!r} makes no runner CronJob (no RunbookCronJobs "
                            "generator in infra/k8s): cannot schedule pipelines there")
    cj = copy.deepcopy(rendered[0])
    meta = cj["metadata"]
    meta["name"] = _name("pipeline", name)
    for labels in (meta.get("labels") or {}, cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]):
        labels.pop(RUNBOOK_LABEL, None)
        labels[PIPELINE_LABEL] = name
    pod_spec(cj)["containers"][0]["args"] = [a if a != env else "$(STACKBOOK_ENV)" for a in args]
    return cj


def check_cronjob(env: str, schedule: str, timeout: float | None) -> dict:
    """``stackbook check -e ENV`` on SCHEDULE (name ``stackbook-check``): the pipelines' pod, another command."""
    from stackbook.k8s.render import pod_spec

    cj = pipeline_cronjob(env, "check", schedule, timeout, [], ["check", "-e", env])
    cj["metadata"]["name"] = "stackbook-check"
    template_labels = cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for labels in (cj["metadata"].get("labels") or {}, template_labels):
        labels.pop(PIPELINE_LABEL, None)
        labels[CHECK_LABEL] = "true"
    pod_spec(cj)["containers"][0]["args"] = ["check", "-e", "$(STACKBOOK_ENV)"]
    return cj


def runbook_cronjobs(env: str, runbooks: list) -> list[dict]:
    """The CronJobs ENV's overlay makes for RUNBOOKS (catalogue entries), and only those."""
    from stackbook.k8s import render
    from stackbook.k8s.render import RUNBOOK_LABEL

    names = {rb.name for rb in runbooks}
    return [m for m in render.render(env, runbooks=runbooks)
            if m.get("kind") == "CronJob" and (m["metadata"].get("labels") or {}).get(RUNBOOK_LABEL) in names]


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
