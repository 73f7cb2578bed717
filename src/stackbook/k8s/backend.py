"""``stackbook run NAME --on kubernetes``: one runbook run as a Kubernetes Job of the platform image.

What happens, in order:

1. Checks that need no cluster, as a local run does: the runbook is in the
   catalogue (only ``runbooks/`` is in the image), the parameters convert,
   a destructive non-dry run's ``--approval`` matches it (``approvals.check``;
   the pod's ``stackbook run ... --approval ID`` consumes it). Secrets are NOT read
   locally: the pod gets them from the Kubernetes Secret ``stackbook-secrets``
   (and ``DATABASE_URL`` from ``stackbook-database``), as the CronJobs do.
2. The cluster: the environment file's ``kube_context`` must name a context of
   the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``) whose API server
   answers; otherwise ``UsageError`` (exit 2) saying how to configure one.
   The run store must be ``s3://...`` (``run_store`` in the environment file or
   ``$STACKBOOK_RUN_STORE``): a pod's disk is gone when it ends, so papermill's
   S3 handler writes the executed notebook there (credentials from the optional
   Secret ``stackbook-run-store``; the environment file's ``s3_endpoint`` as
   ``AWS_ENDPOINT_URL_S3``). The bucket is checked from here first, as a local
   run checks it (``runstore.check_writable``).
3. The Job: built from the environment's rendered runner CronJob (infra/k8s,
   so the overlay's image tag, namespace, resources and restricted security
   context apply), running ``stackbook run NAME -e ENV -p ... --json``.
4. Its pod's log is followed to standard error; the stackbook inside the pod
   writes the ledger row (same database); the record is read back by its id.
   A pod that never got to run (image pull error, deadline) is recorded here
   as a ``failed`` row naming the reason, so no Job goes unrecorded.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from stackbook.core import catalog, environments, project
from stackbook.core.errors import StackbookError, UsageError
from stackbook.run import ledger, runstore
from stackbook.run.engine import RunOptions, check_approval, effective_values
from stackbook.run.record import RunRecord

JOB_LABEL = "stackbook.dev/run"
RUN_STORE_SECRET = "stackbook-run-store"
POLL_S = 2.0
POD_START_TIMEOUT_S = 600

HOW_TO_CONFIGURE = (
    "to run on Kubernetes, set `kube_context: <context>` in {path} to a context of your kubeconfig "
    "($KUBECONFIG or ~/.kube/config; see `kubectl config get-contexts`), create the Secrets stackbook-database "
    "(key url) and stackbook-secrets in its namespace, and set `run_store: s3://bucket/prefix`; "
    "or run it here without --on kubernetes"
)


def _args_for(name: str, env: str, values: dict[str, Any]) -> list[str]:
    args = ["run", name, "-e", env]
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["-p", f"{key}={text}"]
    return args + ["--json"]


def job_name(runbook: str, token: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", runbook.lower()).strip("-")
    return f"run-{slug}"[: 63 - len(token) - 1].rstrip("-") + f"-{token}"


def job_manifest(name: str, options: RunOptions, token: str | None = None, run_store: str | None = None) -> dict:
    """The Job that runs runbook NAME with OPTIONS (parameters checked here); no cluster needed."""
    import copy

    from stackbook.k8s import render
    from stackbook.k8s.render import RUNBOOK_LABEL, pod_spec

    runbook = catalog.load(name)
    try:
        runbook.path.resolve().relative_to(project.runbooks_dir().resolve())
    except ValueError:
        raise UsageError(f"{runbook.path} is not under {project.runbooks_dir()}: only catalogue runbooks are in the "
                         "platform image, so only they can run on Kubernetes", runbook=runbook.name) from None
    env = environments.load(options.env)
    values = effective_values(runbook, env, options)
    options = check_approval(runbook, env, values, options)  # checked here, consumed by the pod's run
    token = token or secrets.token_hex(3)
    pseudo = SimpleNamespace(name=runbook.name, metadata={"schedule": "@daily",
                                                          "timeout": options.timeout or runbook.metadata.get("timeout"),
                                                          "secrets": list(runbook.metadata.get("secrets") or [])})
    cronjobs = [m for m in render.render(env.name, runbooks=[pseudo]) if m.get("kind") == "CronJob"
                and (m["metadata"].get("labels") or {}).get(RUNBOOK_LABEL) == runbook.name]
    if not cronjobs:
        raise UsageError(f"the Kubernetes overlay of environment {env.name!r} makes no runner CronJob to build the "
                         "Job from (RunbookCronJobs generator in infra/k8s/base)", env=env.name)
    cj = cronjobs[0]
    job_spec = copy.deepcopy(cj["spec"]["jobTemplate"]["spec"])
    labels = dict(cj["metadata"].get("labels") or {})
    labels[JOB_LABEL] = token
    job_spec["template"]["metadata"].setdefault("labels", {})[JOB_LABEL] = token
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": job_name(runbook.name, token), "namespace": cj["metadata"].get("namespace"),
                        "labels": labels},
           "spec": job_spec}
    if not job["metadata"]["namespace"]:
        job["metadata"].pop("namespace")
    container = pod_spec(job)["containers"][0]
    container["args"] = _args_for(runbook.name, env.name, values)
    container.setdefault("env", []).extend([
        {"name": "STACKBOOK_ENV", "value": env.name},
        {"name": "STACKBOOK_RUN_STORE", "value": run_store or runstore.base(env.get("run_store"))},
    ])
    if env.get("s3_endpoint"):  # an S3-compatible server (credentials: the stackbook-run-store Secret)
        container["env"].append({"name": "AWS_ENDPOINT_URL_S3", "value": env.get("s3_endpoint")})
    container.setdefault("envFrom", []).append({"secretRef": {"name": RUN_STORE_SECRET, "optional": True}})
    if options.cell_timeout:
        container["args"][-1:-1] = ["--cell-timeout", str(options.cell_timeout)]
    if options.timeout:
        container["args"][-1:-1] = ["--timeout", str(options.timeout)]
    if options.approval_id:
        container["args"][-1:-1] = ["--approval", options.approval_id]
    return job


def _cluster(env: environments.Environment):
    """(ApiClient, context) of the environment's cluster, or UsageError saying how to configure one."""
    from stackbook.k8s import KubernetesError, apply

    path = env.path or f"infra/environments/{env.name}.yml"
    context = env.get("kube_context")
    if not context:
        raise UsageError(f"environment {env.name!r} has no cluster (kube_context is null): "
                         + HOW_TO_CONFIGURE.format(path=path), env=env.name)
    files = apply.kubeconfig_files()
    if not files:
        raise UsageError(f"environment {env.name!r} names kube_context {context!r} but there is no kubeconfig here "
                         "($KUBECONFIG unset or missing, no ~/.kube/config): " + HOW_TO_CONFIGURE.format(path=path),
                         env=env.name)
    if context not in apply.contexts(files):
        raise UsageError(f"kube_context {context!r} of environment {env.name!r} is not a context of the kubeconfig "
                         f"({', '.join(map(str, files))}): " + HOW_TO_CONFIGURE.format(path=path), env=env.name)
    try:
        api, _version = apply.connect(context, files, env.name)
    except KubernetesError as exc:
        raise UsageError(str(exc), env=env.name) from None
    return api, context


