"""GX's Data Docs of the latest ``validate_raw`` run, published with the book and linked from its chapter.

The quality runbook records where its Data Docs folder is (``data_docs``) and each suite's
validation page in it (``data_docs_pages``); the folder was already made readable offline by
``stackbook.quality.datadocs``. Here it is copied into the book's ``_extra/data_docs/`` (Sphinx
copies ``_extra`` to the site root as it is, so GX's pages keep their own layout and relative
links), HTML scrubbed of secrets like every page, and a "Data Docs" section with one link per
suite goes into the runbook's chapter. A run whose folder is gone (another machine, a clean-up)
gets a note instead of links.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

RUNBOOK = "validate_raw"
PUBLISHED = "_extra/data_docs"  # in the book's source tree; on the site: /data_docs/
SITE_DIR = "data_docs"


def publish(writer: Any, run: dict | None) -> dict[str, str]:
    """Copy RUN's Data Docs into the tree with WRITER; suite -> page path from the site root ({} when none)."""
    results = (run or {}).get("results") or {}
    folder = Path(results["data_docs"]) if results.get("data_docs") else None
    if folder is None or not folder.is_dir():
        return {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = f"{PUBLISHED}/{path.relative_to(folder).as_posix()}"
        if path.suffix == ".html":
            writer.text(rel, path.read_text(encoding="utf-8"))
        else:
            writer.bytes(rel, path.read_bytes())
    pages = results.get("data_docs_pages") or {}
    return {suite: f"{SITE_DIR}/{page}" for suite, page in sorted(pages.items()) if (folder / page).is_file()}


def section(docname: str, run: dict | None, pages: dict[str, str]) -> str:
    """The chapter's "Data Docs" section: a link to each suite's page, with its result."""
    lines = ["## Data Docs", ""]
    if run is None:
        return "\n".join(lines + ["No validation has run in this environment yet."])
    if not pages:
        return "\n".join(lines + [f"The Data Docs of run `{run['id']}` are not on this machine any more; run "
                                  f"`stackbook run {RUNBOOK}` to build them again."])
    up = "../" * docname.count("/")
    success = ((run.get("results") or {}).get("suite_success")) or {}
    items = []
    for suite, page in pages.items():
        mark = "&#10004; passed" if success.get(suite) else "&#10006; failed"
        items.append(f'<li><a href="{up}{html.escape(page)}">{html.escape(suite)}</a> ({mark})</li>')
    index = f'{up}{SITE_DIR}/index.html'
    lines += [f"Great Expectations' own report of run `{run['id']}`, one page per suite "
              f'(<a href="{index}">all suites</a>):', "", '<ul class="sb-data-docs">', *items, "</ul>"]
    return "\n".join(lines)


def add_to_chapter(chapter: dict, docname: str, run: dict | None, pages: dict[str, str]) -> dict:
    """CHAPTER (the runbook's page as a notebook) with the Data Docs section after its status and about cells."""
    cell = {"cell_type": "markdown", "metadata": {}, "source": section(docname, run, pages) + "\n",
            "id": "sbdatadocs"}
    chapter["cells"].insert(min(3, len(chapter["cells"])), cell)
    return chapter
