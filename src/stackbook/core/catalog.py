"""The runbook catalogue: every notebook under ``runbooks/``, by name.

``load`` holds a notebook under ``runbooks/`` to the runbook contract (exactly
one parameters cell) and lets any other notebook given by path run as papermill
would. ``all_runbooks`` is strict (what generates schedules or manifests must not skip a
runbook); ``scan`` is for listings: a file that cannot be read becomes a
:class:`Broken` entry carrying its error, and the rest are still listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackbook.core import notebooks, project
from stackbook.core.errors import NotebookError, StackbookError, UsageError


@dataclass
class Broken:
    """A runbook or pipeline file that cannot be read, listed with its error instead of failing the listing."""

    kind: str  # "runbook" or "pipeline"
    name: str
    path: Path
    error: str

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "error": self.error}

    def line(self) -> str:
        """The error on one line (YAML errors span several), naming the file once."""
        text = " ".join(self.error.split())
        where = "" if str(self.path) in text else f" ({self.path})"
        return f"{self.kind} {self.name}{where}: {text}"


def paths() -> list[Path]:
    root = project.runbooks_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def all_runbooks() -> list[notebooks.Runbook]:
    root = project.runbooks_dir()
    return [notebooks.load(p, root) for p in paths()]


def scan() -> tuple[list[notebooks.Runbook], list[Broken]]:
    """Every runbook that loads, and a Broken entry for each one that does not."""
    root = project.runbooks_dir()
    good: list[notebooks.Runbook] = []
    broken: list[Broken] = []
    for path in paths():
        try:
            good.append(notebooks.load(path, root))
        except (StackbookError, OSError) as exc:  # OSError: a file that cannot be opened
            broken.append(Broken(kind="runbook", name=path.stem, path=path, error=str(exc)))
    return good, broken


def find(name: str) -> Path:
    """A runbook's path from its file stem (unique across runbooks/) or a path to any .ipynb."""
    if name.endswith(".ipynb") or "/" in name:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = project.root() / name
        if not path.exists():
            raise NotebookError(f"{name}: no such notebook")
        return path.resolve()
    hits = [p for p in paths() if p.stem == name]
    if not hits:
        import difflib

        stems = sorted(p.stem for p in paths())
        close = difflib.get_close_matches(name, stems, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"no runbook named {name!r} under {project.runbooks_dir()}{hint} "
                         f"(known: {', '.join(stems) or 'none'})")
    if len(hits) > 1:
        raise UsageError(f"runbook name {name!r} is ambiguous: {', '.join(map(str, hits))}")
    return hits[0]


def is_runbook_path(path: Path) -> bool:
    """Whether PATH lies under ``runbooks/`` (a runbook, held to the contract), not a notebook from elsewhere."""
    return path.resolve().is_relative_to(project.runbooks_dir().resolve())


def load(name: str) -> notebooks.Runbook:
    """Runbook NAME, or the notebook at a path: one from outside ``runbooks/`` may lack a parameters cell."""
    path = find(name)
    return notebooks.load(path, project.runbooks_dir(), require_parameters=is_runbook_path(path))
