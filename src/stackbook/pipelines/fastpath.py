"""The no-change fast path: prove a pipeline is up to date without importing ploomber.

Importing ploomber costs seconds (pandas, pyarrow, matplotlib, jupytext come
with it), which would dominate a rerun where nothing changed. Before paying
for it, this module reads the metadata ploomber wrote beside each product
(``.<file>.metadata``: ``timestamp``, ``stored_source_code``, ``params``) and
checks ploomber's own conditions for every task: every product exists with
metadata, the stored source equals the runbook's code cells, the stored
parameters equal the resolved ones, no upstream product is newer, and no
product is older than its runbook's ``freshness_hours``.

It is conservative: it only ever answers "every task is up to date" or "ask
ploomber". Placeholders are expanded here only when they are plain keys of
``env.yaml``/``env.<profile>.yaml`` (``{{ years }}``); anything else (ploomber's
built-ins such as ``{{here}}``, filters, a missing key) sends the pipeline to
ploomber, which then decides as usual.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stackbook.core.errors import StackbookError, UsageError
from stackbook.pipelines.spec import PipelineSpec
from stackbook.run import engine as runner

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class _NeedPloomber(Exception):
    pass


def _expand(value: Any, env_values: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, env_values) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env_values) for v in value]
    if not isinstance(value, str) or "{" not in value and "}" not in value:
        return value
    whole = _PLACEHOLDER.fullmatch(value.strip())
    if whole:
        if whole.group(1) not in env_values:
            raise _NeedPloomber
        return env_values[whole.group(1)]

    def sub(m: re.Match) -> str:
        if m.group(1) not in env_values:
            raise _NeedPloomber
        return str(env_values[m.group(1)])

    out = _PLACEHOLDER.sub(sub, value)
    if "{{" in out or "{%" in out or "}}" in out:
        raise _NeedPloomber  # jinja beyond plain keys
    return out


def _metadata(path: Path) -> dict | None:
    meta_path = path.parent / f".{path.name}.metadata"
    if not path.exists() or not meta_path.exists():
        return None
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("timestamp") is not None else None


def plan_if_up_to_date(spec: PipelineSpec, *, env: str, profile: str | None, pipeline_run_id: str,
                       cli_params: list[str] | None = None):
    """A Plan with every task skipped when provably up to date; None when ploomber must decide.

    Raises what ``dag.plan`` raises for bad parameters (the checks are the same runner.prepare).
    """
    from stackbook.pipelines import dag as dag_mod

    try:
        env_values = spec.env_values(profile)
        base = dag_mod.products_dir(spec, env)
        result = dag_mod.Plan(spec=spec, env=env, profile=profile, order=spec.order())
        timestamps: dict[str, float] = {}
        for name in result.order:
            outline = spec.task(name)
            try:
                source = spec.resolve_source(outline.source)
            except StackbookError:
                return None  # ploomber's path reports it with the task's name
            params = _expand(outline.params, env_values)
            if not isinstance(params, dict):
                return None
            options = runner.RunOptions(env=env, extra_params=dict(params), cli_params=list(cli_params or []),
                                        pipeline_run_id=pipeline_run_id, progress="off")
            try:
                prepared = runner.prepare(str(source), options)
            except StackbookError as exc:
                kind = type(exc) if isinstance(exc, UsageError) else UsageError
                raise kind(f"pipeline {spec.name!r}, task {name!r}: {exc} (nothing was executed)",
                           runbook=source.stem, env=env) from None
            products = dag_mod._product_paths(spec, name, _expand(outline.product, env_values), base)
            metas = [_metadata(p) for p in products.values()]
            if any(m is None for m in metas):
                return None
            current_source = dag_mod.runbook_source_text(source)
            current_params = json.loads(json.dumps(prepared.params, default=str))
            for m in metas:
                if m.get("stored_source_code") != current_source or m.get("params") != current_params:
                    return None
            own = min(float(m["timestamp"]) for m in metas)
            if dag_mod.expired(own, prepared.runbook.metadata.get("freshness_hours")):
                return None
            if any(timestamps[u] > own for u in outline.upstream):
                return None
            timestamps[name] = own
            result.tasks[name] = dag_mod.PlannedTask(
                name=name, runbook=prepared.runbook.name, path=source, upstream=list(outline.upstream),
                prepared=prepared, products=products, action="skip",
                why="up to date: runbook source, parameters and upstream products unchanged")
        return result
    except _NeedPloomber:
        return None
