"""Reading pipeline specs with YAML alone (no ploomber): names, tasks, order, schedule.

``list``, ``show`` and the schedule generators need the structure of a pipeline
(its tasks, their runbooks and dependencies, its schedule) but not ploomber's
placeholder expansion, so they read it here and start fast. Running a pipeline
goes through :mod:`stackbook.pipelines.dag`, which hands the same file to
ploomber.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.catalog import Broken
from stackbook.core.errors import PipelineSpecError, StackbookError  # noqa: F401 (PipelineSpecError re-exported)
from stackbook.core.files import load_yaml

SPEC_FILENAME = "pipeline.yaml"
STACKBOOK_KEY = "stackbook"  # our extras; stripped before ploomber sees the spec
STACKBOOK_FIELDS = {"description", "owner", "schedule", "profile", "timeout"}


@dataclass
class TaskOutline:
    name: str
    source: str  # a runbook name or a path to a notebook, as written
    upstream: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # unexpanded ({{placeholders}} kept)
    product: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "upstream": list(self.upstream), "params": self.params,
                "product": self.product}


@dataclass
class PipelineSpec:
    name: str
    path: Path  # the pipeline.yaml
    data: dict[str, Any]  # the ploomber part of the spec (no `stackbook:` key)
    meta: dict[str, Any]  # the `stackbook:` mapping
    tasks: list[TaskOutline]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def schedule(self) -> str | None:
        return self.meta.get("schedule")

    @property
    def description(self) -> str:
        return self.meta.get("description") or ""

    @property
    def in_project(self) -> bool:
        try:
            self.path.resolve().relative_to(pipelines_dir().resolve())
            return True
        except ValueError:
            return False

    @property
    def state_key(self) -> str:
        """Folder name of this pipeline's products under .stackbook/pipelines/."""
        if self.in_project:
            return self.name
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    def task(self, name: str) -> TaskOutline:
        for t in self.tasks:
            if t.name == name:
                return t
        raise PipelineSpecError(f"pipeline {self.name!r} has no task {name!r} (tasks: "
                                f"{', '.join(t.name for t in self.tasks)})")

    def order(self) -> list[str]:
        """Task names in a topological order (spec order among independent tasks)."""
        done: list[str] = []
        pending = [t.name for t in self.tasks]
        ups = {t.name: set(t.upstream) for t in self.tasks}
        while pending:
            ready = [n for n in pending if ups[n] <= set(done)]
            if not ready:
                raise PipelineSpecError(f"{self.path}: the tasks {', '.join(pending)} depend on each other in a "
                                        "cycle; remove one of their `upstream` entries")
            done.extend(ready)
            pending = [n for n in pending if n not in ready]
        return done

    def resolve_source(self, source: str) -> Path:
        """The notebook of a task: a runbook name from the catalogue, or a path (relative to the spec first)."""
        from stackbook.core import catalog

        if source.endswith(".ipynb") or "/" in source:
            here = (self.folder / source)
            if here.exists():
                return here.resolve()
        return catalog.find(source)

    def env_values(self, profile: str | None = None) -> dict[str, Any]:
        """``env.yaml`` then ``env.<profile>.yaml`` over it (placeholder values)."""
        values = _read_yaml_mapping(self.folder / "env.yaml", optional=True)
        if profile:
            overlay = self.folder / f"env.{profile}.yaml"
            if not overlay.exists():
                known = sorted(p.name for p in self.folder.glob("env.*.yaml"))
                raise PipelineSpecError(f"pipeline {self.name!r} has no {overlay.name} in {self.folder} "
                                        f"(profiles: {', '.join(known) or 'none'})")
            values.update(_read_yaml_mapping(overlay))
        return values

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "description": self.description,
                "schedule": self.schedule, "owner": self.meta.get("owner"),
                "tasks": [t.name for t in self.tasks]}

    def to_dict(self) -> dict[str, Any]:
        profiles = sorted(p.name[len("env."):-len(".yaml")] for p in self.folder.glob("env.*.yaml"))
        return {**self.summary(), "meta": self.meta, "profiles": profiles, "order": self.order(),
                "tasks": [t.to_dict() for t in self.tasks]}


def pipelines_dir() -> Path:
    return project.root() / "pipelines"


def _read_yaml_mapping(path: Path, optional: bool = False) -> dict[str, Any]:
    if optional and not path.exists():
        return {}
    data = load_yaml(path, what="pipeline file", error=PipelineSpecError, default={})
    if not isinstance(data, dict):
        raise PipelineSpecError(f"{path} must hold a mapping")
    return data


