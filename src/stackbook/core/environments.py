"""Environments: ``infra/environments/<env>.yml``.

An environment file holds what differs between dev, staging and prod::

    description: a laptop or CI machine
    approval:                    # destructive non-dry runs need a recorded approval (stackbook approve)
      approvers: [alice, bob]    #   only these may approve (omitted: anyone may)
      two_person: true           #   and never the run's own operator
    require_approval: false      # the older form: true means an approval is required, anyone may give it
    run_store: null              # base URL of executed notebooks (default .stackbook/runs), e.g. s3://bucket/prefix
    s3_endpoint: null            # an S3-compatible server's URL (MinIO, moto); none: $AWS_ENDPOINT_URL or AWS
    kube_context: null           # kubeconfig context; none means plans only
    dbt_threads: 4
    params: {rows: 1000}         # values for every runbook that has these parameters
    runbooks:                    # values for one runbook
      load_jaffle_shop: {years: 1}
    identity: declared           # database: the operator is the PostgreSQL role of the run's session (verified)
    kernel_env: [AWS_PROFILE]    # more variables of the runner's environment for the kernel (stackbook.run.kernel)
    book_url: https://handbook.example.com   # where the book is served: messages link to runbook pages
    notify:                      # routes of notifications (checked by stackbook.notify.routes)
      - {events: [failed, recovered], runbooks: [load_*], channels: ["json://hooks.example.com/${HOOK_TOKEN}"]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import EnvironmentFileError
from stackbook.core.files import load_yaml

DEFAULT_ENV = "dev"
#: an environment name is the stem of a file in infra/environments/: no path separators, no "..", no leading dot
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IDENTITIES = ("database", "declared")  # how a run's operator is known (stackbook.run.evidence)
S3_URL_RE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?")  # s3://bucket/prefix, the bucket as S3 names them
VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an environment variable's name, as kernel_env lists them


@dataclass(frozen=True)
class ApprovalPolicy:
    """An environment's rule for destructive runs that are not dry runs (``stackbook.run.approvals``)."""

    required: bool = False
    approvers: tuple[str, ...] = ()  # empty: anyone may approve
    two_person: bool = False  # the approver is never the run's operator


APPROVAL_KEYS = ("approvers", "two_person")


@dataclass
class Environment:
    name: str
    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    @property
    def approval(self) -> ApprovalPolicy:
        """Who must approve a destructive run that is not a dry run: the ``approval:`` block (checked by
        ``load``), else ``require_approval: true`` (an approval by anyone), else none needed."""
        block = self.data.get("approval")
        if isinstance(block, dict):
            return ApprovalPolicy(required=True, approvers=tuple(block.get("approvers") or ()),
                                  two_person=bool(block.get("two_person", False)))
        return ApprovalPolicy(required=bool(self.data.get("require_approval", False)))

    @property
    def require_approval(self) -> bool:
        return self.approval.required

    @property
    def shared_params(self) -> dict[str, Any]:
        return dict(self.data.get("params") or {})

    def runbook_params(self, runbook: str) -> dict[str, Any]:
        return dict((self.data.get("runbooks") or {}).get(runbook) or {})

    @property
    def identity(self) -> str:
        """How a run's operator is known (``IDENTITIES``; checked by ``load``): ``database`` or ``declared``."""
        return self.data.get("identity") or "declared"

    @property
    def kernel_env(self) -> list[str]:
        """Names of the runner's environment variables the kernel also gets (``kernel_env:``; checked by ``load``)."""
        return list(self.data.get("kernel_env") or [])


def available() -> list[str]:
    folder = project.environments_dir()
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


