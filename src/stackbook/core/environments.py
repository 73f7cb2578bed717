"""Environments: ``infra/environments/<env>.yml``.

An environment file holds what differs between dev, staging and prod::

    description: a laptop or CI machine
    require_approval: false      # destructive non-dry runs need --approved-by
    run_store: null              # base URL of executed notebooks (default .stackbook/runs)
    kube_context: null           # kubeconfig context; none means plans only
    dbt_threads: 4
    params: {rows: 1000}         # values for every runbook that has these parameters
    runbooks:                    # values for one runbook
      load_jaffle_shop: {years: 1}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import EnvironmentFileError

DEFAULT_ENV = "dev"


@dataclass
class Environment:
    name: str
    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    @property
    def require_approval(self) -> bool:
        return bool(self.data.get("require_approval", False))

    @property
    def shared_params(self) -> dict[str, Any]:
        return dict(self.data.get("params") or {})

    def runbook_params(self, runbook: str) -> dict[str, Any]:
        return dict((self.data.get("runbooks") or {}).get(runbook) or {})


def available() -> list[str]:
    folder = project.environments_dir()
    return sorted(p.stem for p in folder.glob("*.yml")) if folder.is_dir() else []


def load(name: str = DEFAULT_ENV) -> Environment:
    import yaml

    path = project.environments_dir() / f"{name}.yml"
    if not path.exists():
        known = ", ".join(available()) or "none"
        raise EnvironmentFileError(f"unknown environment {name!r}: no {path} (known environments: {known})", env=name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EnvironmentFileError(f"{path} is not valid YAML: {exc}", env=name) from None
    if not isinstance(data, dict):
        raise EnvironmentFileError(f"{path} must hold a mapping", env=name)
    for key in ("params", "runbooks"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise EnvironmentFileError(f"{path}: {key} must be a mapping", env=name)
    return Environment(name=name, path=path, data=data)


def current() -> Environment:
    """The environment of this run (``$STACKBOOK_ENV``, set by the runner and ``stackbook lab``), else dev."""
    import os

    return load(os.environ.get("STACKBOOK_ENV") or DEFAULT_ENV)