def _run_store(env: environments.Environment) -> str:
    store = runstore.base(env.get("run_store"))
    if not store.startswith("s3://"):
        raise UsageError(f"a Kubernetes run writes its executed notebook to an s3:// run store, and environment "
                         f"{env.name!r} has {store!r}: set `run_store: s3://bucket/prefix` in {env.path} "
                         "(or $STACKBOOK_RUN_STORE)", env=env.name)
    return store


def run(name: str, options: RunOptions | None = None, on_start: Callable[[str], None] | None = None,
        log: Callable[[str], None] | None = None) -> RunRecord:
    """Run runbook NAME as a Kubernetes Job; returns the finished ledger record (written by the pod's
    ``stackbook run``, which goes through ``ledger.open_run`` as a local run does)."""
    options = options or RunOptions()
    env = environments.load(options.env)
    job = job_manifest(name, options)  # parameters first: exit 2 before any cluster is contacted
    api, _context = _cluster(env)
    store = _run_store(env)
    # the bucket as this machine sees it (same credentials as the Secret's, ideally): exit 2 before any Job
    runstore.check_writable(runstore.location(env.name, name, "check", store), env.get("s3_endpoint"))
    job = job_manifest(name, options, token=job["metadata"]["labels"][JOB_LABEL], run_store=store)
    from stackbook.k8s.validate import check

    check([job])
    log = log or _to_stderr
    from kubernetes import client

    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    namespace = job["metadata"].get("namespace", "default")
    token = job["metadata"]["labels"][JOB_LABEL]
    batch.create_namespaced_job(namespace, job)
    log(f"stackbook: job {namespace}/{job['metadata']['name']} created")
    pod_name = _wait_for_pod(core, namespace, token, log)
    lines = _follow_log(core, namespace, pod_name, log, on_start) if pod_name else []
    status = _wait_for_job(batch, namespace, job["metadata"]["name"])
    return _read_back(_record_from_logs(lines), catalog.load(name).name, env.name,
                      f"Kubernetes job {namespace}/{job['metadata']['name']} {status} without a run record "
                      "(see its pod events)")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _follow_log(core, namespace: str, pod_name: str, log, on_start) -> list[str]:
    """The pod's log lines, each passed to LOG as it arrives; ON_START gets the run id the pod announces."""
    lines = []
    stream = core.read_namespaced_pod_log(pod_name, namespace, follow=True, _preload_content=False)
    for raw in stream.stream():
        for line in raw.decode(errors="replace").splitlines():
            lines.append(line)
            if line.startswith("stackbook: run ") and on_start:
                on_start(line.split()[2])
            log(line)
    return lines


