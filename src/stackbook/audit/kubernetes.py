"""Kubernetes rules of the compliance audit: Pod Security Standards and hygiene.

Every workload kind that holds a pod template (Pod, PodTemplate, Deployment,
StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) is
checked against the Pod Security Standards *restricted* profile, one rule per
concern, init and ephemeral containers included, plus resource requests and
limits and pinned image tags. Each rule yields one finding per workload:
``pass`` or ``fail`` with the offending containers and fields as evidence, or
``error`` when the manifest has no pod spec where its kind says it should.

``load_manifests(path)`` reads a YAML file or a folder of them;
``check_all(manifests)`` runs every Kubernetes rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

from stackbook.audit import Finding, Rule, finding, register, run_checks
from stackbook.k8s import ManifestError, resource_id
from stackbook.k8s.render import POD_SPEC_PATHS, all_containers, load_yaml_documents, pod_spec, split_image

AREA = "kubernetes"
WORKLOAD_KINDS = tuple(POD_SPEC_PATHS)

# Pod Security Standards (restricted) reference values
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
ALLOWED_ADD_CAPABILITIES = {"NET_BIND_SERVICE"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


# ----------------------------------------------------------------------------- loading

def load_manifests(path: str | Path) -> list[dict]:
    """Every Kubernetes object in a YAML file, or in the ``*.yaml``/``*.yml`` files under a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise ManifestError(f"{path}: no such file or folder of Kubernetes manifests "
                            "(render one with stackbook.k8s.render.render_to_dir(env))")
    manifests: list[dict] = []
    for f in files:
        manifests.extend(load_yaml_documents(f))
    return manifests


def check_all(manifests: list[dict]) -> list[Finding]:
    """The findings of every Kubernetes rule over ``manifests``, rule by rule."""
    return run_checks(AREA, manifests)


def summary(findings: Iterable[Finding]) -> list[dict]:
    """One row per rule: id, title, severity and how many workloads passed, failed or errored."""
    rows: dict[str, dict] = {}
    for f in findings:
        row = rows.setdefault(f.id, {"id": f.id, "title": f.title, "severity": f.severity,
                                     "pass": 0, "fail": 0, "error": 0, "skip": 0})
        row[f.status] = row.get(f.status, 0) + 1
    return [rows[k] for k in sorted(rows)]


# ----------------------------------------------------------------------------- helpers

def _sc(obj: dict) -> dict:
    sc = obj.get("securityContext")
    return sc if isinstance(sc, dict) else {}


def _label(kind: str, container: dict) -> str:
    return f"{kind} {container.get('name', '?')}"


def _per_workload(rule_id: str, manifests: Iterable[dict], check: Callable[[dict, dict], list[str]],
                  passed: str) -> Iterable[Finding]:
    """Run ``check(pod_spec, manifest) -> problems`` on every workload; one finding each."""
    for m in manifests:
        if not isinstance(m, dict) or m.get("kind") not in WORKLOAD_KINDS:
            continue
        rid = resource_id(m)
        spec = pod_spec(m)
        if spec is None:
            where = ".".join(POD_SPEC_PATHS[m["kind"]])
            yield finding(rule_id, "error", rid, f"no pod spec at {where}: cannot check this {m['kind']}")
            continue
        problems = check(spec, m)
        yield finding(rule_id, "fail" if problems else "pass", rid, "; ".join(problems) if problems else passed)


def _register(rule_id: str, title: str, severity: str, controls: tuple[str, ...], fix: str, passed: str):
    """Decorator: register ``check(spec, manifest) -> problems`` as rule ``rule_id``, a finding per workload
    (``passed`` is the evidence of a workload without problems). The check itself stays as it is."""
    rule = Rule(id=rule_id, title=title, severity=severity, controls=controls, fix=fix, area=AREA)
    return functools.partial(_add_workload_check, rule, passed)


def _add_workload_check(rule: Rule, passed: str, check: Callable[[dict, dict], list[str]]):
    register(rule)(functools.partial(_per_workload, rule.id, check=check, passed=passed))
    return check


# ----------------------------------------------------------------------------- rules

@_register("K8S-001", "No privileged containers", "critical",
           ("SOC2 CC6.1", "SOC2 CC6.8", "ISO27001 A.8.2", "ISO27001 A.8.9"),
           "Remove securityContext.privileged (or set it to false) on every container, init containers included.",
           "no container is privileged")
def privileged(spec: dict, _m: dict) -> list[str]:
    """securityContext.privileged must be unset or false."""
    return [f"{_label(k, c)}: securityContext.privileged is true"
            for k, c in all_containers(spec) if _sc(c).get("privileged") is True]


@_register("K8S-002", "No host namespaces (hostNetwork, hostPID, hostIPC)", "critical",
           ("SOC2 CC6.1", "SOC2 CC6.6", "ISO27001 A.8.9", "ISO27001 A.8.22"),
           "Remove hostNetwork, hostPID and hostIPC from the pod spec (or set them to false).",
           "the pod shares no host namespace")
