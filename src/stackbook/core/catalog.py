"""The runbook catalogue: every notebook under ``runbooks/``, by name."""

from __future__ import annotations

from pathlib import Path

from stackbook.core import notebooks, project
from stackbook.core.errors import NotebookError, UsageError


def paths() -> list[Path]:
    root = project.runbooks_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def all_runbooks() -> list[notebooks.Runbook]:
    root = project.runbooks_dir()
    return [notebooks.load(p, root) for p in paths()]


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


def load(name: str) -> notebooks.Runbook:
    return notebooks.load(find(name), project.runbooks_dir())
