"""GX's Data Docs of one validation, in a folder of their own, readable with no network.

Why a post-processing step: GX renders its pages to load Bootstrap, jQuery, Font Awesome and
Vega from public CDNs and its logo from a public bucket. The book is read offline (and a page
that fetches from outside hosts tells them who reads it), so every page is rewritten after GX
builds it: external scripts, stylesheets and images are removed, inline scripts and event
handlers (which need jQuery) too, and a small stylesheet of our own stands in for Bootstrap's
layout and the icon font. What remains is GX's own HTML and its own static files (styles,
fonts, images), all local.

Where the folder goes: beside the executed notebook (``<run>.data_docs/``) when the run store
is local, else ``.stackbook/quality/data_docs/<run id or "latest">/``. ``pages`` maps each suite
to its validation page, relative to the folder; the run records both and the book publishes
them (``stackbook.book.datadocs``).
"""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil
from pathlib import Path

from stackbook.core import project

OFFLINE_CSS = "static/styles/stackbook_offline.css"
LOGO = "static/images/logo-long.png"

_EXTERNAL_SCRIPT = re.compile(r'<script\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>', re.I)
_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>.*?</script>", re.I | re.S)
_EXTERNAL_LINK = re.compile(r'<link\b[^>]*\bhref="(?:https?:)?//[^"]*"[^>]*>', re.I)
_EXTERNAL_IMG = re.compile(r'<img\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>', re.I | re.S)
_HANDLER = re.compile(r'\son[a-z]+="[^"]*"', re.I)
_EXTERNAL_URL = re.compile(r"""url\((['"]?)(?:https?:)?//[^)'"]*\1\)""", re.I)  # in inline styles
_STATIC = re.compile(r"""(href="|src="|url\(['"]?)(?:\.\./)*static/""")  # GX miscounts the depth of some pages
_FOOTER = re.compile(r"<footer\b.*?</footer>", re.I | re.S)  # GX's newsletter call to action

# Bootstrap 4's layout classes that GX's pages use, the icons, and nothing else.
STYLESHEET = """\
/* stackbook: stands in for the CDN stylesheets GX's Data Docs would load (see stackbook.quality.datadocs) */
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px; color: #212529;
  margin: 0; line-height: 1.45; background: #fff; }
a { color: #0b63c5; text-decoration: none; } a:hover { text-decoration: underline; }
.container-fluid { padding: 0 1rem; } .row { display: flex; flex-wrap: wrap; margin: 0; }
.col-12, .col-xs-12, .col-sm-12 { flex: 0 0 100%; max-width: 100%; box-sizing: border-box; }
.col-6 { flex: 0 0 50%; max-width: 50%; }
@media (min-width: 768px) { .col-md-2 { flex: 0 0 18%; max-width: 18%; } .col-md-10 { flex: 0 0 82%; max-width: 82%; }
  .d-md-block { display: block !important; } .d-md-inline-flex { display: inline-flex !important; } }
.d-none { display: none; } .d-flex { display: flex; } .align-items-center { align-items: center; }
.justify-content-center { justify-content: center; } .float-left { float: left; } .mr-auto { margin-right: auto; }
.sticky, .sticky-top { position: sticky; top: 0; z-index: 1; } .h-100 { height: 100%; }
.navbar { display: flex; align-items: center; padding: .5rem 1rem; border-bottom: 1px solid #dee2e6; }
.navbar-brand img { height: 40px !important; }
.breadcrumb { display: flex; list-style: none; padding: .4rem .8rem; margin: 0 0 0 .5rem; background: #f1f3f5;
  border-radius: .25rem; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding: 0 .5rem; color: #6c757d; }
.nav { display: flex; flex-wrap: wrap; list-style: none; padding: 0; margin: 0 0 .5rem; gap: .25rem; }
.nav-link { display: block; padding: .3rem .6rem; border-radius: .25rem; } .nav-link.active { background: #e7f1ff; }
/* without Bootstrap's scripts: every tab and collapsed section shown, the controls that need scripts hidden */
.tab-content > .tab-pane { display: block; margin-bottom: 1.5rem; } .nav-tabs { display: none; }
.collapse { display: block; } a[data-toggle="collapse"] { display: none; }
.card:has(.btn-group-toggle) { display: none; }
.fade { opacity: 1; }
.card { border: 1px solid #dee2e6; border-radius: .3rem; margin-bottom: 1rem; background: #fff; }
.card-header { padding: .5rem .9rem; background: #f8f9fa; border-bottom: 1px solid #dee2e6; font-weight: 600; }
.card-body { padding: .7rem .9rem; } .card-text { margin: 0 0 .4rem; }
.table { width: 100%; border-collapse: collapse; margin-bottom: .8rem; }
.table th, .table td { padding: .35rem .5rem; border-top: 1px solid #dee2e6; vertical-align: top; text-align: left; }
.table-bordered th, .table-bordered td { border: 1px solid #dee2e6; } .table-responsive { overflow-x: auto; }
.badge { display: inline-block; padding: .15em .45em; font-size: 80%; font-weight: 600; border-radius: .25rem; }
.badge-secondary { background: #6c757d; color: #fff; } .badge-danger { background: #c62828; color: #fff; }
.alert { padding: .6rem .9rem; border-radius: .3rem; margin-bottom: .8rem; }
.alert-secondary { background: #e2e3e5; color: #383d41; }
.btn { display: inline-block; padding: .25rem .6rem; border: 1px solid #adb5bd; border-radius: .25rem;
  background: #f8f9fa; color: #212529; font-size: .9em; cursor: default; }
.btn-group, .btn-group-toggle { display: inline-flex; gap: .25rem; }
.lead { font-size: 1.15rem; } .h6 { font-size: 1rem; font-weight: 600; }
.text-success { color: #2e7d32; } .text-danger { color: #c62828; } .text-warning { color: #b26a00; }
.bg-light { background: #f8f9fa; } .rounded { border-radius: .3rem; }
.border-bottom { border-bottom: 1px solid #dee2e6; }
.fas { font-style: normal; font-weight: 700; } .fa-check-circle::before { content: "\\2714"; }
.fa-times::before { content: "\\2716"; } .fa-exclamation-triangle::before { content: "\\26A0"; }
.ml-1 { margin-left: .25rem; } .ml-2 { margin-left: .5rem; } .mr-2 { margin-right: .5rem; } .m-2 { margin: .5rem; }
.mt-1 { margin-top: .25rem; } .mt-3 { margin-top: 1rem; } .mb-1 { margin-bottom: .25rem; }
.mb-2 { margin-bottom: .5rem; }
.mb-3 { margin-bottom: 1rem; } .mb-4 { margin-bottom: 1.5rem; } .p-1 { padding: .25rem; } .p-2 { padding: .5rem; }
.p-3 { padding: 1rem; } .pt-4 { padding-top: 1.5rem; } .pb-4 { padding-bottom: 1.5rem; }
"""


