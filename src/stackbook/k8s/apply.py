"""Plan or apply rendered manifests with the ``kubernetes`` Python client.

``run(manifests, env, dry_run)`` decides what to do from the environment file's
``kube_context`` and ``dry_run``:

* ``kube_context`` null (dev): a plan, everything ``create``; nothing is contacted.
* a named context and ``dry_run`` True: a plan. If the context is in the
  kubeconfig and its API server answers, each manifest is compared with the live
  object (``create``, ``update`` with the fields that differ, ``unchanged``) and
  the Secrets the manifests reference are looked up; otherwise everything is
  ``create`` and the plan says why (no kubeconfig, context not configured here,
  API server unreachable).
* a named context and ``dry_run`` False: server-side apply of every manifest in
  apply order with field manager ``stackbook``. A context missing from the
  kubeconfig, an unreachable API server, or a referenced Secret missing from the
  namespace fails with ``KubernetesError`` before anything is applied.

The kubeconfig is ``$KUBECONFIG`` (paths joined with ``:``) or ``~/.kube/config``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stackbook.k8s import KubernetesError, resource_id
from stackbook.k8s.render import apply_order, referenced_secrets

FIELD_MANAGER = "stackbook"
CONNECT_TIMEOUT_S = 10.0

HOW_TO_CONFIGURE = ("add the context to your kubeconfig ($KUBECONFIG or ~/.kube/config), e.g. "
                    "`kubectl config set-context {context} --cluster=... --user=...`, or set kube_context: null "
                    "in infra/environments/{env}.yml to plan only")


@dataclass
class PlanItem:
    resource: str
    kind: str
    name: str
    namespace: str | None
    action: str                       # plan: create | update | unchanged; apply: created | configured | unchanged
    changes: list[str] = field(default_factory=list)  # fields that differ from the live object


@dataclass
class ApplyResult:
    env: str
    context: str | None
    mode: str                         # "plan" or "apply"
    reason: str                       # why this mode, and what the comparison was made against
    cluster: str                      # "none" | "not configured" | "unreachable" | "reachable"
    items: list[PlanItem] = field(default_factory=list)
    secrets_required: list[str] = field(default_factory=list)   # namespace/name
    secrets_missing: list[str] = field(default_factory=list)    # known only with a reachable cluster

    @property
    def applied(self) -> bool:
        return self.mode == "apply"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.action] = out.get(item.action, 0) + 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [{"action": i.action, "resource": i.resource, "changes": ", ".join(i.changes)} for i in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts(), "applied": self.applied}

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {a}" for a, n in sorted(self.counts().items())) or "nothing"
        head = (f"{'Applied' if self.applied else 'Plan'} for environment {self.env} "
                f"(context {self.context or 'none'}): {counts}")
        lines = [head, f"  {self.reason}"]
        lines += [f"  {i.action:<10} {i.resource}" + (f"  ({', '.join(i.changes)})" if i.changes else "")
                  for i in self.items]
        if self.secrets_required:
            lines.append(f"  Secrets the manifests reference (create them, never commit them): "
                         f"{', '.join(self.secrets_required)}")
        if self.secrets_missing:
            lines.append(f"  missing in the cluster: {', '.join(self.secrets_missing)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- kubeconfig

def kubeconfig_files(kubeconfig: str | os.PathLike | None = None) -> list[Path]:
    """The kubeconfig files that exist: ``kubeconfig`` if given, else ``$KUBECONFIG``, else ``~/.kube/config``."""
    raw = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p and Path(p).expanduser().is_file()]


def contexts(files: list[Path]) -> list[str]:
    """Context names in the kubeconfig files (empty when there are none)."""
    if not files:
        return []
    from kubernetes import config

    try:
        found, _active = config.list_kube_config_contexts(config_file=os.pathsep.join(map(str, files)))
    except config.ConfigException:
        return []
    return sorted(c["name"] for c in found or [])


def connect(context: str, files: list[Path], env_name: str, timeout: float = CONNECT_TIMEOUT_S):
    """``(ApiClient, server version)`` for ``context`` once its API server answered; else ``KubernetesError``."""
    import urllib3
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=os.pathsep.join(map(str, files)), context=context,
                                client_configuration=cfg, persist_config=False)
    except (config.ConfigException, ValueError, OSError) as exc:
        raise KubernetesError(f"kubeconfig context {context!r} cannot be loaded: {exc}; "
                           + HOW_TO_CONFIGURE.format(context=context, env=env_name), env=env_name) from None
    cfg.retries = 0
    api = client.ApiClient(cfg)
    try:
        version = client.VersionApi(api).get_code(_request_timeout=timeout)
    except client.ApiException as exc:
        raise KubernetesError(f"kubeconfig context {context!r}: the API server at {cfg.host} refused us "
                           f"({exc.status} {exc.reason}); check the credentials of the context", env=env_name) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, timed out, TLS
        raise KubernetesError(f"kubeconfig context {context!r} cannot be reached: the API server at {cfg.host} "
                           f"did not answer ({_reason(exc)}; timeout {timeout:g}s); check that the cluster is up "
                           "and the context's server address", env=env_name) from None
    return api, getattr(version, "git_version", "?")


def _reason(exc: Exception) -> str:
    """The innermost cause of a urllib3 connection error, e.g. ``[Errno 111] Connection refused``."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    marker = "Failed to establish a new connection: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return f"{type(reason).__name__}: {text.strip()[:200]}"


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]