def paths() -> list[Path]:
    root = pipelines_dir()
    return sorted(root.glob(f"*/{SPEC_FILENAME}")) if root.is_dir() else []


def find(name: str) -> Path:
    """The spec of pipeline NAME (``pipelines/NAME/pipeline.yaml``), or a path to a pipeline.yaml or its folder."""
    candidate = Path(name)
    if name.endswith((".yaml", ".yml")) or "/" in name or candidate.is_absolute():
        path = candidate if candidate.is_absolute() or candidate.exists() else project.root() / name
        if path.is_dir():
            path = path / SPEC_FILENAME
        if not path.exists():
            raise PipelineSpecError(f"{name}: no such pipeline spec")
        return path.resolve()
    path = pipelines_dir() / name / SPEC_FILENAME
    if not path.exists():
        known = ", ".join(p.parent.name for p in paths()) or "none"
        raise PipelineSpecError(f"no pipeline named {name!r}: no {path} (known pipelines: {known})")
    return path


def load_spec(name: str) -> PipelineSpec:
    path = find(name)
    raw = _read_yaml_mapping(path)
    meta = raw.pop(STACKBOOK_KEY, None) or {}
    if not isinstance(meta, dict):
        raise PipelineSpecError(f"{path}: `{STACKBOOK_KEY}:` must be a mapping")
    unknown = set(meta) - STACKBOOK_FIELDS
    if unknown:
        raise PipelineSpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} under `{STACKBOOK_KEY}:` "
                                f"(known: {', '.join(sorted(STACKBOOK_FIELDS))})")
    if meta.get("schedule") is not None:
        _check_cron(meta["schedule"], f"{path}: stackbook.schedule")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise PipelineSpecError(f"{path}: `tasks:` must be a non-empty list of tasks")
    tasks: list[TaskOutline] = []
    for i, t in enumerate(tasks_raw):
        if not isinstance(t, dict) or not t.get("source"):
            raise PipelineSpecError(f"{path}: task {i + 1} needs a `source:` (a runbook name or a notebook path)")
        source = str(t["source"])
        name_ = str(t.get("name") or Path(source).stem)
        upstream = t.get("upstream") or []
        if isinstance(upstream, str):
            upstream = [upstream]
        if not isinstance(upstream, list):
            raise PipelineSpecError(f"{path}: task {name_!r}: `upstream:` must be a task name or a list of them")
        params = t.get("params") or {}
        if not isinstance(params, dict):
            raise PipelineSpecError(f"{path}: task {name_!r}: `params:` must be a mapping")
        if t.get("product") is None:
            raise PipelineSpecError(f"{path}: task {name_!r} needs a `product:` (at least the executed notebook, "
                                    "e.g. `product: {nb: products/" + name_ + ".ipynb}`)")
        tasks.append(TaskOutline(name=name_, source=source, upstream=[str(u) for u in upstream], params=params,
                                 product=t.get("product")))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PipelineSpecError(f"{path}: task names must be unique; repeated: {', '.join(dupes)} (set `name:`)")
    for t in tasks:
        missing = [u for u in t.upstream if u not in names]
        if missing:
            raise PipelineSpecError(f"{path}: task {t.name!r} has unknown upstream {', '.join(missing)} "
                                    f"(tasks: {', '.join(names)})")
    spec = PipelineSpec(name=path.parent.name, path=path, data=raw, meta=meta, tasks=tasks)
    spec.order()  # raises on a cycle
    return spec


def _check_cron(expr: Any, where: str) -> None:
    from croniter import croniter

    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise PipelineSpecError(f"{where}: {expr!r} is not a valid cron expression (e.g. '0 6 * * *')")


def all_pipelines() -> list[PipelineSpec]:
    return [load_spec(str(p)) for p in paths()]


def scan() -> tuple[list[PipelineSpec], list[Broken]]:
    """Every pipeline whose spec loads, and a ``catalog.Broken`` entry for each one that does not (for listings)."""
    good: list[PipelineSpec] = []
    broken: list[Broken] = []
    for path in paths():
        try:
            good.append(load_spec(str(path)))
        except (StackbookError, OSError) as exc:
            broken.append(Broken(kind="pipeline", name=path.parent.name, path=path, error=str(exc)))
    return good, broken
