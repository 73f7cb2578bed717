"""A small kustomize-style renderer: ``infra/k8s/overlays/<env>`` -> plain manifests.

There is no kustomize binary here, so this module builds a kustomization the way
kustomize would, for the subset stackbook uses::

    resources:    files (multi-document YAML) and folders holding a kustomization
    generators:   files whose kind stackbook knows; ``RunbookCronJobs`` makes one
                  runner CronJob per scheduled runbook from the catalogue
    patches:      ``- path: file.yaml`` (targets the kind and name in the file) or
                  ``- path: file.yaml\n  target: {kind: CronJob}`` (every match).
                  A patch is a deep merge: mappings merge, lists of named items
                  (containers, env, ports ...) merge by ``name`` (the patch's items
                  first, as kustomize orders them), other lists are replaced, and a
                  ``null`` value removes the key
    namespace:    set on every namespaced resource
    labels:       ``- pairs: {...}`` added to metadata; with ``includeSelectors: true``
                  to selectors and pod templates too (as ``commonLabels`` does),
                  with ``includeTemplates: true`` to pod templates
    images:       ``{name, newName, newTag, digest}`` rewrites matching images
    replicas:     ``{name, count}`` for Deployments, StatefulSets, ReplicaSets

``render(env)`` returns the manifests of one environment; ``write`` puts them
in ``.stackbook/k8s/<env>/`` one file per resource, in apply order. A Secret
with data in the sources is refused: Secrets are referenced, never inlined.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import ManifestError
from stackbook.core.files import load_yaml, read_text
from stackbook.k8s import resource_id

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "generators", "patches", "patchesStrategicMerge",
                      "namespace", "commonLabels", "labels", "images", "replicas"}

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass", "CSIDriver",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService", "Node",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}

# Kinds and where their pod spec lives.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
REPLICATED_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}

APPLY_ORDER = ["Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Service",
               "NetworkPolicy", "PersistentVolumeClaim", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"]

RUNBOOK_LABEL = "stackbook.dev/runbook"
CRONJOB_NAME_MAX = 52  # Kubernetes appends 11 characters to a CronJob's name for its Jobs


# ----------------------------------------------------------------------------- reading

def load_yaml_documents(path: Path) -> list[dict]:
    """Every non-empty document of a YAML file (a ``kind: List`` is flattened)."""
    import yaml

    text = read_text(path, what="manifest file", error=ManifestError)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest file {path} is not valid YAML: {exc}") from None
    out: list[dict] = []
    for n, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: document {n + 1} is a {type(doc).__name__}, not a Kubernetes object")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(i for i in doc["items"] if isinstance(i, dict))
        else:
            out.append(doc)
    return out


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ManifestError(f"{folder}: no kustomization.yaml (a resource folder must hold one)")


def overlay_dir(env: str) -> Path:
    return project.root() / "infra" / "k8s" / "overlays" / env


def output_dir(env: str) -> Path:
    return project.state_dir() / "k8s" / env


# ----------------------------------------------------------------------------- transformers

def deep_merge(base: Any, patch: Any) -> Any:
    """Merge ``patch`` into ``base`` (a copy): the strategic-merge subset described in the module docstring."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        # as kustomize's strategic merge orders them: the patch's items first, then the others
        originals = {item["name"]: item for item in base}
        patched = [deep_merge(originals[item["name"]], item) if item["name"] in originals else copy.deepcopy(item)
                   for item in patch]
        names = {item["name"] for item in patch}
        return patched + [copy.deepcopy(item) for item in base if item["name"] not in names]
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _dig(obj: Any, path: Iterable[str], create: bool = False) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        if key not in obj or obj[key] is None:
            if not create:
                return None
            obj[key] = {}
        obj = obj[key]
    return obj


def pod_spec(manifest: dict) -> dict | None:
    """The pod spec of a workload manifest, or None for kinds without one."""
    path = POD_SPEC_PATHS.get(manifest.get("kind", ""))
    if path is None:
        return None
    spec = _dig(manifest, path)
    return spec if isinstance(spec, dict) else None


def all_containers(spec: dict) -> list[tuple[str, dict]]:
    """``(kind, container)`` for init, regular and ephemeral containers of a pod spec."""
    out = []
    for key, label in (("initContainers", "initContainer"), ("containers", "container"),
                       ("ephemeralContainers", "ephemeralContainer")):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                out.append((label, c))
    return out


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``(name, tag, digest)`` of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    colon, slash = image.rfind(":"), image.rfind("/")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1:]
    return image, tag, digest


