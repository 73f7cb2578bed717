"""Pipelines: runbooks chained by a ploomber ``pipeline.yaml``, run incrementally.

A pipeline lives in ``pipelines/<name>/pipeline.yaml`` (ploomber's spec format:
``tasks:`` with ``source``, ``product``, ``upstream``, ``params``) beside an
``env.yaml`` of placeholder values and optional ``env.<profile>.yaml`` overlays
(``env.test.yaml`` shrinks the data). A top-level ``stackbook:`` mapping holds
what ploomber has no key for: ``description``, ``owner``, ``schedule`` (cron),
``profile`` (the env overlay schedulers use) and ``timeout``.

This package is the ONLY place that imports ploomber (archived upstream, and
its import costs seconds): :mod:`.spec` reads specs with YAML alone (for
``list``, ``show`` and the schedule generators); :mod:`.dag` hands the spec to
ploomber's ``DAGSpec`` (placeholder expansion, key validation), builds a
ploomber ``DAG`` of :class:`~stackbook.pipelines.runbook_task.RunbookTask` and lets
ploomber's product metadata decide which tasks are up to date; :mod:`.execute`
runs the outdated tasks with a small topological thread executor that calls
:func:`stackbook.run.engine.execute` for every attempt. Ploomber's own executors
are not used: its serial executor has no parallelism, and its parallel one
forks worker processes, which would bypass the runner's ledger connection,
locks and secret scrubbing. Swapping ploomber out means rewriting :mod:`.dag`
only.

A rerun where nothing changed does not import ploomber at all: :mod:`.fastpath`
reads the metadata ploomber keeps beside each product and, when every task is
provably up to date by ploomber's own rules, skips them all; otherwise ploomber
decides.
"""

from __future__ import annotations

from stackbook.pipelines.spec import PipelineSpec, all_pipelines, find, load_spec  # noqa: F401

__all__ = ["PipelineSpec", "all_pipelines", "find", "load_spec", "run"]


def run(name: str, **kwargs):
    """Run pipeline NAME (see :func:`stackbook.pipelines.execute.run_pipeline`)."""
    from stackbook.pipelines.execute import run_pipeline

    return run_pipeline(name, **kwargs)