def destination(run_id: str | None = None) -> Path:
    """The Data Docs folder of this run (see the module docstring)."""
    output = os.environ.get("STACKBOOK_RUN_OUTPUT", "")
    local = output.removeprefix("file://")
    if local and "://" not in local:
        return Path((local[: -len(".ipynb")] if local.endswith(".ipynb") else local) + ".data_docs")
    return project.state_dir() / "quality" / "data_docs" / (run_id or "latest")


def prepare(folder: Path) -> Path:
    """An empty FOLDER (what an earlier build left is removed: the folder shows one validation)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def offline_html(html: str, depth: int) -> str:
    """HTML of a Data Docs page DEPTH folders below the site root, without anything fetched from outside."""
    up = "../" * depth
    html = _EXTERNAL_SCRIPT.sub("", html)
    html = _INLINE_SCRIPT.sub("", html)
    html = _EXTERNAL_LINK.sub("", html)
    html = _EXTERNAL_IMG.sub(f'<img src="{up}{LOGO}" alt="Great Expectations" />', html)
    html = _HANDLER.sub("", html)
    html = _FOOTER.sub("", html)
    html = _EXTERNAL_URL.sub("none", html)
    html = _STATIC.sub(rf"\g<1>{up}static/", html)
    return html.replace("</head>", f'<link rel="stylesheet" href="{up}{OFFLINE_CSS}" />\n</head>', 1)


def make_offline(folder: Path) -> int:
    """Rewrite every page under FOLDER (``offline_html``), add the stylesheet and drop the static files no page
    uses (GX copies its Jinja style templates and the how-to animations along); returns the pages rewritten."""
    pages = sorted(folder.rglob("*.html"))
    texts = []
    for page in pages:
        depth = len(page.relative_to(folder).parts) - 1
        texts.append(offline_html(page.read_text(encoding="utf-8"), depth))
        page.write_text(texts[-1], encoding="utf-8")
    used = "\n".join(texts)
    for static in sorted((folder / "static").rglob("*")) if (folder / "static").is_dir() else []:
        if static.is_file() and "/fonts/" not in static.as_posix() and static.name not in used:
            static.unlink()
    css = folder / OFFLINE_CSS
    css.parent.mkdir(parents=True, exist_ok=True)
    css.write_text(STYLESHEET, encoding="utf-8")
    return len(pages)


def suite_pages(folder: Path, suites: list[str]) -> dict[str, str]:
    """Each suite's validation page (``validations/<suite>/...html``), relative to FOLDER."""
    pages = {}
    for suite in suites:
        found = sorted((folder / "validations" / suite).rglob("*.html"))
        if found:
            pages[suite] = found[-1].relative_to(folder).as_posix()
    return pages


def write_index(folder: Path, pages: dict[str, str], success: dict[str, bool], raw_schema: str) -> None:
    """Replace GX's index page (a table its scripts fill in) by a static one: each suite, its status, its pages."""
    rows = []
    for suite in sorted(pages):
        ok = success.get(suite, False)
        status = ('<span class="text-success">&#10004; passed</span>' if ok
                  else '<span class="text-danger">&#10006; failed</span>')
        name = html_lib.escape(suite)
        rows.append(f'<tr><td>{name}</td><td>{status}</td><td><a href="{html_lib.escape(pages[suite])}">validation '
                    f'result</a></td><td><a href="expectations/{name}.html">expectation suite</a></td></tr>')
    body = "\n".join(rows) or '<tr><td colspan="4">no suite was validated</td></tr>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>Data Docs: {html_lib.escape(raw_schema)}</title>
<link rel="stylesheet" href="{OFFLINE_CSS}"/></head>
<body><nav class="navbar"><img src="{LOGO}" alt="Great Expectations" style="height: 40px"/></nav>
<div class="container-fluid pt-4">
<h1 class="h6">Validation of {html_lib.escape(raw_schema)}.* by stackbook's validate_raw</h1>
<table class="table table-bordered"><thead><tr><th>suite</th><th>status</th><th>result</th><th>expectations</th></tr>
</thead><tbody>
{body}
</tbody></table></div></body></html>
"""
    (folder / "index.html").write_text(page, encoding="utf-8")