def _read_back(printed: dict | None, runbook: str, env: str, reason: str) -> RunRecord:
    """The ledger row of the record the pod printed; none printed: a ``failed`` row saying why, so that
    no Job goes unrecorded."""
    with ledger.session(reap_stale=False) as conn:
        if printed and printed.get("id"):
            return ledger.get_run(conn, printed["id"]) or RunRecord.from_row(printed)
        run_id = ledger.new_run_id()
        ledger.insert_final(conn, run_id=run_id, runbook=runbook, env=env, status="failed", reason=reason, params={})
        return ledger.get_run(conn, run_id)


def _wait_for_pod(core, namespace: str, token: str, log) -> str | None:
    deadline = time.monotonic() + POD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={token}").items
        for pod in pods:
            if pod.status.phase in ("Running", "Succeeded", "Failed"):
                return pod.metadata.name
            for cs in pod.status.container_statuses or []:
                waiting = cs.state and cs.state.waiting
                if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"):
                    log(f"stackbook: pod {pod.metadata.name}: {waiting.reason}: {waiting.message}")
                    return None
        time.sleep(POLL_S)
    return None


def _wait_for_job(batch, namespace: str, name: str) -> str:
    while True:
        st = batch.read_namespaced_job_status(name, namespace).status
        if st.succeeded:
            return "succeeded"
        if st.failed:
            return "failed"
        for cond in st.conditions or []:
            if cond.type in ("Failed", "Complete") and cond.status == "True":
                return cond.type.lower()
        time.sleep(POLL_S)


def _record_from_logs(lines: list[str]) -> dict | None:
    """The JSON run record `stackbook run --json` printed (a top-level `{` line to its `}` line)."""
    opens = [i for i, line in enumerate(lines) if line == "{"]
    for start in reversed(opens):
        for stop in range(start + 1, len(lines)):
            if lines[stop] == "}":
                try:
                    doc = json.loads("\n".join(lines[start:stop + 1]))
                except ValueError:
                    break
                if isinstance(doc, dict) and "status" in doc:
                    return doc
                break
    return None


__all__ = ["run", "job_manifest", "StackbookError"]
