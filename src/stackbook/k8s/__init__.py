"""Kubernetes: the manifests in ``infra/k8s`` rendered, validated and applied.

``render`` turns the kustomize-style base and overlays into plain manifests per
environment, ``validate`` checks them offline against the Kubernetes OpenAPI
schemas, ``apply`` prints a plan or server-side applies them. The Kubernetes
rules of the compliance audit live in ``stackbook.audit.kubernetes``.
"""

from __future__ import annotations

from stackbook.core.errors import KubernetesError, ManifestError  # noqa: F401 (re-exported)

# The Kubernetes version manifests are validated against (kubernetes-validate
# 1.37 ships schemas for 1.25 to 1.37; the kubernetes client 37 speaks 1.37).
# An environment file may override it with ``kube_version: "1.33"``.
KUBERNETES_VERSION = "1.37"


def resource_id(manifest: dict) -> str:
    """``Kind/namespace/name`` (``Kind/name`` for cluster-scoped or unnamespaced manifests)."""
    kind = manifest.get("kind") or "?"
    meta = manifest.get("metadata") or {}
    name = meta.get("name") or "?"
    ns = meta.get("namespace")
    return f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"