def load(name: str = DEFAULT_ENV) -> Environment:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        from stackbook.core.notebooks import shown  # only on this error: the CLI imports this module at start

        known = ", ".join(available()) or "none"
        raise EnvironmentFileError(
            f"environment name {shown(name)} is not the plain name of a file in {project.environments_dir()} "
            f"(letters, digits, '_', '.', '-', at most 64; known environments: {known})", env=None)
    path = project.environments_dir() / f"{name}.yml"
    if not path.exists():
        known = ", ".join(available()) or "none"
        raise EnvironmentFileError(f"unknown environment {name!r}: no {path} (known environments: {known})", env=name)
    data = load_yaml(path, what="environment file", error=EnvironmentFileError, default={})
    if not isinstance(data, dict):
        raise EnvironmentFileError(f"{path} must hold a mapping", env=name)
    for key in ("params", "runbooks"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise EnvironmentFileError(f"{path}: {key} must be a mapping", env=name)
    for runbook, values in (data.get("runbooks") or {}).items():
        if values is not None and not isinstance(values, dict):
            raise EnvironmentFileError(f"{path}: runbooks.{runbook} must be a mapping of parameter: value", env=name)
    _check_kernel_env(path, name, data.get("kernel_env"))
    _check_approval(path, name, data.get("approval"))
    if data.get("identity") is not None and data["identity"] not in IDENTITIES:
        raise EnvironmentFileError(f"{path}: identity is {data['identity']!r}; use one of {', '.join(IDENTITIES)} "
                                   "(database: each operator connects with a login role of their own)", env=name)
    _check_s3_endpoint(path, name, data.get("s3_endpoint"))
    _check_backup_stores(path, name, data.get("dr"))
    return Environment(name=name, path=path, data=data)


def _check_kernel_env(path: Path, env: str, names: Any) -> None:
    """``kernel_env`` is a list of variable names (the values stay in the runner's environment, never here)."""
    if names is None:
        return
    if not isinstance(names, list):
        raise EnvironmentFileError(f"{path}: kernel_env must be a list of environment variable names, e.g. "
                                   "kernel_env: [AWS_PROFILE, HTTPS_PROXY]", env=env)
    bad = [n for n in names if not isinstance(n, str) or not VARIABLE_RE.fullmatch(n)]
    if bad:
        shown = ", ".join(_shown_name(n) for n in bad[:3])
        raise EnvironmentFileError(f"{path}: kernel_env lists {shown}, not the name of an environment variable "
                                   "(letters, digits and '_', not starting with a digit; list names, not NAME=value)",
                                   env=env)


def _check_approval(path: Path, env: str, block: Any) -> None:
    """``approval`` is a mapping of ``approvers`` (a list of names) and ``two_person`` (true or false)."""
    if block is None:
        return
    example = "e.g. approval: {approvers: [alice, bob], two_person: true}"
    if not isinstance(block, dict):
        raise EnvironmentFileError(f"{path}: approval must be a mapping, {example}", env=env)
    unknown = sorted(str(k) for k in block if k not in APPROVAL_KEYS)
    if unknown:
        raise EnvironmentFileError(f"{path}: approval has unknown key(s) {', '.join(unknown)}; it takes "
                                   f"{' and '.join(APPROVAL_KEYS)}, {example}", env=env)
    approvers = block.get("approvers")
    if approvers is not None and (not isinstance(approvers, list) or not approvers
                                  or not all(isinstance(a, str) and a.strip() for a in approvers)):
        raise EnvironmentFileError(f"{path}: approval.approvers must be a non-empty list of names (the operators, "
                                   f"or database roles under identity: database), {example}", env=env)
    if not isinstance(block.get("two_person", False), bool):
        raise EnvironmentFileError(f"{path}: approval.two_person must be true or false, {example}", env=env)


def _check_s3_endpoint(path: Path, env: str, url: Any) -> None:
    """``s3_endpoint`` is an http(s) URL with a host and no credentials (those come from the environment)."""
    if url is None:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnvironmentFileError(f"{path}: s3_endpoint must be the http(s) URL of an S3-compatible server, "
                                   "e.g. s3_endpoint: http://127.0.0.1:9000 (or null for AWS itself)", env=env)
    if parts.username or parts.password:
        raise EnvironmentFileError(f"{path}: s3_endpoint must not carry credentials: remove the user:password@ part "
                                   "and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment", env=env)


def _check_backup_stores(path: Path, env: str, section: Any) -> None:
    """``dr.backup_store`` and ``dr.backup_copy`` (stackbook.dr.drill) are s3://bucket/prefix URLs; a copy
    needs a store."""
    if not isinstance(section, dict):
        return  # dr itself is checked by the drill (its targets)
    for key in ("backup_store", "backup_copy"):
        value = section.get(key)
        if value is not None and not (isinstance(value, str) and S3_URL_RE.fullmatch(value)):
            raise EnvironmentFileError(f"{path}: dr.{key} must be an s3://bucket/prefix URL, got {value!r} "
                                       "(or null: backups stay under .stackbook/backups only)", env=env)
    if section.get("backup_copy") and not section.get("backup_store"):
        raise EnvironmentFileError(f"{path}: dr.backup_copy needs dr.backup_store (the copy is of that store)", env=env)


def _shown_name(entry: Any) -> str:
    """A bad ``kernel_env`` entry for an error message: never what follows an ``=`` (it may be a secret)."""
    if not isinstance(entry, str):
        return f"a {type(entry).__name__}"
    name, sep, _value = entry.partition("=")
    return repr(name[:40] + ("=..." if sep else ""))


def current_name() -> str:
    """The name of this run's environment: ``$STACKBOOK_ENV`` (set by the runner and ``stackbook lab``), else dev."""
    import os

    return os.environ.get("STACKBOOK_ENV") or DEFAULT_ENV


def current() -> Environment:
    """The environment of this run (``current_name()``), loaded."""
    return load(current_name())
