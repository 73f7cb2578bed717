"""The ploomber side of a pipeline: spec expansion, the DAG, and what is up to date.

Used from ploomber: ``DAGSpec`` (the spec's keys are validated and its
``{{placeholders}}`` expanded from ``env.yaml`` and the profile's overlay, as
``ploomber build`` does), ``DAG`` with ``File``/``MetaProduct`` products, and
the product metadata ploomber keeps beside each product (``.<file>.metadata``:
the source it was built from, its parameters, a timestamp). ``DAG.render``
marks a task ``Skipped`` when its source and parameters match the metadata and
no upstream product is newer or outdated. Not used: ploomber's executors and
``NotebookRunner`` (execution goes through :mod:`stackbook.run.engine`, see
:mod:`stackbook.pipelines.execute`).

Products: relative product paths are placed under
``.stackbook/pipelines/<pipeline>/<env>/`` so that environments never share
incremental state. The ``nb`` product is a copy of the executed notebook.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stackbook.core import privacy, project
from stackbook.core.environments import DEFAULT_ENV
from stackbook.core.errors import StackbookError, UsageError
from stackbook.core.files import atomic_write_text
from stackbook.pipelines.spec import PipelineSpec, PipelineSpecError
from stackbook.run import engine as runner


def import_ploomber():
    """Import ploomber with its telemetry and version check off and its home under .stackbook/."""
    privacy.telemetry_off()
    home = project.state_dir() / "ploomber"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PLOOMBER_HOME_DIR", str(home))
    # as in runner._fast_imports: nbformat's optional IRI checker costs seconds and nothing here needs it
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pydantic v1-style models inside ploomber
        import ploomber

    return ploomber


def products_dir(spec: PipelineSpec, env: str) -> Path:
    return project.state_dir() / "pipelines" / spec.state_key / env


def runbook_source_text(path: Path) -> str:
    """What counts as a runbook's source for incremental runs: its code cells, in order, and its inputs.

    Markdown edits do not re-run a task; any code change (parameters cell included) does, and so does
    a change to a file matched by ``metadata.stackbook.inputs`` (globs relative to the project root,
    e.g. ``pipelines/dbt/**`` for the runbook that builds the dbt project).
    """
    from stackbook.core import notebooks

    nb = notebooks.read_json(path)
    cells = [notebooks.cell_source(c) for c in nb["cells"] if c.get("cell_type") == "code"]
    text = "\n# ---- cell ----\n".join(cells)
    inputs = (nb.get("metadata", {}).get("stackbook") or {}).get("inputs") or []
    if inputs:
        text += f"\n# ---- inputs ----\n# sha256 {inputs_digest(inputs)}"
    return text


def inputs_digest(patterns: list[str], root: Path | None = None) -> str:
    """One sha256 over the paths and contents of the files the globs match (build outputs excluded)."""
    import hashlib

    root = root or project.root()
    digest = hashlib.sha256()
    files = sorted({f for pattern in patterns for f in root.glob(pattern) if f.is_file()
                    and not any(part in _NOT_INPUTS for part in f.relative_to(root).parts)})
    for f in files:
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


_NOT_INPUTS = {"target", "logs", "dbt_packages", "__pycache__", ".ipynb_checkpoints"}


@dataclass
class PlannedTask:
    name: str
    runbook: str
    path: Path
    upstream: list[str]
    prepared: runner.Prepared
    products: dict[str, Path]
    action: str = "run"  # "run", "skip" or (a repair) "keep"
    why: str = ""
    ploomber_task: Any = None
    first_attempt: int = 1  # a repair continues the attempts of the pipeline run it repairs
    resume_from: str | None = None  # a repair's first attempt continues this run (``resumable: true``)
    repair: bool = False  # rerun by a repair (``stackbook.pipelines.repair``)

    @property
    def resumable(self) -> bool:
        return bool(self.prepared.runbook.metadata.get("resumable"))

    @property
    def retries(self) -> int:
        return int(self.prepared.runbook.metadata.get("retries") or 0)

    @property
    def retry_delay_s(self) -> float:
        return float(self.prepared.runbook.metadata.get("retry_delay_s") or 0)


@dataclass
class Plan:
    spec: PipelineSpec
    env: str
    profile: str | None
    tasks: dict[str, PlannedTask] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    dag: Any = None

    def mark_built(self, name: str, executed_notebook: str) -> list[str]:
        """After a task succeeded: copy its notebook to the ``nb`` product, save ploomber's metadata.

        Returns the products that are still missing (the task is then treated as failed).
        """
        from stackbook.run import runstore

        task = self.tasks[name]
        nb_path = task.products["nb"]
        # an executed notebook: owner-only (0600, folders 0700), as in the run store
        executed = runstore.read_notebook(executed_notebook, task.prepared.env.get("s3_endpoint"))
        atomic_write_text(nb_path, json.dumps(executed, indent=1) + "\n")
        missing = [str(p) for p in task.products.values() if not p.exists()]
        if missing:
            return missing
        pt = task.ploomber_task
        pt.product.metadata.update(source_code=str(pt.source), params=pt.params.to_json_serializable(params_only=True))
        return []


def _expand(spec: PipelineSpec, env_values: dict[str, Any], sources: dict[str, Path]) -> list[dict[str, Any]]:
    """Ploomber's DAGSpec: key validation and placeholder expansion; returns the expanded tasks."""
    import_ploomber()  # first: telemetry off and warnings quiet before any ploomber module loads
    from ploomber.exceptions import DAGSpecInitializationError
    from ploomber.spec import DAGSpec

    data = json.loads(json.dumps(spec.data, default=str))  # a deep copy, plain types
    meta = dict(data.get("meta") or {})
    meta.update(extract_upstream=False, extract_product=False)
    data["meta"] = meta
    for raw, outline in zip(data["tasks"], spec.tasks):
        raw["source"] = str(sources[outline.name])
        raw["name"] = outline.name
        raw["upstream"] = list(outline.upstream) or None
        if not raw["upstream"]:
            raw.pop("upstream")
    try:
        dagspec = DAGSpec(data, env=env_values, lazy_import=True, parent_path=str(spec.folder))
    except (DAGSpecInitializationError, KeyError, ValueError, TypeError) as exc:
        raise PipelineSpecError(f"{spec.path}: {exc}") from None
    out = []
    for ts in dagspec["tasks"]:
        d = dict(ts.data)
        out.append({k: d.get(k) for k in ("name", "source", "product", "params", "upstream")})
    return out


def expand_params(spec: PipelineSpec, profile: str | None = None) -> dict[str, dict[str, Any]]:
    """Each task's parameters with placeholders expanded (for schedulers); runbooks need not exist yet."""
    import_ploomber()
    sources = {}
    for t in spec.tasks:
        try:
            sources[t.name] = spec.resolve_source(t.source)
        except StackbookError:
            sources[t.name] = spec.folder / f"{Path(t.source).stem}.ipynb"  # only its extension matters here
    return {d["name"]: dict(d.get("params") or {}) for d in _expand(spec, spec.env_values(profile), sources)}


def _product_paths(spec: PipelineSpec, task: str, product: Any, base: Path) -> dict[str, Path]:
    if isinstance(product, (str, Path)):
        product = {"nb": product}
    if not isinstance(product, dict) or "nb" not in product:
        raise PipelineSpecError(f"{spec.path}: task {task!r}: `product:` must be a path (the executed notebook) or "
                                "a mapping with an `nb` key (the executed notebook) and other named files")
    out = {}
    for key, value in product.items():
        p = Path(str(value))
        out[str(key)] = p if p.is_absolute() else base / p
    if not out["nb"].name.endswith(".ipynb"):
        raise PipelineSpecError(f"{spec.path}: task {task!r}: the `nb` product must end with .ipynb, got {out['nb']}")
    return out


def _task_class() -> type:
    """``RunbookTask``, from the module that derives it from ploomber's ``Task`` (importing ploomber)."""
    from stackbook.pipelines.runbook_task import RunbookTask

    return RunbookTask


def _why(pt, force: bool, will_run_upstream: list[str]) -> str:
    if force:
        return "--force"
    product = pt.product
    if not product.exists():
        return "no product yet (never built here)"
    first = next(iter(product.products)) if hasattr(product, "products") else product  # a MetaProduct or a File
    meta = first.metadata
    if meta.stored_source_code is None:
        return "no build metadata"
    if meta.stored_source_code != str(pt.source):
        return "runbook source or its inputs changed"
    current = pt.params.to_json_serializable(params_only=True)
    if (meta.params or {}) != json.loads(json.dumps(current, default=str)):
        changed = sorted(k for k in set(current) | set(meta.params or {})
                         if (meta.params or {}).get(k) != current.get(k))
        return "parameters changed: " + ", ".join(changed)
    if will_run_upstream:
        return "upstream re-runs: " + ", ".join(will_run_upstream)
    return "an upstream product is newer"


def plan(spec: PipelineSpec, *, env: str = DEFAULT_ENV, profile: str | None = None, force: bool = False,
         pipeline_run_id: str | None = None, cli_params: list[str] | None = None) -> Plan:
    """Check every task (parameters, secrets, approval: nothing runs on a bad one) and decide what runs."""
    sources = _task_sources(spec)
    expanded = {d["name"]: d for d in _expand(spec, spec.env_values(profile), sources)}
    ploomber = import_ploomber()
    base = products_dir(spec, env)
    result = Plan(spec=spec, env=env, profile=profile, order=spec.order())
    dag = ploomber.DAG(name=spec.name)
    for name in result.order:
        params = expanded[name].get("params") or {}
        options = runner.RunOptions(env=env, extra_params=dict(params), cli_params=list(cli_params or []),
                                    pipeline_run_id=pipeline_run_id, progress="off")
        result.tasks[name] = _plan_task(spec, name, sources[name], options, expanded[name].get("product"), base, dag)
    _render(dag, force)
    for name in result.order:  # upstream first: a task re-runs when one of its upstream tasks does
        _decide(result, result.tasks[name], force)
    result.dag = dag
    return result


def _task_sources(spec: PipelineSpec) -> dict[str, Path]:
    """Each task's notebook; a task whose runbook cannot be found is a spec error naming it."""
    sources = {}
    for t in spec.tasks:
        try:
            sources[t.name] = spec.resolve_source(t.source)
        except StackbookError as exc:
            raise PipelineSpecError(f"pipeline {spec.name!r}, task {t.name!r}: {exc}") from None
    return sources


def _plan_task(spec: PipelineSpec, name: str, source: Path, options: runner.RunOptions, product: Any, base: Path,
               dag) -> PlannedTask:
    """Prepare one task's run (checked as ``stackbook run`` checks it) and add it to the ploomber DAG."""
    from ploomber.products import File

    try:
        prepared = runner.prepare(str(source), options)
    except StackbookError as exc:
        kind = type(exc) if isinstance(exc, UsageError) else UsageError
        raise kind(f"pipeline {spec.name!r}, task {name!r}: {exc} (nothing was executed)",
                   runbook=prepared_name(source), env=options.env) from None
    products = _product_paths(spec, name, product, base)
    plain = json.loads(json.dumps(prepared.params, default=str))
    pt = _task_class()(str(source), {k: File(v) for k, v in products.items()}, dag, name=name, params=plain)
    upstream = list(spec.task(name).upstream)
    for up in upstream:
        dag[up] >> pt
    return PlannedTask(name=name, runbook=prepared.runbook.name, path=source, upstream=upstream, prepared=prepared,
                       products=products, ploomber_task=pt)


def _render(dag, force: bool) -> None:
    """ploomber's verdict per task (``Skipped`` when up to date)."""
    import warnings

    with warnings.catch_warnings():
        # ploomber warns when one file of a multi-file product is missing ("corrupted metadata"); the
        # task is outdated then, and _why() says why in plain words
        warnings.simplefilter("ignore", UserWarning)
        dag.render(force=force, show_progress=False)


def _decide(result: Plan, task: PlannedTask, force: bool) -> None:
    """Run or skip, and why: ploomber's verdict, overruled by an upstream re-run or an expired freshness window."""
    from ploomber.constants import TaskStatus

    pt = task.ploomber_task
    ups = [u for u in task.upstream if result.tasks[u].action == "run"]
    first = next(iter(pt.product.products)) if hasattr(pt.product, "products") else pt.product
    hours = task.prepared.runbook.metadata.get("freshness_hours")
    if pt.exec_status == TaskStatus.Skipped and ups:
        task.action, task.why = "run", "upstream re-runs: " + ", ".join(ups)
    elif pt.exec_status == TaskStatus.Skipped and expired(first.metadata.timestamp, hours):
        task.action, task.why = "run", f"last built over {hours:g} h ago (its freshness_hours)"
    elif pt.exec_status == TaskStatus.Skipped:
        task.action = "skip"
        task.why = "up to date: runbook source, parameters and upstream products unchanged"
    else:
        task.action = "run"
        task.why = _why(pt, force, ups)


def expired(timestamp: float | None, freshness_hours: float | None, now: float | None = None) -> bool:
    """Whether a product built at ``timestamp`` is older than its runbook's freshness window.

    A scheduled pipeline must not skip a task forever because nothing in the project changed: the data
    it loads, the database it audits and the models it trains change outside the project.
    """
    if freshness_hours is None or timestamp is None:
        return False
    return (now or time.time()) - float(timestamp) > float(freshness_hours) * 3600


def prepared_name(path: Path) -> str:
    return Path(path).stem


def with_attempt(prepared: runner.Prepared, attempt: int, pipeline_run_id: str) -> runner.Prepared:
    return replace(prepared, options=replace(prepared.options, attempt=attempt, pipeline_run_id=pipeline_run_id))