def host_namespaces(spec: dict, _m: dict) -> list[str]:
    """The pod must not share the node's network, process or IPC namespace."""
    return [f"spec.{key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True]


@_register("K8S-003", "No hostPath volumes", "critical",
           ("SOC2 CC6.1", "ISO27001 A.8.3", "ISO27001 A.8.9"),
           "Replace hostPath volumes with emptyDir, a PersistentVolumeClaim, a ConfigMap or a Secret.",
           "no hostPath volume")
def host_path(spec: dict, _m: dict) -> list[str]:
    """No volume may mount a path of the node."""
    return [f"volume {v.get('name', '?')}: hostPath {(v.get('hostPath') or {}).get('path', '?')}"
            for v in spec.get("volumes") or [] if isinstance(v, dict) and "hostPath" in v]


@_register("K8S-004", "No hostPorts", "high",
           ("SOC2 CC6.6", "ISO27001 A.8.20", "ISO27001 A.8.22"),
           "Remove hostPort from container ports; expose the pod through a Service instead.",
           "no container binds a host port")
def host_ports(spec: dict, _m: dict) -> list[str]:
    """Container ports must not bind a port on the node."""
    return [f"{_label(k, c)}: port {p.get('containerPort', '?')} has hostPort {p['hostPort']}"
            for k, c in all_containers(spec) for p in c.get("ports") or []
            if isinstance(p, dict) and p.get("hostPort") not in (None, 0)]


@_register("K8S-005", "Only restricted volume types", "high",
           ("SOC2 CC6.1", "ISO27001 A.8.9"),
           "Use only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected "
           "or secret volumes; move other storage behind a PersistentVolumeClaim.",
           "every volume is of a restricted type")
def volume_types(spec: dict, _m: dict) -> list[str]:
    """Volumes must be of a type the restricted profile allows."""
    problems = []
    for v in spec.get("volumes") or []:
        if not isinstance(v, dict):
            continue
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            problems.append(f"volume {v.get('name', '?')}: type {', '.join(bad)} is not allowed")
    return problems


@_register("K8S-006", "Privilege escalation disallowed", "high",
           ("SOC2 CC6.1", "SOC2 CC6.8", "ISO27001 A.8.2"),
           "Set securityContext.allowPrivilegeEscalation: false on every container, init containers included.",
           "every container sets allowPrivilegeEscalation: false")
def privilege_escalation(spec: dict, _m: dict) -> list[str]:
    """allowPrivilegeEscalation must be explicitly false on every container."""
    return [f"{_label(k, c)}: securityContext.allowPrivilegeEscalation is "
            f"{'unset' if _sc(c).get('allowPrivilegeEscalation') is None else _sc(c)['allowPrivilegeEscalation']}"
            for k, c in all_containers(spec) if _sc(c).get("allowPrivilegeEscalation") is not False]


@_register("K8S-007", "Containers must run as non-root (runAsNonRoot)", "high",
           ("SOC2 CC6.1", "ISO27001 A.8.2"),
           "Set securityContext.runAsNonRoot: true on the pod (and never false on a container); the "
           "platform image runs as UID 10001.",
           "runAsNonRoot is true for every container")
def run_as_non_root(spec: dict, _m: dict) -> list[str]:
    """runAsNonRoot true at pod level or on every container; never false on a container."""
    pod_level = _sc(spec).get("runAsNonRoot")
    problems = []
    if pod_level is False:
        problems.append("spec.securityContext.runAsNonRoot is false")
    for k, c in all_containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is False:
            problems.append(f"{_label(k, c)}: securityContext.runAsNonRoot is false")
        elif value is None and pod_level is not True:
            problems.append(f"{_label(k, c)}: runAsNonRoot is set neither on the container nor on the pod")
    return problems


@_register("K8S-008", "No container runs as UID 0 (runAsUser)", "high",
           ("SOC2 CC6.1", "ISO27001 A.8.2"),
           "Remove runAsUser: 0 or set a non-zero UID (the platform image uses 10001).",
           "no runAsUser is 0")
def run_as_user(spec: dict, _m: dict) -> list[str]:
    """runAsUser must not be 0, on the pod or any container."""
    problems = ["spec.securityContext.runAsUser is 0"] if _sc(spec).get("runAsUser") == 0 else []
    problems += [f"{_label(k, c)}: securityContext.runAsUser is 0"
                 for k, c in all_containers(spec) if _sc(c).get("runAsUser") == 0]
    return problems


@_register("K8S-009", "Capabilities: drop ALL, add nothing but NET_BIND_SERVICE", "high",
           ("SOC2 CC6.1", "SOC2 CC6.8", "ISO27001 A.8.2"),
           "Set securityContext.capabilities.drop: [ALL] on every container and add at most NET_BIND_SERVICE.",
           "every container drops ALL capabilities")
def capabilities(spec: dict, _m: dict) -> list[str]:
    """Every container drops ALL; the only capability it may add back is NET_BIND_SERVICE."""
    problems = []
    for k, c in all_containers(spec):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{_label(k, c)}: capabilities.drop does not include ALL")
        added = sorted(set(caps.get("add") or []) - ALLOWED_ADD_CAPABILITIES)
        if added:
            problems.append(f"{_label(k, c)}: capabilities.add has {', '.join(map(str, added))}")
    return problems


@_register("K8S-010", "Seccomp profile RuntimeDefault or Localhost", "high",
           ("SOC2 CC6.8", "SOC2 CC7.1", "ISO27001 A.8.7", "ISO27001 A.8.9"),
           "Set spec.securityContext.seccompProfile.type: RuntimeDefault on the pod; never Unconfined on a container.",
           "every container runs under a RuntimeDefault or Localhost seccomp profile")
def seccomp(spec: dict, _m: dict) -> list[str]:
    """seccompProfile.type RuntimeDefault or Localhost on the pod or on every container; never Unconfined."""
    pod_type = (_sc(spec).get("seccompProfile") or {}).get("type")
    problems = []
    if pod_type is not None and pod_type not in ALLOWED_SECCOMP:
        problems.append(f"spec.securityContext.seccompProfile.type is {pod_type}")
    for k, c in all_containers(spec):
        ctype = (_sc(c).get("seccompProfile") or {}).get("type")
        if ctype is not None and ctype not in ALLOWED_SECCOMP:
            problems.append(f"{_label(k, c)}: seccompProfile.type is {ctype}")
        elif ctype is None and pod_type not in ALLOWED_SECCOMP:
            problems.append(f"{_label(k, c)}: no seccompProfile on the container or the pod")
    return problems


@_register("K8S-011", "Resource requests and limits set", "medium",
           ("SOC2 CC7.1", "SOC2 A1.1", "ISO27001 A.8.6"),
           "Set resources.requests and resources.limits for cpu and memory on every container, init containers "
           "included.",
           "every container has cpu and memory requests and limits")
def resources(spec: dict, _m: dict) -> list[str]:
    """Every init and regular container requests and limits cpu and memory (ephemeral containers cannot)."""
    problems = []
    for k, c in all_containers(spec):
        if k == "ephemeralContainer":
            continue
        res = c.get("resources") or {}
        missing = [f"{kind}.{what}" for kind in ("requests", "limits") for what in ("cpu", "memory")
                   if (res.get(kind) or {}).get(what) in (None, "")]
        if missing:
            problems.append(f"{_label(k, c)}: no resources.{', resources.'.join(missing)}")
    return problems


@_register("K8S-012", "Image tags pinned (no :latest, no missing tag)", "high",
           ("SOC2 CC8.1", "SOC2 CC7.1", "ISO27001 A.8.32", "ISO27001 A.8.9"),
           "Reference every image by a release tag (image:1.2.3) or a digest (image@sha256:...); never :latest "
           "or no tag.",
           "every image is pinned to a tag or digest")
def image_pinned(spec: dict, _m: dict) -> list[str]:
    """Every image names a tag other than latest, or a digest."""
    problems = []
    for k, c in all_containers(spec):
        image = str(c.get("image") or "")
        if not image:
            problems.append(f"{_label(k, c)}: no image")
            continue
        _, tag, digest = split_image(image)
        if digest:
            continue
        if tag is None:
            problems.append(f"{_label(k, c)}: image {image} has no tag (means :latest)")
        elif tag == "latest":
            problems.append(f"{_label(k, c)}: image {image} uses :latest")
    return problems


@_register("K8S-013", "Other baseline controls: sysctls, procMount, SELinux, AppArmor, hostProcess", "high",
           ("SOC2 CC6.1", "SOC2 CC6.8", "ISO27001 A.8.9"),
           "Remove unsafe sysctls, procMount other than Default, custom SELinux user/role or type, Unconfined "
           "AppArmor profiles and Windows hostProcess.",
           "no unsafe sysctl, procMount, SELinux, AppArmor or hostProcess setting")
def baseline_other(spec: dict, manifest: dict) -> list[str]:
    """The remaining controls of the baseline profile that restricted includes."""
    problems = []
    for s in _sc(spec).get("sysctls") or []:
        if isinstance(s, dict) and s.get("name") not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    holders = [("spec", spec)] + [(_label(k, c), c) for k, c in all_containers(spec)]
    for where, obj in holders:
        sc = _sc(obj)
        if (sc.get("windowsOptions") or {}).get("hostProcess") is True:
            problems.append(f"{where}: securityContext.windowsOptions.hostProcess is true")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in ALLOWED_SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type {se['type']} is not allowed")
        for key in ("user", "role"):
            if se.get(key):
                problems.append(f"{where}: seLinuxOptions.{key} is set")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: appArmorProfile.type is Unconfined")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: securityContext.procMount is {sc['procMount']}")
    if manifest.get("kind") != "Pod":
        template_path = POD_SPEC_PATHS[manifest["kind"]][:-1]
        template: dict = manifest
        for key in template_path:
            template = (template or {}).get(key) or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
    else:
        annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and value == "unconfined":
            problems.append(f"annotation {key} is unconfined")
    return problems