def _transform_images(manifests: list[dict], images: list[dict], where: Path) -> None:
    for entry in images:
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ManifestError(f"{where}: every images entry needs a name (got {entry!r})")
        for m in manifests:
            spec = pod_spec(m)
            if spec is None:
                continue
            for _, c in all_containers(spec):
                name, tag, digest = split_image(str(c.get("image", "")))
                if name != entry["name"]:
                    continue
                name = entry.get("newName") or name
                if entry.get("digest"):
                    c["image"] = f"{name}@{entry['digest']}"
                elif entry.get("newTag") is not None:
                    c["image"] = f"{name}:{entry['newTag']}"
                else:
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _add_label_entries(manifests: list[dict], entries: list, where: Path) -> None:
    """kustomize's ``labels`` field: pairs, with or without selectors and templates."""
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("pairs"), dict):
            raise ManifestError(f"{where}: every labels entry needs pairs (got {entry!r})")
        if entry.get("includeSelectors"):
            _add_labels(manifests, entry["pairs"])
            continue
        pairs = {str(k): str(v) for k, v in entry["pairs"].items()}
        for m in manifests:
            _dig(m, ("metadata", "labels"), create=True).update(pairs)
            kind = m.get("kind")
            if entry.get("includeTemplates") and kind in POD_SPEC_PATHS and kind not in ("Pod", "PodTemplate"):
                _dig(m, (*POD_SPEC_PATHS[kind][:-1], "metadata", "labels"), create=True).update(pairs)
                if kind == "CronJob":
                    _dig(m, ("spec", "jobTemplate", "metadata", "labels"), create=True).update(pairs)


def _add_labels(manifests: list[dict], labels: dict) -> None:
    """kustomize's commonLabels field specs: metadata, selectors and pod templates (created where kustomize
    creates them, only extended where it does not, e.g. a NetworkPolicy's podSelector)."""
    labels = {str(k): str(v) for k, v in labels.items()}

    def add(obj: dict, path: tuple[str, ...], create: bool) -> None:
        target = _dig(obj, path, create=create)
        if isinstance(target, dict):
            target.update(labels)

    for m in manifests:
        kind = m.get("kind")
        add(m, ("metadata", "labels"), True)
        if kind in POD_SPEC_PATHS and kind not in ("Pod", "PodTemplate"):
            add(m, (*POD_SPEC_PATHS[kind][:-1], "metadata", "labels"), True)
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}:
            add(m, ("spec", "selector", "matchLabels"), True)
        elif kind in ("ReplicationController", "Service"):
            add(m, ("spec", "selector"), True)
        elif kind == "Job":
            add(m, ("spec", "selector", "matchLabels"), False)
        elif kind == "CronJob":
            add(m, ("spec", "jobTemplate", "metadata", "labels"), True)
            add(m, ("spec", "jobTemplate", "spec", "selector", "matchLabels"), False)
        elif kind == "NetworkPolicy":
            add(m, ("spec", "podSelector", "matchLabels"), False)
            for direction, peers in (("ingress", "from"), ("egress", "to")):
                for rule in (m.get("spec") or {}).get(direction) or []:
                    for peer in (rule or {}).get(peers) or []:
                        add(peer or {}, ("podSelector", "matchLabels"), False)


def _set_namespace(manifests: list[dict], namespace: str) -> None:
    for m in manifests:
        if m.get("kind") not in CLUSTER_SCOPED:
            _dig(m, ("metadata",), create=True)["namespace"] = namespace


def _set_replicas(manifests: list[dict], replicas: list[dict], where: Path) -> None:
    for entry in replicas:
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("count"), int):
            raise ManifestError(f"{where}: every replicas entry needs a name and an integer count (got {entry!r})")
        hits = [m for m in manifests if m.get("kind") in REPLICATED_KINDS
                and (m.get("metadata") or {}).get("name") == entry["name"]]
        if not hits:
            raise ManifestError(f"{where}: replicas: no Deployment, StatefulSet or ReplicaSet named {entry['name']!r}")
        for m in hits:
            _dig(m, ("spec",), create=True)["replicas"] = entry["count"]


