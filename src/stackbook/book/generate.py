"""Write the book's source tree: hand-written chapters, generated pages, config and toc.

The tree lives in ``.stackbook/book/src`` (git-ignored; the project root is not
the Sphinx source directory, so Sphinx never scans tests, .venv or the run
store). Every file is written only when its content changed, so Sphinx's
mtime-based incremental build redoes only the pages that changed; files no
longer generated are removed. Layout::

    _config.yml  _toc.yml        from the project root (build settings enforced)
    book/...                     copies of the hand-written chapters
    runbooks/<area>/<name>.ipynb one chapter per runbook
    reports/runbooks.md history.md audit.md dr_drill.md drift.md evidence.md   (+ reports/_charts/*.svg)
    _extra/data_docs/...         GX's Data Docs of the latest validate_raw run (book.datadocs)
    _runs/<env>/<runbook>/<run_id>.ipynb                   executed notebooks, offered as downloads
    _static/stackbook.css
"""

from __future__ import annotations

import functools
import json
import logging
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackbook.book import BookError, charts, datadocs, drift, evidence, pages, toc
from stackbook.core import catalog, notebooks, project
from stackbook.core.errors import DatabaseUnavailable, UsageError
from stackbook.core.files import atomic_write_bytes, load_yaml
from stackbook.run import runstore, scrub

log = logging.getLogger("stackbook.book")

AUDIT_RUNBOOK = "compliance_audit"
DR_RUNBOOK = "dr_drill"
REPORT_PAGES = {"overview": "reports/runbooks", "history": "reports/history", "audit": "reports/audit",
                "dr": "reports/dr_drill", "drift": drift.PAGE, "chain": "reports/evidence"}
HANDWRITTEN_DIR = "book"
RUNS_DIR = "_runs"

