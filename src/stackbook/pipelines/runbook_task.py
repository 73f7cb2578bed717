"""A runbook as a ploomber task: the two classes that derive from ploomber's.

They live in a module of their own because deriving from ploomber's classes
imports ploomber, which costs seconds and must come after its telemetry is
switched off (:func:`stackbook.pipelines.dag.import_ploomber`). Only
:func:`stackbook.pipelines.dag.plan` imports this module, when it builds a DAG;
``stackbook pipeline list`` and the fast path never load ploomber.
"""

from __future__ import annotations

from pathlib import Path

from stackbook.pipelines.dag import import_ploomber, runbook_source_text

import_ploomber()  # before any ploomber module loads

from ploomber.sources.abc import Source  # noqa: E402
from ploomber.tasks.abc import Task  # noqa: E402


class RunbookSource(Source):
    """A runbook's code cells as a ploomber source (compared verbatim: extension None)."""

    def __init__(self, primitive, hot_reload=False):
        self._path = Path(primitive)
        self._text = runbook_source_text(self._path)

    @property
    def primitive(self):
        return str(self._path)

    @property
    def variables(self):
        return set()

    def render(self, params):
        return self

    @property
    def loc(self):
        return str(self._path)

    def __str__(self):
        return self._text

    def __repr__(self):
        return f"RunbookSource({str(self._path)!r})"

    @property
    def doc(self):
        return None

    @property
    def extension(self):
        return None

    def _post_render_validation(self, rendered_value, params):
        pass

    def _post_init_validation(self, value):
        pass

    @property
    def name(self):
        return self._path.stem


class RunbookTask(Task):
    """A runbook in a ploomber DAG. ploomber plans it; stackbook.run.engine executes it."""

    def __init__(self, source, product, dag, name=None, params=None):
        self._source = type(self)._init_source(source, {})
        super().__init__(product, dag, name, params)

    @staticmethod
    def _init_source(source, kwargs):
        return RunbookSource(source)

    def run(self):  # pragma: no cover - never called: see stackbook.pipelines.execute
        raise RuntimeError("RunbookTask runs through stackbook.pipelines.execute, not ploomber's executors")
