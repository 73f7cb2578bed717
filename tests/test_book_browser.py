"""The built book in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The book is built once for this module with `stackbook book -e dev` into a
temporary folder (never the checkout's _build) and served on 127.0.0.1 from a thread. Nothing is downloaded: the
browser is the system's (`make system-deps` installs it), never `playwright install`.
Screenshots of the home page and of one runbook page go to test-results/.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from stackbook.core import catalog
from tests.conftest import ROOT, chromium, chromium_missing, run_cli

RESULTS = ROOT / "test-results"

pytestmark = pytest.mark.skipif(chromium_missing(), reason="Chromium is not installed: run `make system-deps`")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def site(database_url, tmp_path_factory):
    res = run_cli("book", "-e", "dev", "--out", str(tmp_path_factory.mktemp("book")), "--json")
    assert res.code == 0, res
    html = Path(res.json()["html"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, name="book-http", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", html
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser(site):
    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.console_errors = []
    pg.failed = []
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda exc: pg.console_errors.append(str(exc)))
    pg.on("requestfailed", lambda r: pg.failed.append(r.url))
    pg.on("response", lambda r: pg.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield pg
    context.close()


def runbook_docnames() -> list[str]:
    return [p.relative_to(ROOT).with_suffix("").as_posix() for p in catalog.paths()]


def test_home_page_loads_and_navigation_reaches_every_runbook(site, page):
    base, _ = site
    page.goto(base)
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/book/intro.html") and "stackbook" in page.title()
    assert page.locator("h1").first.inner_text().strip()
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "book-home.png"))
    nav = page.locator("nav.bd-docs-nav a.reference")
    hrefs = {urlsplit(urljoin(page.url, nav.nth(i).get_attribute("href"))).path for i in range(nav.count())}
    for doc in runbook_docnames():
        assert f"/{doc}.html" in hrefs, f"the navigation does not reach {doc}"
    # follow the navigation to each runbook and check its badge renders
    for doc in runbook_docnames():
        page.locator(f'nav.bd-docs-nav a.reference[href$="{doc.split("/")[-1]}.html"]').first.click()
        page.wait_for_load_state("domcontentloaded")
        assert page.url.endswith(f"/{doc}.html")
        badge = page.locator(".sb-status-line .sb-badge").first
        assert badge.is_visible() and badge.inner_text().strip() in {"✔ fresh", "✖ failing", "⚠ stale", "○ never run"}
        box = badge.bounding_box()
        assert box and box["width"] > 20 and box["height"] > 10
    assert page.console_errors == [] and page.failed == []


def test_runbook_page_shows_badge_tables_and_outputs(site, page):
    base, _ = site
    page.goto(base + "runbooks/ops/platform_check.html")
    page.wait_for_load_state("networkidle")
    colour = page.locator(".sb-badge").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), "the badge style (stackbook.css) is not applied"
    assert page.locator("table").count() >= 2  # metadata and parameters
    assert page.get_by_text("min_runbooks").first.is_visible()
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / "book-runbook-platform_check.png"), full_page=True)
    assert page.console_errors == [] and page.failed == []


def test_run_history_charts_render(site, page):
    base, _ = site
    page.goto(base + "reports/history.html")
    page.wait_for_load_state("networkidle")
    images = page.locator("article img")
    assert images.count() >= 2
    for i in range(images.count()):
        img = images.nth(i)
        assert img.get_attribute("src").endswith(".svg")
        width = img.evaluate("e => e.complete ? e.naturalWidth : 0")
        assert width > 100, f"chart {img.get_attribute('src')} did not render"
    assert page.locator("table.sb-history tbody tr").count() >= 1
    assert page.console_errors == [] and page.failed == []


def test_every_internal_link_resolves_and_no_page_logs_errors(site, page):
    """Crawl the site from the home page: every internal link (pages, anchors, downloads, images) resolves."""
    base, html = site
    seen, queue, broken, errors = set(), [base + "book/intro.html"], [], {}
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        page.console_errors.clear()
        response = page.goto(url)
        if response is None or response.status >= 400:
            broken.append(url)
            continue
        if not url.endswith(".html"):
            continue
        page.wait_for_load_state("load")
        if page.console_errors:
            errors[url] = list(page.console_errors)
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        anchors = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
        for link in links:
            target, fragment = urldefrag(link)
            if not target.startswith(base):
                continue
            if fragment and target == url and fragment not in anchors:
                broken.append(f"{url}#{fragment}")
            if target not in seen:
                if target.endswith(".html"):
                    queue.append(target)
                else:
                    path = html / urlsplit(target).path[len(urlsplit(base).path):]
                    if not (path.is_file() or (path / "index.html").is_file()):
                        broken.append(target)
        for src in page.eval_on_selector_all("img[src]", "els => els.map(e => e.src)"):
            if src.startswith(base) and not (html / urlsplit(src).path.lstrip("/")).is_file():
                broken.append(src)
    pages = [u for u in seen if u.endswith(".html")]
    assert len(pages) >= len(runbook_docnames()) + 8
    assert broken == [], broken
    assert errors == {}, errors
    assert page.failed == [], page.failed