# ----------------------------------------------------------------------------- comparing

def diff(desired: Any, live: Any, path: str = "") -> list[str]:
    """Fields of ``desired`` whose value differs in ``live`` (fields only the server sets are ignored)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "(object)"]
        out: list[str] = []
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else key
            if key not in live:
                out.append(sub)
            else:
                out.extend(diff(value, live[key], sub))
        return out
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        out = []
        for n, (want, have) in enumerate(zip(desired, live)):
            out.extend(diff(want, have, f"{path}[{n}]"))
        return out
    return [] if desired == live or str(desired) == str(live) else [path]


def _namespaced(m: dict) -> str | None:
    return (m.get("metadata") or {}).get("namespace")


def _required_secrets(manifests: list[dict]) -> list[tuple[str | None, str]]:
    pairs = {(_namespaced(m), name) for m in manifests for name in referenced_secrets([m])}
    return sorted(pairs, key=lambda p: (p[0] or "", p[1]))


def _fmt_secret(pair: tuple[str | None, str]) -> str:
    return f"{pair[0]}/{pair[1]}" if pair[0] else pair[1]


# ----------------------------------------------------------------------------- plan / apply

def _offline_items(manifests: list[dict]) -> list[PlanItem]:
    return [PlanItem(resource_id(m), m["kind"], m["metadata"]["name"], _namespaced(m), "create") for m in manifests]


def _live(dyn, m: dict):
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    try:
        resource = dyn.resources.get(api_version=m["apiVersion"], kind=m["kind"])
    except ResourceNotFoundError:
        raise KubernetesError(f"{resource_id(m)}: the cluster does not serve {m['kind']} "
                              f"in {m['apiVersion']}") from None
    try:
        live = dyn.get(resource, name=m["metadata"]["name"], namespace=_namespaced(m) if resource.namespaced else None)
        return resource, live.to_dict()
    except NotFoundError:
        return resource, None


def _compare(dyn, manifests: list[dict]) -> list[PlanItem]:
    items = []
    for m in manifests:
        _, live = _live(dyn, m)
        rid = resource_id(m)
        if live is None:
            items.append(PlanItem(rid, m["kind"], m["metadata"]["name"], _namespaced(m), "create"))
        else:
            changes = diff({k: v for k, v in m.items() if k not in ("apiVersion", "kind")}, live)
            items.append(PlanItem(rid, m["kind"], m["metadata"]["name"], _namespaced(m),
                                  "update" if changes else "unchanged", changes))
    return items


def _missing_secrets(dyn, manifests: list[dict], planned: set[str]) -> list[str]:
    from kubernetes.dynamic.exceptions import NotFoundError

    secret_api = dyn.resources.get(api_version="v1", kind="Secret")
    missing = []
    for ns, name in _required_secrets(manifests):
        if f"Secret/{ns}/{name}" in planned:
            continue
        try:
            dyn.get(secret_api, name=name, namespace=ns)
        except NotFoundError:
            missing.append(_fmt_secret((ns, name)))
    return missing


def _server_side_apply(dyn, manifests: list[dict]) -> list[PlanItem]:
    from kubernetes.client import ApiException

    items = []
    for m in manifests:
        resource, before = _live(dyn, m)
        rid = resource_id(m)
        try:
            after = dyn.server_side_apply(resource, body=m, name=m["metadata"]["name"],
                                          namespace=_namespaced(m) if resource.namespaced else None,
                                          field_manager=FIELD_MANAGER).to_dict()
        except ApiException as exc:
            done = ", ".join(f"{i.resource} ({i.action})" for i in items) or "nothing"
            raise KubernetesError(f"server-side apply of {rid} was refused ({exc.status} {exc.reason}: "
                               f"{_short(Exception(exc.body or ''))}); applied before it: {done}") from None
        if before is None:
            action = "created"
        elif (before.get("metadata") or {}).get("resourceVersion") != (after.get("metadata") or {}).get("resourceVersion"):
            action = "configured"
        else:
            action = "unchanged"
        items.append(PlanItem(rid, m["kind"], m["metadata"]["name"], _namespaced(m), action))
    return items


def run(manifests: list[dict], env, dry_run: bool = True, kubeconfig: str | os.PathLike | None = None,
        timeout: float = CONNECT_TIMEOUT_S) -> ApplyResult:
    """Plan or apply ``manifests`` for ``env`` (an ``environments.Environment``); see the module docstring."""
    manifests = apply_order(manifests)
    context = env.get("kube_context")
    secrets = [_fmt_secret(p) for p in _required_secrets(manifests)]
    result = ApplyResult(env=env.name, context=context, mode="plan", reason="", cluster="none",
                         secrets_required=secrets)
    if not context:
        return _offline(result, manifests, f"not applied: infra/environments/{env.name}.yml names no kube_context, "
                                           "so provisioning is a plan only; everything is shown as create")
    files = kubeconfig_files(kubeconfig)
    where = _context_missing(context, files)
    if where:
        if not dry_run:
            raise KubernetesError(f"kubeconfig context {context!r} (kube_context of environment {env.name}) is not "
                                  f"configured here: {where}; "
                                  + HOW_TO_CONFIGURE.format(context=context, env=env.name), env=env.name)
        result.cluster = "not configured"
        return _offline(result, manifests, f"dry run: context {context!r} is not configured here ({where}); the "
                                           "cluster was not consulted, so everything is shown as create")
    try:
        api, server_version = connect(context, files, env.name, timeout)
    except KubernetesError as exc:
        if not dry_run:
            raise
        result.cluster = "unreachable"
        return _offline(result, manifests, f"dry run: {exc}; everything is shown as create")
    from kubernetes.dynamic import DynamicClient

    with api:
        result.cluster = "reachable"
        return _on_cluster(result, DynamicClient(api), manifests, server_version, dry_run=dry_run)


def _offline(result: ApplyResult, manifests: list[dict], reason: str) -> ApplyResult:
    """A plan made without the cluster: everything is ``create``, and ``reason`` says why."""
    result.reason = reason
    result.items = _offline_items(manifests)
    return result


def _context_missing(context: str, files: list[Path]) -> str | None:
    """Why ``context`` is not among the kubeconfig's contexts, or None when it is."""
    known = contexts(files)
    if context in known:
        return None
    if not files:
        return "there is no kubeconfig here ($KUBECONFIG unset or missing, no ~/.kube/config)"
    return f"not among the contexts of {os.pathsep.join(map(str, files))} ({', '.join(known) or 'none'})"


def _on_cluster(result: ApplyResult, dyn, manifests: list[dict], server_version: str, *,
                dry_run: bool) -> ApplyResult:
    """Compare with the live objects (dry run), or check the Secrets exist and server-side apply."""
    context = result.context
    planned = {resource_id(m) for m in manifests}
    if dry_run:
        result.items = _compare(dyn, manifests)
        result.secrets_missing = _missing_secrets(dyn, manifests, planned)
        result.reason = (f"dry run: compared with the live objects of context {context!r} "
                         f"(Kubernetes {server_version}); nothing was changed")
        return result
    missing = _missing_secrets(dyn, manifests, planned)
    if missing:
        raise KubernetesError(f"not applied: the Secrets {', '.join(missing)} do not exist in context {context!r}; "
                              "create them first (kubectl create secret generic NAME --from-literal=KEY=... -n "
                              "NAMESPACE), never in the repository", env=result.env)
    result.items = _server_side_apply(dyn, manifests)
    result.mode = "apply"
    result.reason = (f"server-side applied to context {context!r} (Kubernetes {server_version}) "
                     f"with field manager {FIELD_MANAGER!r}")
    return result