# Settings every build gets, whatever _config.yml says: nothing executes, only toc pages are read.
ENFORCED_CONFIG: dict[str, Any] = {
    "execute": {"execute_notebooks": "off"},
    "only_build_toc_files": True,
}
CSS = """\
/* stackbook: freshness badges, run states, readable tables */
.sb-badge { display: inline-block; padding: .1em .6em; border-radius: 1em; font-size: .85em; font-weight: 600;
  line-height: 1.6; white-space: nowrap; border: 1px solid transparent; }
.sb-fresh { background: #e6f4ea; color: #1e6b34; border-color: #9fd3ad; }
.sb-failing { background: #fdecea; color: #a1231b; border-color: #f1a9a3; }
.sb-stale { background: #fff6e0; color: #8a5a00; border-color: #f0cf7c; }
.sb-never { background: #eef1f5; color: #4a5565; border-color: #c9d1dc; }
.sb-status-line { font-size: 1.05em; display: flex; gap: .6em; align-items: center; flex-wrap: wrap; }
.sb-summary .sb-badge { margin-left: .8em; }
.sb-summary .sb-badge:first-child { margin-left: 0; }
.sb-run { font-weight: 600; white-space: nowrap; }
.sb-run-ok { color: #1e6b34; } .sb-run-bad { color: #a1231b; } .sb-run-warn { color: #8a5a00; }
.sb-run-info { color: #1a5fb4; }
.bd-article table { font-size: .9em; }
.bd-article table td { vertical-align: top; }
table.sb-history td:nth-child(-n+6) { white-space: nowrap; }
table.sb-history td:last-child { word-break: break-word; min-width: 16em; }
table.sb-history { font-size: .82em; }
html[data-theme="dark"] .sb-fresh { background: #15351f; color: #9fe0b0; }
html[data-theme="dark"] .sb-failing { background: #3d1512; color: #f5b3ad; }
html[data-theme="dark"] .sb-stale { background: #3a2c06; color: #f3d58a; }
html[data-theme="dark"] .sb-never { background: #262c35; color: #c9d1dc; }
"""
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" '
           'fill="#1e6b34"/><path d="M9 8h14v3H9zm0 6.5h14v3H9zm0 6.5h9v3H9z" fill="#fff"/></svg>\n')


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _favicon_png(size: int = 16) -> bytes:
    """A plain green square as PNG bytes (browsers accept PNG data as favicon.ico)."""
    rows = b"".join(b"\x00" + bytes((0x1E, 0x6B, 0x34)) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


@dataclass
class Generated:
    src: Path
    env: str
    runbooks: list[str]
    written: list[str] = field(default_factory=list)  # source-relative paths whose content changed
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    toc_missing: list[str] = field(default_factory=list)  # runbooks absent from the root _toc.yml
    toc_stale: list[str] = field(default_factory=list)  # root _toc.yml entries with no runbook


class _Writer:
    """Writes files under ``src`` only when their bytes differ; remembers every path it was given."""

    def __init__(self, src: Path, scrubber: scrub.Scrubber, result: Generated):
        self.src, self.scrub, self.result, self.seen = src, scrubber, result, set()

    def text(self, rel: str, text: str) -> None:
        self.bytes(rel, self.scrub.text(text).encode("utf-8"))

    def bytes(self, rel: str, data: bytes) -> None:
        self.seen.add(rel)
        path = self.src / rel
        if path.exists() and path.read_bytes() == data:
            self.result.unchanged += 1
            return
        atomic_write_bytes(path, data, mode=0o644)  # the book is published: world-readable, as Sphinx writes it
        self.result.written.append(rel)

    def keep(self, rel: str) -> None:
        """A file that stays as it is."""
        self.seen.add(rel)
        self.result.unchanged += 1

    def chart(self, rel: str, data: Any, render) -> None:
        """An SVG chart, rendered (matplotlib) only when its input differs from the one it was drawn from."""
        import hashlib

        key = hashlib.sha256(json.dumps(data, default=str, sort_keys=True).encode()).hexdigest()[:16]
        stamp = f"<!-- stackbook-chart {key} -->\n"  # after the root element: the XML declaration stays first
        path = self.src / rel
        if path.exists() and path.read_text(encoding="utf-8", errors="replace").endswith(stamp):
            self.keep(rel)
            return
        self.text(rel, render().rstrip("\n") + "\n" + stamp)

    def notebook(self, rel: str, nb: dict) -> None:
        self.text(rel, json.dumps(self.scrub.obj(nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n")

    def prune(self) -> None:
        """Remove files of earlier generations that this one did not write."""
        for path in sorted(self.src.rglob("*"), reverse=True):
            rel = path.relative_to(self.src).as_posix()
            if path.is_file() and rel not in self.seen:
                path.unlink()
                self.result.removed.append(rel)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _scrubber(runbooks: list[notebooks.Runbook], env: str) -> scrub.Scrubber:
    """Every secret value this process can see, so that a page can never show one."""
    values: dict[str, str] = {}
    for name in sorted({s for rb in runbooks
                        for s in (rb.metadata.get("secrets") or []) + (rb.metadata.get("optional_secrets") or [])}):
        try:
            values.update(scrub.collect([name], env))
        except scrub.SecretError:
            pass  # not set here: nothing of it to scrub
    from stackbook.run import db

    try:
        password = db.password(db.url())
    except DatabaseUnavailable:  # no database configured: nothing to scrub from it
        password = None
    if password:
        values.setdefault("DATABASE_PASSWORD", password)
    return scrub.Scrubber(values)


def page_entry(rb: notebooks.Runbook, root: Path) -> str:
    """The docname of a runbook's chapter: ``runbooks/<area>/<name>`` (``runbooks/other/<name>`` outside runbooks/)."""
    entry = None
    try:
        entry = toc.runbook_entry(rb.path, root)
    except ValueError:
        pass
    if entry and entry.startswith(toc.RUNBOOK_PREFIX):
        return entry
    return f"{toc.RUNBOOK_PREFIX}other/{rb.name}"


def _config(root: Path) -> str:
    import yaml

    cfg_path = root / toc.CONFIG_NAME
    if not cfg_path.exists():
        raise BookError(f"{cfg_path}: no book configuration; restore _config.yml from git")
    cfg = load_yaml(cfg_path, what="book configuration", error=BookError, default={})
    if not isinstance(cfg, dict):
        raise BookError(f"{cfg_path} must hold a mapping of Jupyter Book settings")
    for key, value in ENFORCED_CONFIG.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return yaml.safe_dump(cfg, sort_keys=False)


def _read_executed(run: dict | None) -> dict | None:
    """A run's executed notebook from the run store (an s3:// one downloaded: the book copies it into
    ``_runs/``, so the built book links its own copy); None when it is gone or unreadable."""
    if not run or not run.get("output"):
        return None
    try:
        return runstore.read_notebook(run["output"], runstore.env_endpoint(run.get("env")))
    except FileNotFoundError:
        # removed from the run store since (retention, a test's clean-up): the run is listed without a link
        log.info("executed notebook of run %s is no longer in the run store (%s)", run["id"], run["output"])
        return None
    except (OSError, ValueError, UsageError) as exc:  # UsageError: a bucket that refuses (runstore.read_bytes)
        log.warning("executed notebook of run %s not readable (%s): %s", run["id"], run["output"], exc)
        return None


def generate(env: str, src: Path, *, runbook_paths: list[Path] | None = None, conn=None,
             now: datetime | None = None, ledger: evidence.Ledger | None = None) -> Generated:
    """Write the source tree of the book for ``env`` into ``src``; returns what changed.

    ``ledger``: evidence read by the caller (benchmarks: the same evidence for every round); by default it is
    read from ``conn`` or a connection of its own.
    """
    root = project.root()
    now = now or datetime.now(UTC)
    paths = [Path(p).resolve() for p in (runbook_paths if runbook_paths is not None else catalog.paths())]
    runbooks = _load_runbooks(paths)
    names = [rb.name for rb in runbooks]
    toc_data = toc.load(root)
    result = Generated(src=src, env=env, runbooks=names, toc_missing=toc.missing(toc_data, paths, root),
                       toc_stale=toc.stale(toc_data, catalog.paths(), root) if runbook_paths is None else [])
    src.mkdir(parents=True, exist_ok=True)
    writer = _Writer(src, _scrubber(runbooks, env), result)
    docs = {rb.name: page_entry(rb, root) for rb in runbooks}
    _write_frame(writer, root, toc_data, docs)
    if ledger is None:
        ledger = _read_ledger(conn, env, names, now)
    links = _RunLinks(writer, ledger)
    items = _write_runbook_pages(writer, runbooks, docs, ledger, links, env, now)
    writer.text(REPORT_PAGES["overview"] + ".md", pages.overview(items, env, links))
    _write_history(writer, env, ledger, docs, links, set(names))
    _write_audit(writer, env, ledger, docs, links)
    drills = [r for r in ledger.chart_runs if r["runbook"] == DR_RUNBOOK]
    writer.text(REPORT_PAGES["dr"] + ".md",
                pages.dr_drill(env, ledger.latest(DR_RUNBOOK), drills, links, docs.get(DR_RUNBOOK)))
    drift.write(writer, env, ledger, docs, links)
    writer.text(REPORT_PAGES["chain"] + ".md", pages.evidence_chain(env, ledger.chain))
    writer.prune()
    return result


def _load_runbooks(paths: list[Path]) -> list[notebooks.Runbook]:
    """The runbooks of the book; their names must be unique (one chapter each)."""
    runbooks = [notebooks.load(p, project.runbooks_dir()) for p in paths]
    names = [rb.name for rb in runbooks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BookError(f"runbook names must be unique; {', '.join(dupes)} appear more than once under runbooks/")
    return runbooks


def _write_frame(writer: _Writer, root: Path, toc_data, docs: dict[str, str]) -> None:
    """Config, toc, static files and the copies of the hand-written chapters."""
    writer.text(toc.CONFIG_NAME, _config(root))
    writer.text(toc.TOC_NAME, toc.dump(toc.effective(toc_data, list(docs.values()))))
    writer.text("_static/stackbook.css", CSS)
    writer.text("_static/favicon.svg", FAVICON)
    writer.bytes("_extra/favicon.ico", _favicon_png())
    hand = root / HANDWRITTEN_DIR
    for path in sorted(hand.rglob("*")) if hand.is_dir() else []:
        if path.is_file() and ".ipynb_checkpoints" not in path.parts:
            writer.bytes(path.relative_to(root).as_posix(), path.read_bytes())


def _read_ledger(conn, env: str, names: list[str], now: datetime) -> evidence.Ledger:
    if conn is not None:
        return evidence.read(conn, env, names, now)
    from stackbook.run import db

    with db.connect() as own:
        return evidence.read(own, env, names, now)


class _RunLinks:
    """The ``link(env, runbook, run_id)`` the pages call: copies a run's executed notebook into the tree
    (once) and returns its source-root path, or None when it cannot be read."""

    def __init__(self, writer: _Writer, ledger: evidence.Ledger):
        self.writer, self.ledger = writer, ledger
        self.copied: dict[tuple[str, str, str], str | None] = {}

    def __call__(self, run_env: str, runbook: str, run_id: str) -> str | None:
        key = (run_env, runbook, run_id)
        if key not in self.copied:
            self.copied[key] = self._copy(run_env, runbook, run_id)
        return self.copied[key]

    def _copy(self, run_env: str, runbook: str, run_id: str) -> str | None:
        ledger = self.ledger
        run = next((r for r in [*ledger.history, *ledger.chart_runs, *ledger.runs_of(runbook)]
                    if r["id"] == run_id), None)
        rel = f"{RUNS_DIR}/{run_env}/{runbook}/{run_id}.ipynb"
        if run and run["status"] != "running" and (self.writer.src / rel).exists():
            self.writer.keep(rel)  # a finished run's notebook never changes: copied by an earlier generation
            return rel
        nb = _read_executed(run)
        if nb is None:
            return None
        self.writer.notebook(rel, nb)
        return rel


def _write_runbook_pages(writer: _Writer, runbooks: list[notebooks.Runbook], docs: dict[str, str],
                         ledger: evidence.Ledger, links: _RunLinks, env: str,
                         now: datetime) -> list[tuple[notebooks.Runbook, str, evidence.Freshness]]:
    """One chapter per runbook; (runbook, docname, freshness) of each, for the overview."""
    items = []
    for rb in runbooks:
        fr = evidence.freshness(rb.metadata, ledger.runs_of(rb.name), env, now)
        source_nb = notebooks.read_json(rb.path)
        executed = _read_executed(fr.shown_run)
        chapter = pages.runbook_notebook(rb, source_nb, executed, fr, links)
        if rb.name == datadocs.RUNBOOK:  # GX's Data Docs of its latest run, linked from its chapter
            datadocs.add_to_chapter(chapter, docs[rb.name], fr.shown_run, datadocs.publish(writer, fr.shown_run))
        writer.notebook(docs[rb.name] + ".ipynb", chapter)
        items.append((rb, docs[rb.name], fr))
    return items


def _write_history(writer: _Writer, env: str, ledger: evidence.Ledger, docs: dict[str, str], links: _RunLinks,
                   in_book: set[str]) -> None:
    """The history page and its two charts (redrawn only when their runs changed)."""
    chart = evidence.ChartData([p for p in ledger.chart.points if p.runbook in in_book], ledger.chart.per_day)
    chart_data = [chart.per_day, [[p.runbook, p.at, p.runs, p.succeeded, p.median_s, p.max_s] for p in chart.points]]
    writer.chart("reports/_charts/duration.svg", [env, chart_data],
                 functools.partial(charts.duration_over_time, chart, env))
    writer.chart("reports/_charts/success.svg", [env, chart_data],
                 functools.partial(charts.success_rate, chart, env))
    writer.text(REPORT_PAGES["history"] + ".md",
                pages.history(ledger, docs, links, {"duration": "_charts/duration.svg",
                                                    "success": "_charts/success.svg"}))


def _write_audit(writer: _Writer, env: str, ledger: evidence.Ledger, docs: dict[str, str], links: _RunLinks) -> None:
    """The audit page, from the latest audit run and the report it wrote (when still readable)."""
    audit_run = ledger.latest(AUDIT_RUNBOOK)
    report = None
    report_path = ((audit_run or {}).get("results") or {}).get("report_path")
    if report_path:
        try:
            report = json.loads(Path(report_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("audit report %s not readable: %s", report_path, exc)
    writer.text(REPORT_PAGES["audit"] + ".md", pages.audit(env, audit_run, report, links, docs.get(AUDIT_RUNBOOK)))


def default_src() -> Path:
    return project.state_dir() / "book" / "src"