def _matches_selector(m: dict, selector: str) -> bool:
    labels = (m.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


def _apply_patches(manifests: list[dict], patches: list, folder: Path, where: Path) -> list[dict]:
    for entry in patches:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not (entry.get("path") or entry.get("patch")):
            raise ManifestError(f"{where}: every patches entry needs a path (got {entry!r})")
        if entry.get("path"):
            docs = load_yaml_documents(folder / entry["path"])
            label = str(folder / entry["path"])
        else:
            import yaml

            try:
                docs = [d for d in yaml.safe_load_all(entry["patch"]) if d]
            except yaml.YAMLError as exc:
                raise ManifestError(f"{where}: an inline patch is not valid YAML: {exc}") from None
            label = f"{where} (inline patch)"
        target = entry.get("target")
        for doc in docs:
            kind = (target or {}).get("kind") or doc.get("kind")
            name = (target or {}).get("name") or (None if target else (doc.get("metadata") or {}).get("name"))
            selector = (target or {}).get("labelSelector")
            hits = [n for n, m in enumerate(manifests)
                    if m.get("kind") == kind
                    and (name is None or (m.get("metadata") or {}).get("name") == name)
                    and (selector is None or _matches_selector(m, selector))]
            if not hits and not target:
                raise ManifestError(f"{label}: patch targets {kind}/{name}, which no resource of this "
                                    f"kustomization is (check the kind and metadata.name)")
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            if target:
                body = {**body, "metadata": {k: v for k, v in (body.get("metadata") or {}).items() if k != "name"}}
            for n in hits:
                manifests[n] = deep_merge(manifests[n], body)
    return manifests


# ----------------------------------------------------------------------------- generators

def cronjob_name(runbook: str) -> str:
    """``runbook-<name>`` as a DNS label of at most 52 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", runbook.lower()).strip("-")
    name = f"runbook-{slug}"
    if len(name) > CRONJOB_NAME_MAX:
        digest = hashlib.sha1(runbook.encode()).hexdigest()[:6]
        name = f"{name[:CRONJOB_NAME_MAX - 7].rstrip('-')}-{digest}"
    return name


def runbook_cronjobs(spec: dict, runbooks: Iterable[Any], where: Path | str = "RunbookCronJobs") -> list[dict]:
    """One CronJob per runbook with a ``schedule``, from the generator's ``template``.

    ``runbooks`` are ``stackbook.core.notebooks.Runbook`` objects (anything with
    ``name`` and ``metadata``).
    """
    from croniter import croniter

    template = spec.get("template")
    if not isinstance(template, dict) or template.get("kind") != "CronJob":
        raise ManifestError(f"{where}: RunbookCronJobs needs a `template` holding a CronJob")
    out = []
    for rb in sorted(runbooks, key=lambda r: r.name):
        schedule = (rb.metadata or {}).get("schedule")
        if not schedule:
            continue
        macros = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
        if schedule not in macros and not croniter.is_valid(schedule):
            raise ManifestError(f"runbook {rb.name}: schedule {schedule!r} is not a valid cron line "
                                "(five fields, e.g. '0 6 * * *', or @daily/@hourly ...)")
        cj = copy.deepcopy(template)
        meta = _dig(cj, ("metadata",), create=True)
        meta["name"] = cronjob_name(rb.name)
        meta.setdefault("labels", {})[RUNBOOK_LABEL] = rb.name
        cj["spec"]["schedule"] = schedule
        job_spec = _dig(cj, ("spec", "jobTemplate", "spec"), create=True)
        _dig(job_spec, ("template", "metadata", "labels"), create=True)[RUNBOOK_LABEL] = rb.name
        timeout = (rb.metadata or {}).get("timeout")
        if timeout:
            job_spec["activeDeadlineSeconds"] = int(timeout) + 300  # the runner's own timeout fires first
        containers = (pod_spec(cj) or {}).get("containers") or []
        if not containers:
            raise ManifestError(f"{where}: the CronJob template has no container to run the runbook in")
        runner = containers[0]
        runner["args"] = ["run", rb.name, "-e", "$(STACKBOOK_ENV)"]
        env = runner.setdefault("env", [])
        for secret in (rb.metadata or {}).get("secrets") or []:
            env.append({"name": secret, "valueFrom": {"secretKeyRef": {"name": "stackbook-secrets", "key": secret}}})
        out.append(cj)
    return out


def _run_generator(doc: dict, path: Path, runbooks: list | None) -> list[dict]:
    if doc.get("kind") == "RunbookCronJobs":
        if runbooks is None:
            from stackbook.core import catalog

            runbooks = catalog.all_runbooks()
        return runbook_cronjobs(doc, runbooks, path)
    raise ManifestError(f"{path}: unknown generator kind {doc.get('kind')!r} (known: RunbookCronJobs)")


# ----------------------------------------------------------------------------- build

def build(folder: Path | str, runbooks: list | None = None, _seen: tuple = ()) -> list[dict]:
    """The manifests a kustomization folder renders to."""
    folder = Path(folder).resolve()
    if folder in _seen:
        raise ManifestError(f"{folder}: kustomization cycle ({' -> '.join(map(str, (*_seen, folder)))})")
    kfile = _kustomization_file(folder)
    k = load_yaml(kfile, what="kustomization", error=ManifestError, default={})
    if not isinstance(k, dict):
        raise ManifestError(f"{kfile} must hold a mapping")
    unknown = sorted(set(k) - KUSTOMIZATION_KEYS)
    if unknown:
        raise ManifestError(f"{kfile}: unsupported field(s) {', '.join(unknown)} "
                            f"(supported: {', '.join(sorted(KUSTOMIZATION_KEYS))})")

    manifests: list[dict] = []
    for entry in k.get("resources") or []:
        path = folder / entry
        if path.is_dir():
            manifests.extend(build(path, runbooks, (*_seen, folder)))
        elif path.is_file():
            manifests.extend(load_yaml_documents(path))
        else:
            raise ManifestError(f"{kfile}: resource {entry!r} does not exist ({path})")
    for entry in k.get("generators") or []:
        path = folder / entry
        for doc in load_yaml_documents(path):
            manifests.extend(_run_generator(doc, path, runbooks))

    patches = list(k.get("patchesStrategicMerge") or []) + list(k.get("patches") or [])
    manifests = _apply_patches(manifests, patches, folder, kfile)
    if k.get("commonLabels"):
        _add_labels(manifests, k["commonLabels"])
    if k.get("labels"):
        _add_label_entries(manifests, k["labels"], kfile)
    if k.get("namespace"):
        _set_namespace(manifests, str(k["namespace"]))
    if k.get("images"):
        _transform_images(manifests, k["images"], kfile)
    if k.get("replicas"):
        _set_replicas(manifests, k["replicas"], kfile)
    _check(manifests, kfile)
    return manifests


def _check(manifests: list[dict], where: Path) -> None:
    seen: set[str] = set()
    for m in manifests:
        if not m.get("kind") or not (m.get("metadata") or {}).get("name"):
            raise ManifestError(f"{where}: a resource without kind or metadata.name: {str(m)[:200]}")
        rid = resource_id(m)
        if rid in seen:
            raise ManifestError(f"{where}: {rid} is defined twice")
        seen.add(rid)
        if m["kind"] == "Secret" and (m.get("data") or m.get("stringData")):
            raise ManifestError(f"{where}: {rid} inlines secret data; Secrets are created outside the "
                                "repository and referenced by name (secretKeyRef, envFrom secretRef)")


def apply_order(manifests: list[dict]) -> list[dict]:
    """Namespaces first, then identities and config, services, then workloads (stable otherwise)."""
    rank = {kind: n for n, kind in enumerate(APPLY_ORDER)}
    return sorted(manifests, key=lambda m: rank.get(m.get("kind"), len(APPLY_ORDER)))


def render(env: str, runbooks: list | None = None) -> list[dict]:
    """The manifests of environment ``env``, in apply order (``infra/k8s/overlays/<env>``)."""
    folder = overlay_dir(env)
    if not folder.is_dir():
        known = sorted(p.name for p in folder.parent.glob("*") if p.is_dir()) if folder.parent.is_dir() else []
        raise ManifestError(f"no Kubernetes overlay for environment {env!r}: {folder} does not exist "
                            f"(overlays: {', '.join(known) or 'none'})", env=env)
    return apply_order(build(folder, runbooks))


def dump(manifests: list[dict]) -> str:
    """Multi-document YAML."""
    import yaml

    return "".join("---\n" + yaml.safe_dump(m, sort_keys=False, default_flow_style=False) for m in manifests)


def write(manifests: list[dict], folder: Path | str) -> list[Path]:
    """One ``NN-kind-name.yaml`` per manifest in ``folder`` (stale ``*.yaml`` there are removed)."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    paths = []
    width = max(2, len(str(len(manifests) - 1)))  # file names sort in apply order
    for n, m in enumerate(manifests):
        name = re.sub(r"[^a-z0-9.-]+", "-", m["metadata"]["name"].lower())
        path = folder / f"{n:0{width}d}-{m['kind'].lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(m, sort_keys=False, default_flow_style=False), encoding="utf-8")
        paths.append(path)
    return paths


def render_to_dir(env: str, folder: Path | str | None = None, runbooks: list | None = None) -> Path:
    """Render ``env`` and write it to ``folder`` (default ``.stackbook/k8s/<env>/``); returns the folder."""
    folder = Path(folder) if folder else output_dir(env)
    write(render(env, runbooks), folder)
    return folder


def referenced_secrets(manifests: list[dict]) -> list[str]:
    """Names of the Secrets the manifests reference (which must exist in the namespace before an apply)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                ref = node.get(key)
                if isinstance(ref, dict) and ref.get("name"):
                    names.add(ref["name"])
            secret = node.get("secret")
            if isinstance(secret, dict) and secret.get("secretName"):
                names.add(secret["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifests)
    return sorted(names)


def table(manifests: list[dict]) -> list[dict[str, Any]]:
    """One row per manifest (kind, name, namespace, images) for showing in a runbook."""
    rows = []
    for m in manifests:
        spec = pod_spec(m)
        images = sorted({str(c.get("image")) for _, c in all_containers(spec)}) if spec else []
        rows.append({"kind": m.get("kind"), "name": (m.get("metadata") or {}).get("name"),
                     "namespace": (m.get("metadata") or {}).get("namespace"), "images": ", ".join(images)})
    return rows
