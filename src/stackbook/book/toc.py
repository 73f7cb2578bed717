"""The book's table of contents: the root ``_toc.yml`` (Jupyter Book 1.x, ``jb-book`` format).

The root file is the source of truth for the book's structure: the
hand-written chapters and one entry per runbook (``runbooks/<area>/<name>``,
no suffix) in the part captioned ``Runbooks``. ``stackbook new`` appends to it;
a contract test fails when a runbook is missing. The toc a build uses
(``effective``) is this file with entries for runbooks that are not built
dropped and runbooks missing from it appended, so that a book always builds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import BookError
from stackbook.core.files import load_yaml

TOC_NAME = "_toc.yml"
CONFIG_NAME = "_config.yml"
RUNBOOKS_CAPTION = "Runbooks"
RUNBOOK_PREFIX = "runbooks/"
HEADER = (
    "# The book's table of contents (Jupyter Book 1.x). `stackbook book` builds it into _build/html.\n"
    "# Every runbook under runbooks/ has an entry `runbooks/<area>/<name>` under the part \"Runbooks\";\n"
    "# `stackbook new AREA/NAME` appends one, `stackbook book --fix-toc` adds any that are missing.\n"
    "# reports/* pages are generated at build time from the run ledger (see book/architecture.md).\n"
)


def path(root: Path | None = None) -> Path:
    return (root or project.root()) / TOC_NAME


def load(root: Path | None = None) -> dict[str, Any]:
    toc_path = path(root)
    if not toc_path.exists():
        raise BookError(f"{toc_path}: no table of contents; restore _toc.yml from git (it lists the book's pages)")
    data = load_yaml(toc_path, what="table of contents", error=BookError)
    if not isinstance(data, dict) or data.get("format") != "jb-book" or "root" not in data:
        raise BookError(f"{toc_path}: expected a Jupyter Book toc with `format: jb-book` and a `root` page")
    return data


def dump(data: dict[str, Any]) -> str:
    import yaml

    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def save(data: dict[str, Any], root: Path | None = None) -> Path:
    toc_path = path(root)
    toc_path.write_text(dump(data), encoding="utf-8")
    return toc_path


def _entries(items: list | None) -> Iterator[dict]:
    for item in items or []:
        if isinstance(item, dict):
            yield item
            yield from _entries(item.get("sections"))


def all_entries(data: dict[str, Any]) -> Iterator[dict]:
    """Every entry of the toc (chapters and sections, in every part)."""
    for part in data.get("parts") or []:
        yield from _entries(part.get("chapters"))
    yield from _entries(data.get("chapters"))


def files(data: dict[str, Any]) -> list[str]:
    return [data["root"], *(e["file"] for e in all_entries(data) if "file" in e)]


def runbook_entry(runbook_path: Path, root: Path | None = None) -> str:
    """``runbooks/ops/platform_check`` for ``<root>/runbooks/ops/platform_check.ipynb``."""
    rel = Path(runbook_path).resolve().relative_to((root or project.root()).resolve())
    return rel.with_suffix("").as_posix()


def runbook_files(data: dict[str, Any]) -> list[str]:
    return [f for f in files(data) if f.startswith(RUNBOOK_PREFIX)]


def _runbooks_part(data: dict[str, Any]) -> dict:
    parts = data.setdefault("parts", [])
    for part in parts:
        if part.get("caption") == RUNBOOKS_CAPTION:
            part.setdefault("chapters", [])
            return part
    part = {"caption": RUNBOOKS_CAPTION, "chapters": []}
    parts.append(part)
    return part


def add(data: dict[str, Any], entry: str) -> bool:
    """Append a runbook entry to the Runbooks part; False when it is listed already."""
    if entry in files(data):
        return False
    _runbooks_part(data)["chapters"].append({"file": entry})
    return True


def missing(data: dict[str, Any], runbook_paths: list[Path], root: Path | None = None) -> list[str]:
    listed = set(files(data))
    return [e for e in (runbook_entry(p, root) for p in runbook_paths) if e not in listed]


def stale(data: dict[str, Any], runbook_paths: list[Path], root: Path | None = None) -> list[str]:
    present = {runbook_entry(p, root) for p in runbook_paths}
    return [f for f in runbook_files(data) if f not in present]


def _prune(items: list | None, keep) -> list:
    out = []
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if "file" in item and not keep(item["file"]):
            continue
        item = dict(item)
        if "sections" in item:
            item["sections"] = _prune(item["sections"], keep)
            if not item["sections"]:
                del item["sections"]
        out.append(item)
    return out


def effective(data: dict[str, Any], entries: list[str]) -> dict[str, Any]:
    """The toc of a build whose runbook pages are ``entries``: others dropped, missing ones appended."""
    wanted = set(entries)
    out = copy.deepcopy(data)
    keep = lambda f: not f.startswith(RUNBOOK_PREFIX) or f in wanted  # noqa: E731
    for part in out.get("parts") or []:
        part["chapters"] = _prune(part.get("chapters"), keep)
    out["parts"] = [p for p in out.get("parts") or [] if p.get("chapters")]
    if "chapters" in out:
        out["chapters"] = _prune(out["chapters"], keep)
    for entry in entries:
        add(out, entry)
    return out
