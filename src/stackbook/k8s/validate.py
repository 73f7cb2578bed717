"""Offline validation of manifests against the Kubernetes OpenAPI schemas.

Uses the JSON schemas ``kubernetes-validate`` ships (strict variants: an unknown
field is an error, as ``kubectl apply --validate=strict`` would make it) for a
fixed Kubernetes version (``stackbook.k8s.KUBERNETES_VERSION``, overridable per
environment with ``kube_version``). No cluster is contacted.

``validate_manifests(manifests)`` returns every problem found, each naming the
resource and the field; ``check(manifests)`` raises ``ManifestError`` listing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from stackbook.k8s import KUBERNETES_VERSION, ManifestError, resource_id


@dataclass
class ValidationProblem:
    resource: str   # Kind/namespace/name
    field: str      # dotted path, e.g. spec.template.spec.containers[0].ports[0].containerPort
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.field or '(top level)'}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"resource": self.resource, "field": self.field, "message": self.message}


def supported_versions() -> list[str]:
    """The Kubernetes versions whose schemas the installed kubernetes-validate ships."""
    from kubernetes_validate.utils import all_versions

    return sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))


def _schema_version(version: str) -> str:
    from kubernetes_validate.utils import major_minor

    version = version.lstrip("v")
    wanted = tuple(int(p) for p in major_minor(version).split("."))
    fits = [v for v in supported_versions() if tuple(int(p) for p in major_minor(v).split(".")) <= wanted]
    if not fits or wanted > tuple(int(p) for p in major_minor(supported_versions()[-1]).split(".")):
        raise ManifestError(f"Kubernetes version {version} is not covered by the installed kubernetes-validate "
                            f"(schemas for {supported_versions()[0]} to {supported_versions()[-1]}); "
                            "set kube_version in the environment file to one of those")
    return fits[-1]


@lru_cache(maxsize=64)
def _validator(kind: str, api_version: str, version: str):
    """A Draft 2020-12 validator for one kind, with the version's definitions (cached: they are 1.8 MB)."""
    import re

    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    schema_dir = f"v{version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    defs = _definitions(schema_dir, version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = defs @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=4)
def _definitions(schema_dir: str, version: str):
    from kubernetes_validate.utils import schema_contents
    from referencing import Resource

    return Resource.from_contents(schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version))


def _field_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _types(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value] if value else []
    return [str(v) for v in values if v != "null"]


def _problems(error, rid: str) -> list[ValidationProblem]:
    """Turn one jsonschema error into problems naming the offending field."""
    base = _field_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set((error.schema or {}).get("properties") or {})
        extra = sorted(k for k in error.instance if k not in known) or ["?"]
        return [ValidationProblem(rid, f"{base}.{k}" if base else k,
                                  f"unknown field {k!r}" + (f" (known here: {', '.join(sorted(known))})"
                                                            if 0 < len(known) <= 12 else ""))
                for k in extra]
    if error.validator in ("oneOf", "anyOf") and error.context:
        # int-or-string and friends: report the simplest alternative's complaint
        types = sorted({t for e in error.context if isinstance(e.schema, dict)
                        for t in _types(e.schema.get("type"))})
        if types:
            return [ValidationProblem(rid, base, f"wrong type: {error.instance!r} is not {' or '.join(types)}")]
    if error.validator == "type":
        types = _types(error.validator_value)
        return [ValidationProblem(rid, base, f"wrong type: {error.instance!r} is not {' or '.join(types)}")]
    if error.validator == "required":
        return [ValidationProblem(rid, base, f"missing required field: {error.message}")]
    return [ValidationProblem(rid, base, error.message)]


def validate_manifest(manifest: dict, version: str = KUBERNETES_VERSION) -> list[ValidationProblem]:
    """Every schema problem of one manifest (an empty list when it is valid)."""
    rid = resource_id(manifest) if isinstance(manifest, dict) else "?"
    if not isinstance(manifest, dict):
        return [ValidationProblem(rid, "", f"not a mapping but a {type(manifest).__name__}")]
    for key in ("apiVersion", "kind"):
        if not isinstance(manifest.get(key), str) or not manifest.get(key):
            return [ValidationProblem(rid, key, f"missing or not a string: {key} is required")]
    schema_version = _schema_version(version)
    validator = _validator(manifest["kind"], manifest["apiVersion"], schema_version)
    if validator is None:
        return [ValidationProblem(rid, "apiVersion", f"no schema for kind {manifest['kind']} in "
                                  f"{manifest['apiVersion']} on Kubernetes {schema_version} (a typo, a removed "
                                  "API version or a custom resource?)")]
    problems: list[ValidationProblem] = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_problems(error, rid))
    return problems


def validate_manifests(manifests: list[dict], version: str = KUBERNETES_VERSION) -> list[ValidationProblem]:
    """Every schema problem of every manifest, each naming the resource and the field."""
    problems: list[ValidationProblem] = []
    for manifest in manifests:
        problems.extend(validate_manifest(manifest, version))
    return problems


def check(manifests: list[dict], version: str = KUBERNETES_VERSION) -> int:
    """Raise ``ManifestError`` listing every problem; returns the number of manifests validated."""
    problems = validate_manifests(manifests, version)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ManifestError(f"{len(problems)} schema problem(s) against Kubernetes {version}:\n{lines}")
    return len(manifests)


def version_for(env) -> str:
    """The Kubernetes version to validate an environment's manifests against."""
    return str(env.get("kube_version") or KUBERNETES_VERSION)
