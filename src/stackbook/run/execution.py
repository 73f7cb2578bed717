"""The executed notebook of one run, kept as papermill keeps it (``NotebookExecutionManager``).

``NotebookExecution`` owns the notebook a run writes: papermill's parameter
injection (an ``injected-parameters`` cell after the ``parameters`` cell), the
``papermill`` metadata of the notebook and of every cell (``notebook_start``,
``cell_start``, ``cell_exception``, ``cell_complete``, ``notebook_complete``),
papermill's error markers, and the save to the run store: every secret scrubbed
first, at the start, every ``AUTOSAVE_EVERY_S`` while cells complete, and at the
end. Papermill's tools (and people used to them) read the result as their own.

The injected cell is in the kernel's language: Python as ``name = repr(value)``,
any other through papermill's translators (``parameters_source``: R, Julia,
Scala, bash, PowerShell, ...); a language papermill has no translator for is a
usage error before anything runs. Indexes of cells (``cell_index``, the ledger's
``error.cell_index``) are indexes in the notebook as it is stored: the injected
cell counts, and so do the error markers once ``mark_error`` has placed them.

A cell that raised, or was running when the kernel died, the run timed out or
was cancelled, ends ``failed``: ``cell_exception`` marks it before
``cell_complete``, which never overwrites ``failed`` with ``completed``.

Resumed and continued runs: ``carry`` copies a cell that completed in an earlier
run (outputs, execution count, papermill's metadata) into this notebook, marked
``metadata.stackbook.carried_from``; ``from_stored`` takes a waiting run's own
stored notebook back (``stackbook attest``) and ``notebook_continue`` goes on with
it, its completed cells kept. Cells tagged ``setup`` (imports, connections) run
again after a snapshot is restored; a cell tagged ``manual`` is a step a person
does: a headless run stops there (``instruction``), ``waiting``.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from stackbook.core import notebooks
from stackbook.core.errors import NotebookError
from stackbook.run import runstore, scrub

AUTOSAVE_EVERY_S = 10.0
ERROR_MARKER_TAG = "papermill-error-cell-tag"  # papermill's, so its tools recognise our markers
PARAMETERS_TAG = "injected-parameters"
_ERROR_STYLE = 'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
ERROR_MESSAGE_TEMPLATE = (
    f"<span {_ERROR_STYLE}>An Exception was encountered at '<a href=\"#papermill-error-cell\">In [%s]</a>'.</span>"
)
ERROR_ANCHOR_MSG = (
    f'<span id="papermill-error-cell" {_ERROR_STYLE}>Execution using papermill encountered an exception here '
    "and stopped:</span>"
)
MARKER_CELLS = 2  # papermill's error markers before a failing cell: the banner (first) and the anchor
PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
SETUP_TAG = "setup"  # re-run after a snapshot is restored: imports, connections, clients
MANUAL_TAG = "manual"  # a step a person does outside the notebook: a headless run stops there, waiting


def _now() -> datetime:
    return datetime.now(UTC)


def _tagged(cell, tag: str) -> bool:
    return tag in (cell.get("metadata", {}).get("tags") or [])


def is_setup(cell) -> bool:
    """Whether CELL runs again when a run goes on in a new kernel: tagged ``setup``, or the parameters (the
    runbook's defaults and the injected values), which every later cell may use."""
    tags = cell.get("metadata", {}).get("tags") or []
    return cell.get("cell_type") == "code" and bool({SETUP_TAG, notebooks.PARAMETERS_TAG, PARAMETERS_TAG} & set(tags))


def is_manual(cell) -> bool:
    return _tagged(cell, MANUAL_TAG)


def instruction(cell) -> str:
    """What a person is to do at a manual CELL: its text (a markdown cell's source; a code cell's code)."""
    return notebooks.cell_source(cell).strip()


def is_marker(cell) -> bool:
    """Whether CELL is one of papermill's error markers (not a cell of the runbook)."""
    return _tagged(cell, ERROR_MARKER_TAG)


def parameters_source(runbook: notebooks.Runbook, params: dict[str, Any]) -> str:
    """The injected cell's code: PARAMS assigned in the runbook's language; NotebookError (exit 2) for a
    language papermill cannot write parameters in."""
    if runbook.typed:
        return "\n".join(["# Parameters"] + [f"{k} = {v!r}" for k, v in params.items()]) + "\n"
    from papermill.exceptions import PapermillException
    from papermill.translators import translate_parameters

    try:
        return translate_parameters(runbook.kernel, runbook.language, params, "Parameters")
    except PapermillException as exc:
        raise NotebookError(f"{runbook.path}: cannot pass parameters to kernel {runbook.kernel!r} (language "
                            f"{runbook.language!r}): {exc}; use a kernel whose language papermill's translators "
                            "know (python, R, julia, scala, matlab, bash, .net-*)", runbook=runbook.name) from None


class NotebookExecution:
    """One run's notebook and its ``papermill`` metadata; ``save`` writes it, scrubbed, to OUTPUT."""

    def __init__(self, nb, *, output: str, scrubber: scrub.Scrubber, params: dict[str, Any], input_path: str):
        self.nb, self.output, self.scrubber = nb, output, scrubber
        self.params, self.input_path = params, input_path
        self.started: datetime | None = None
        self.cell_index: int | None = None  # the cell running now, or the last one that ran
        self._cell_t0 = 0.0
        self._last_save = 0.0
        self.sha256: str | None = None  # of the bytes the last successful save wrote (the run ledger records it)

    @classmethod
    def from_runbook(cls, runbook: notebooks.Runbook, params: dict[str, Any], *, output: str,
                     scrubber: scrub.Scrubber) -> NotebookExecution:
        """RUNBOOK's notebook with PARAMS injected, papermill's way."""
        import nbformat

        with open(runbook.path, encoding="utf-8") as fh:
            nb = nbformat.from_dict(json.load(fh))
        for cell in nb.cells:
            if isinstance(cell.get("source"), list):
                cell.source = "".join(cell.source)
        nb.cells = [c for c in nb.cells if not _tagged(c, PARAMETERS_TAG) and not _tagged(c, ERROR_MARKER_TAG)]
        # the parameters cell found again: a notebook papermill or stackbook executed had cells removed above
        index = next((i for i, c in enumerate(nb.cells) if _tagged(c, notebooks.PARAMETERS_TAG)), None)
        if index is not None or params:  # a notebook with neither gets no injected cell, as with papermill
            cell = nbformat.v4.new_code_cell(source=parameters_source(runbook, params))
            cell.metadata["tags"] = [PARAMETERS_TAG]
            cell.pop("id", None)
            nb.cells.insert((index if index is not None else -1) + 1, cell)
        return cls(nb, output=output, scrubber=scrubber, params=params, input_path=str(runbook.path))

    @classmethod
    def from_stored(cls, stored: dict[str, Any], *, output: str, scrubber: scrub.Scrubber) -> NotebookExecution:
        """A waiting run's own executed notebook (STORED, as read from OUTPUT), to go on with (``attest``)."""
        import nbformat

        nb = nbformat.from_dict(stored)
        meta = nb.metadata.get("papermill", {})
        return cls(nb, output=output, scrubber=scrubber, params=meta.get("parameters") or {},
                   input_path=meta.get("input_path") or "")

    def code_cells(self) -> list[tuple[int, Any]]:
        """(index, cell) of every code cell, in order (indices as they are before any error marker)."""
        return [(i, c) for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]

    def notebook_start(self) -> None:
        """Papermill's notebook and cell metadata, every cell ``pending``; the first save."""
        self.started = _now()
        self.nb.metadata["papermill"] = {
            "parameters": self.params, "input_path": self.input_path, "output_path": self.output,
            "start_time": self.started.isoformat(), "end_time": None, "duration": None, "exception": None,
            "environment_variables": {}, "version": "stackbook",
        }
        for cell in self.nb.cells:
            cell.metadata["papermill"] = {"status": PENDING, "exception": None, "start_time": None,
                                          "end_time": None, "duration": None}
        self.save()

    def notebook_continue(self) -> None:
        """Going on with a stored notebook (``from_stored``): its cells' metadata kept, its start time too."""
        meta = self.nb.metadata.setdefault("papermill", {})
        start = meta.get("start_time")
        self.started = datetime.fromisoformat(start) if start else _now()
        meta.update(end_time=None, duration=None, exception=None)
        for cell in self.nb.cells:
            cell.metadata.setdefault("papermill", {"status": PENDING, "exception": None, "start_time": None,
                                                   "end_time": None, "duration": None})
        self.save()

    def carry(self, index: int, old, from_run: str) -> None:
        """Cell INDEX as it completed in run FROM_RUN (OLD: that run's stored cell): not executed again here."""
        cell = self.nb.cells[index]
        cell.outputs = old.get("outputs", [])
        cell.execution_count = old.get("execution_count")
        cell.metadata["papermill"] = {**old.get("metadata", {}).get("papermill", {}), "status": COMPLETED}
        earlier = old.get("metadata", {}).get("stackbook", {}).get("carried_from")
        cell.metadata.setdefault("stackbook", {})["carried_from"] = earlier or from_run

    def cell_start(self, cell, index: int) -> None:
        self.cell_index, self._cell_t0 = index, time.monotonic()
        cell.metadata["papermill"].update(status=RUNNING, start_time=_now().isoformat())

    def cell_exception(self, cell, index: int) -> None:
        """The running cell raised, or the kernel died, the run timed out or was cancelled under it."""
        cell.metadata["papermill"].update(status=FAILED, exception=True)
        self.nb.metadata["papermill"]["exception"] = True

    def cell_complete(self, cell, index: int) -> float:
        """End time and duration of the cell (``completed`` unless it failed); an autosave when due."""
        seconds = time.monotonic() - self._cell_t0
        meta = cell.metadata["papermill"]
        meta.update(end_time=_now().isoformat(), duration=round(seconds, 3))
        if meta["status"] != FAILED:
            meta["status"] = COMPLETED
            if time.monotonic() - self._last_save > AUTOSAVE_EVERY_S:
                self.save()
        return seconds

    def mark_error(self, index: int) -> int:
        """Papermill's markers: a banner first, an anchor right before the failing cell INDEX; returns the
        failing cell's index in the notebook as stored (INDEX + 2: the banner and the anchor precede it)."""
        import nbformat

        count = self.nb.cells[index].get("execution_count")
        anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
        anchor.metadata["tags"] = [ERROR_MARKER_TAG]
        banner = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % count)
        banner.metadata["tags"] = [ERROR_MARKER_TAG]
        self.nb.cells.insert(index, anchor)
        self.nb.cells.insert(0, banner)
        return index + MARKER_CELLS

    def notebook_complete(self, run: dict[str, Any]) -> None:
        """The run's record in ``metadata.stackbook.run``, papermill's duration and end time; the final save."""
        self.nb.metadata["papermill"]["duration"] = (_now() - self.started).total_seconds() if self.started else None
        self.nb.metadata.setdefault("stackbook", {})
        self.nb.metadata["stackbook"]["run"] = run
        self.save(final=True)

    def save(self, final: bool = False) -> None:
        """The notebook, every secret scrubbed, to the run store."""
        self.nb.metadata["papermill"]["end_time"] = _now().isoformat() if final else None
        text = json.dumps(self.scrubber.obj(self.nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        runstore.write_text(self.output, text)
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self._last_save = time.monotonic()
