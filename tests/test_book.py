"""The book: generation, freshness, incremental rebuilds, `stackbook new`, and no secret in _build.

Builds run through the real `stackbook book` command on a copy of the project
(runbooks, book/, _config.yml, _toc.yml, environments) in a temporary folder
that shares the test session's database and run store, so the checkout is never
modified. The copy's book is built once per module and then rebuilt
incrementally.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackbook.book import evidence, pages, toc
from stackbook.core import catalog, project
from stackbook.run import scrub
from tests import test_runbook_contract as contract_tests
from tests.conftest import ROOT, run_cli

COPY = ["pyproject.toml", "_config.yml", "_toc.yml", "book", "runbooks", "infra/environments"]
CANARY = ROOT / "tests" / "fixtures" / "book" / "canary_book.ipynb"


def copy_project(dest: Path) -> Path:
    for rel in COPY:
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        else:
            shutil.copy2(src, dst)
    return dest


def in_copy(copy: Path) -> dict:
    """Environment for a CLI call that works on the copy but uses this project's cluster (and the test session's
    database and state folder, from conftest)."""
    return {"STACKBOOK_PROJECT": str(copy), "STACKBOOK_HOME": str(project.home_dir())}


def book_cli(copy: Path, *args: str, env: dict | None = None):
    return run_cli("book", "-e", copy.book_env, "--src", str(copy / "src"), "--out", str(copy / "out"), "--json",
                   *args, env={**in_copy(copy), **(env or {})}, cwd=copy)


class _Copy(type(Path())):
    book_env: str


@pytest.fixture(scope="module")
def book_copy(tmp_path_factory, database_url):
    """A project copy with its own environment (so that runs other work records meanwhile change no runbook
    page), one real run of platform_check in it, and its book built once (cold)."""
    import psycopg

    copy = _Copy(copy_project(tmp_path_factory.mktemp("book") / "project"))
    copy.book_env = f"t_book_{uuid.uuid4().hex[:8]}"
    shutil.copy(copy / "infra" / "environments" / "dev.yml", copy / "infra" / "environments" / f"{copy.book_env}.yml")
    try:
        run = run_cli("run", "platform_check", "-e", copy.book_env, "--json", env=in_copy(copy), cwd=copy)
        assert run.code == 0, run
        res = book_cli(copy)
        assert res.code == 0, res
        yield copy, res.json(), run.json()
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("delete from stackbook.runs where env = %s", (copy.book_env,))
        shutil.rmtree(project.state_dir() / "runs" / copy.book_env, ignore_errors=True)


# ---------------------------------------------------------------- the table of contents (a contract)


def test_every_runbook_is_in_the_toc():
    missing = toc.missing(toc.load(ROOT), catalog.paths(), ROOT)
    assert not missing, f"runbooks missing from _toc.yml: {missing} (run `stackbook book --fix-toc`)"


def test_toc_lists_no_runbook_that_does_not_exist():
    assert toc.stale(toc.load(ROOT), catalog.paths(), ROOT) == []


def test_effective_toc_drops_unbuilt_and_appends_missing_runbooks():
    data = {"format": "jb-book", "root": "book/intro",
            "parts": [{"caption": "Runbooks", "chapters": [{"file": "reports/runbooks"}, {"file": "runbooks/a/x"}]}]}
    out = toc.effective(data, ["runbooks/b/y"])
    assert toc.files(out) == ["book/intro", "reports/runbooks", "runbooks/b/y"]
    assert toc.files(data) == ["book/intro", "reports/runbooks", "runbooks/a/x"]  # the input is untouched


# ---------------------------------------------------------------- freshness from ledger rows


@pytest.fixture()
def scratch_env_rows(db):
    """Ledger rows in an environment name nobody else uses; deleted afterwards."""
    env = f"t_book_{uuid.uuid4().hex[:8]}"
    from stackbook.run import ledger

    ledger.ensure_schema(db)

    def add(status: str, hours_ago: float, **extra) -> str:
        run_id = f"{env}-{uuid.uuid4().hex[:6]}"
        started = datetime.now(UTC) - timedelta(hours=hours_ago)
        db.execute(
            """insert into stackbook.runs (id, runbook, env, status, started_at, finished_at, duration_s, host,
                                           results, error)
               values (%s, 'platform_check', %s, %s, %s, %s, 4.2, 'test', %s, %s)""",
            (run_id, env, status, started, None if status == "running" else started + timedelta(seconds=4.2),
             json.dumps(extra.get("results", {})), json.dumps(extra["error"]) if "error" in extra else None))
        return run_id

    yield env, add
    db.execute("delete from stackbook.runs where env = %s", (env,))


def state_of(db, env: str, meta: dict) -> evidence.Freshness:
    led = evidence.read(db, env, ["platform_check"])
    return evidence.freshness(meta, led.runs_of("platform_check"), env)


def test_freshness_never_fresh_stale_failing(db, scratch_env_rows):
    env, add = scratch_env_rows
    meta = {"freshness_hours": 2, "schedule": None}
    assert state_of(db, env, meta).state == "never"

    old = add("succeeded", 5)
    fr = state_of(db, env, meta)
    assert fr.state == "stale" and fr.last_success["id"] == old

    recent = add("succeeded", 1, results={"rows": 3})
    fr = state_of(db, env, meta)
    assert fr.state == "fresh" and fr.last_success["id"] == recent and fr.latest["results"] == {"rows": 3}

    add("skipped", 0.5)  # skipped runs count neither way
    running = add("running", 0.2)
    fr = state_of(db, env, meta)
    assert fr.state == "fresh" and fr.running["id"] == running

    failed = add("failed", 0.1, error={"cell_index": 4, "ename": "AssertionError", "evalue": "only 0 runbooks"})
    fr = state_of(db, env, meta)
    assert fr.state == "failing" and fr.latest["id"] == failed and fr.last_success["id"] == recent
    text = pages.status_section(catalog.load("platform_check"), fr, lambda *a: None)
    assert 'class="sb-badge sb-failing"' in text and "AssertionError: only 0 runbooks" in text
    assert "cell 4" in text and recent in text


def test_run_tables_show_the_operator_the_approval_resume_waiting_and_attestations(db, scratch_env_rows):
    env, add = scratch_env_rows
    approved, resumed, waiting = add("succeeded", 2), add("succeeded", 1), add("waiting", 0.5)
    by_hand = add("succeeded", 0.2)
    approval = f"ap-{uuid.uuid4().hex[:6]}"
    db.execute("""insert into stackbook.approvals (id, runbook, env, code_sha256, params, params_sha256, approved_by,
                  approver_verified, reason, created_at) values (%s, 'platform_check', %s, 'c0de', '{}',
                  'abcdef1234567890', 'bob', true, 'planned maintenance', '2026-11-30 08:00+00')""", (approval, env))
    db.execute("update stackbook.runs set operator = 'alice', operator_verified = true, approval_id = %s, "
               "params = '{\"dry_run\": false}' where id = %s", (approval, approved))
    db.execute("update stackbook.runs set operator = 'carol', resumed_from = %s where id = %s", (approved, resumed))
    db.execute("""update stackbook.runs set operator = 'dave', waiting = '{"cell_index": 4, "instruction":
                  "swap the primary"}' where id = %s""", (waiting,))
    db.execute("update stackbook.runs set operator = 'erin', kind = 'interactive' where id = %s", (by_hand,))
    db.execute("""insert into stackbook.attestations (id, run_id, cell_index, instruction, attested_by, note)
                  values (%s, %s, 4, 'swap the primary', 'frank', 'swapped at 09:12')""", (approval + "-at", resumed))
    try:
        led = evidence.read(db, env, ["platform_check"])
        led.history = evidence._query(db, f"select {', '.join(evidence._COLUMNS)} from stackbook.runs where env = %s "
                                          "order by started_at desc", (env,))  # the page's rows, of this env only
        evidence.attach_acts(db, led.history)
        rows = {r["id"]: r for r in led.history}
        text = pages.history(led, {}, lambda *a: None, {"duration": "d.svg", "success": "s.svg"})
        assert "approval, results or error" in text

        def line_of(run_id: str) -> str:
            return next(line for line in text.splitlines() if line.startswith(f"| `{run_id}`"))

        row = line_of(approved)
        assert "| alice ✔ |" in row and "approved by bob (verified) 2026-11-30 08:00 UTC for parameters " \
            "`abcdef123456`: planned maintenance" in row
        row = line_of(resumed)
        assert f"resumed from `{approved}`" in row and "step 4 confirmed by frank" in row and "swapped at 09:12" in row
        assert "waiting at cell 4: swap the primary" in line_of(waiting)
        assert "run by hand by erin" in line_of(by_hand)
        assert rows[approved]["approval"]["approved_by"] == "bob"

        fr = evidence.freshness({"freshness_hours": 24}, led.runs_of("platform_check"), env)
        assert fr.state == "fresh" and fr.latest["id"] == by_hand  # an interactive success counts; waiting does not
        assert fr.running["id"] == waiting
        status = pages.status_section(catalog.load("platform_check"), fr, lambda *a: None)
        assert "run by hand by erin" in status and f"stackbook attest {waiting} --by NAME" in status
        assert "stopped at cell 4 for a manual step: swap the primary" in status
    finally:
        db.execute("delete from stackbook.approvals where id = %s", (approval,))
        db.execute("delete from stackbook.attestations where id = %s", (approval + "-at",))


def test_a_waiting_run_is_not_a_fresh_success(db, scratch_env_rows):
    env, add = scratch_env_rows
    failed = add("failed", 1, error={"cell_index": 2, "ename": "E", "evalue": "x"})
    add("waiting", 0.1)
    fr = state_of(db, env, {"freshness_hours": 24})
    assert fr.state == "failing" and fr.latest["id"] == failed and fr.running["status"] == "waiting"


def test_the_evidence_page_shows_an_intact_or_broken_chain():
    intact = pages.evidence_chain("prod", evidence.ChainState(entries=12, head="ab" * 32, runs_checked=3,
                                                              problems=[], problem_count=0))
    assert "✔ intact</span> <span>12 entries" in intact and "ab" * 32 in intact and "stackbook evidence verify" in intact
    broken = pages.evidence_chain("prod", evidence.ChainState(
        entries=12, head="ab" * 32, runs_checked=3, problems=["entry 3 (run r1): entry 2 missing (deleted)"],
        problem_count=4))
    assert "✖ broken</span> <span>4 problem(s)" in broken and "entry 2 missing (deleted)" in broken and "And 3 more" in broken
    assert "No evidence chain" in pages.evidence_chain("dev", None)


def test_freshness_window_from_schedule_when_no_freshness_hours():
    assert evidence.window_hours({"schedule": "*/30 * * * *"}) == 1.0
    assert evidence.window_hours({"schedule": "0 3 * * *", "freshness_hours": 30}) == 30
    assert evidence.window_hours({"schedule": None}) is None
    now = datetime.now(UTC)
    run = {"id": "r1", "env": "dev", "status": "succeeded", "started_at": now - timedelta(days=400),
           "finished_at": now - timedelta(days=400)}
    assert evidence.freshness({"schedule": None}, [run], "dev", now).state == "fresh"  # no window: never stale


def test_audit_and_dr_pages_say_no_run_yet():
    text = pages.audit("dev", None, None, lambda *a: None, "runbooks/audit/compliance_audit")
    assert "No run of `compliance_audit` in `dev` yet" in text and "stackbook run compliance_audit -e dev" in text
    text = pages.dr_drill("dev", None, [], lambda *a: None, None)
    assert "No run of `dr_drill` in `dev` yet" in text and "no runbook named `dr_drill`" in text


# ---------------------------------------------------------------- generation and the built site


def test_cold_build_has_every_page(book_copy):
    copy, doc, run = book_copy
    html = Path(doc["html"])
    names = {p.stem for p in catalog.paths()}
    assert set(doc["runbooks"]) == names
    for path in (copy / "runbooks").rglob("*.ipynb"):
        page = html / path.relative_to(copy).with_suffix(".html")
        assert page.exists(), f"no page for {path}"
        text = page.read_text()
        assert 'class="sb-badge sb-' in text and "Parameters" in text and "About this runbook" in text
    overview = (html / "reports" / "runbooks.html").read_text()
    assert overview.count('class="sb-badge sb-') >= len(names) + 4  # the summary, then one per runbook
    history = (html / "reports" / "history.html").read_text()
    assert history.count("<img") >= 2 and ".svg" in history
    for page in ("reports/audit.html", "reports/dr_drill.html", "book/intro.html", "book/writing.html",
                 "reports/evidence.html"):
        assert (html / page).exists(), page
    chain_page = (html / "reports" / "evidence.html").read_text()
    assert "How to verify a bundle" in chain_page and "evidence.zip" in chain_page
    assert "✔ intact" in chain_page or "✖ broken" in chain_page  # the chain's state at build time
    checked = (html / "runbooks" / "ops" / "platform_check.html").read_text()
    assert f"by {run['operator']}" in checked  # the run's operator, as the ledger recorded it
    assert run["id"] in checked and "sb-fresh" in checked  # its run, as the latest executed notebook
    assert "recorded runbooks = " in checked and "Results recorded by run" in checked  # outputs and results
    never = (html / "runbooks" / "dr" / "dr_drill.html").read_text()
    assert "sb-never" in never and "has not run in" in never
    config = (copy / "src" / "_config.yml").read_text()
    assert "execute_notebooks: 'off'" in config or "execute_notebooks: off" in config


def test_runbook_page_shows_parameters_from_the_parameters_cell(book_copy):
    copy, doc, _ = book_copy
    rb = catalog.load("platform_check")
    text = (Path(doc["html"]) / "runbooks" / "ops" / "platform_check.html").read_text()
    for p in rb.parameters:
        assert p.name in text and p.help.split("(")[0].strip()[:30].replace("'", "&#x27;") in text.replace("’", "'")


def test_rebuild_with_nothing_changed_writes_nothing(book_copy):
    copy, _, _ = book_copy
    res = book_cli(copy)
    assert res.code == 0, res
    doc = res.json()
    # the run history lists every environment's runs and the evidence page the chain's head: other work records
    # runs meanwhile
    assert set(doc["files_written"]) <= {"reports/history.md", "reports/evidence.md"} | {
        f for f in doc["files_written"] if f.startswith("_runs/")}
    assert set(doc["pages_read"]) <= {"reports/history", "reports/evidence"}


def test_rebuild_after_one_runbook_changed_redoes_only_that_page(book_copy):
    copy, _, _ = book_copy
    target = copy / "runbooks" / "ops" / "platform_check.ipynb"
    html = copy / "out" / "_build" / "html"
    others = [p for p in (html / "runbooks").rglob("*.html") if p.stem != "platform_check"]
    before = {p: p.stat().st_mtime_ns for p in others}
    compiled = {p: p.stat().st_mtime_ns for p in (copy / "out" / "_build" / ".jinja-cache").iterdir()}
    assert len(compiled) > 10, "the cold build kept no compiled templates"
    nb = json.loads(target.read_text())
    first = nb["cells"][0]
    first["source"] = "".join(first["source"]) + "\n\nA sentence added by the incremental-build test.\n"
    target.write_text(json.dumps(nb, indent=1))
    res = book_cli(copy)
    assert res.code == 0, res
    doc = res.json()
    assert "runbooks/ops/platform_check.ipynb" in doc["files_written"]
    assert [f for f in doc["files_written"] if f.startswith("runbooks/")] == ["runbooks/ops/platform_check.ipynb"]
    assert set(doc["pages_read"]) - {"reports/history", "reports/evidence"} == {"runbooks/ops/platform_check"}
    assert "added by the incremental-build test" in (html / "runbooks" / "ops" / "platform_check.html").read_text()
    assert {p: p.stat().st_mtime_ns for p in others} == before, "other runbook pages were rewritten"
    # the theme's templates came from the cache: none compiled again, none added
    assert {p: p.stat().st_mtime_ns for p in (copy / "out" / "_build" / ".jinja-cache").iterdir()} == compiled


def test_a_warning_fails_the_build_and_names_it(book_copy):
    copy, _, _ = book_copy
    chapter = copy / "book" / "running.md"
    original = chapter.read_text()
    chapter.write_text(original + "\n\nSee {doc}`a page that does not exist </book/nowhere>`.\n")
    try:
        res = book_cli(copy)
        assert res.code == 1, res
        assert "book/nowhere" in res.err and "warnings are errors" in res.err
    finally:
        chapter.write_text(original)


def test_watch_rebuilds_each_change_in_one_process_and_survives_a_failed_build(book_copy):
    """`stackbook book --watch`: one long-running process; an edit is rebuilt (only its pages), a broken
    reference is reported without ending the watch, the fix builds again, SIGTERM stops it cleanly."""
    import queue
    import signal
    import subprocess
    import threading

    from tests.conftest import STACKBOOK

    copy, _, _ = book_copy
    target = copy / "runbooks" / "ops" / "platform_check.ipynb"
    chapter = copy / "book" / "running.md"
    original_nb, original_chapter = target.read_text(), chapter.read_text()
    proc = subprocess.Popen(
        [STACKBOOK, "book", "-e", copy.book_env, "--src", str(copy / "src"), "--out", str(copy / "out"), "--json",
         "--watch", "--interval", "0.3"],
        cwd=copy, env={**os.environ, **in_copy(copy)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(ln)) for ln in proc.stdout], daemon=True).start()

    def next_build(timeout: float = 120) -> dict:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"no build reported within {timeout} s; stderr: {proc.stderr.read()}") from None

    try:
        first = next_build()
        assert first["ok"], first
        nb = json.loads(original_nb)
        nb["cells"][0]["source"] = "".join(nb["cells"][0]["source"]) + "\n\nEdited while the book was watched.\n"
        target.write_text(json.dumps(nb, indent=1))
        edited = next_build()
        assert edited["ok"] and "runbooks/ops/platform_check" in edited["pages_read"], edited
        # a warm process writes the changed page and the page whose toctree lists it, not every page
        assert set(edited["pages_written"]) <= {"runbooks/ops/platform_check", "book/intro", "reports/history",
                                                "reports/evidence"}, edited
        html = copy / "out" / "_build" / "html"
        assert "Edited while the book was watched." in (html / "runbooks" / "ops" / "platform_check.html").read_text()

        chapter.write_text(original_chapter + "\n\nSee {doc}`a page that does not exist </book/nowhere>`.\n")
        broken = next_build()
        assert not broken["ok"] and "book/nowhere" in broken["error"], broken
        assert proc.poll() is None, "a failed build ended the watch"
        chapter.write_text(original_chapter)
        fixed = next_build()
        assert fixed["ok"] and "book/running" in fixed["pages_read"], fixed

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped watching" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        target.write_text(original_nb)
        chapter.write_text(original_chapter)


def test_watch_reports_a_database_outage_once_and_builds_when_it_is_back(book_copy, database_url, tmp_path):
    """The watch loop itself, in a process of its own (it imports Jupyter Book): three passes with the database
    unreachable give one report naming it (password redacted), the pass after it is back builds the book."""
    import subprocess
    import sys
    import textwrap

    copy, _, _ = book_copy
    script = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from stackbook.book import watch

        good = os.environ["DATABASE_URL"]
        os.environ["DATABASE_URL"] = "postgresql://nobody:hunter2-not-real@127.0.0.1:1/none"
        passes, reports = 0, []

        def stop():
            global passes
            passes += 1
            if passes == 4:
                os.environ["DATABASE_URL"] = good
            return passes > 5

        def report(o):
            reports.append({{"error": o.error, "built": o.result is not None}})

        watch.watch({copy.book_env!r}, Path({str(tmp_path / "src")!r}), Path({str(tmp_path / "out")!r}),
                    report=report, interval=0.05, stop=stop)
        print(json.dumps(reports))
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=copy,
                          env={**os.environ, **in_copy(copy), "DATABASE_URL": database_url})
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(reports) == 2, reports
    assert "cannot connect" in reports[0]["error"] and "127.0.0.1:1" in reports[0]["error"], reports
    assert "hunter2" not in reports[0]["error"] and not reports[0]["built"]
    assert reports[1] == {"error": None, "built": True}
    assert (tmp_path / "out" / "_build" / "html" / "index.html").exists()


def test_unknown_environment_is_a_usage_error(book_copy):
    copy, _, _ = book_copy
    res = run_cli("book", "-e", "nowhere", "--src", str(copy / "src"), "--out", str(copy / "out"), env=in_copy(copy))
    assert res.code == 2 and "unknown environment 'nowhere'" in res.err


# ---------------------------------------------------------------- stackbook new


@pytest.fixture()
def blank_copy(tmp_path, database_url):
    """A project copy with a scratch environment of its own; its runs are removed afterwards."""
    import psycopg

    copy = _Copy(copy_project(tmp_path / "project"))
    copy.book_env = f"t_new_{uuid.uuid4().hex[:8]}"
    shutil.copy(copy / "infra" / "environments" / "dev.yml", copy / "infra" / "environments" / f"{copy.book_env}.yml")
    yield copy
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from stackbook.runs where env = %s", (copy.book_env,))
    shutil.rmtree(project.state_dir() / "runs" / copy.book_env, ignore_errors=True)


def test_new_scaffolds_a_runbook_that_passes_the_contract_and_runs(blank_copy, database_url):
    copy = blank_copy
    res = run_cli("new", "ops/check_things", "--owner", "sre", "--json", env=in_copy(copy), cwd=copy)
    assert res.code == 0, res
    doc = res.json()
    path = Path(doc["path"])
    assert path == copy / "runbooks" / "ops" / "check_things.ipynb" and doc["toc_changed"] is True
    contract = contract_tests.TestRunbook()
    for check in [m for m in dir(contract) if m.startswith("test_")]:
        getattr(contract, check)(path)
    nb = json.loads(path.read_text())
    assert sum("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]) == 1
    meta = nb["metadata"]["stackbook"]
    assert meta["owner"] == "sre" and meta["tags"] == ["ops"]
    assert "runbooks/ops/check_things" in toc.files(toc.load(copy))
    run = run_cli("run", "check_things", "-e", copy.book_env, "--json", env=in_copy(copy), cwd=copy)
    assert run.code == 0, run
    assert run.json()["results"] == {"planned": 10, "applied": 0}


def test_new_refuses_to_overwrite_and_validates_names(blank_copy, database_url):
    copy = blank_copy
    assert run_cli("new", "ops/check_things", env=in_copy(copy), cwd=copy).code == 0
    target = copy / "runbooks" / "ops" / "check_things.ipynb"
    before, toc_before = target.read_bytes(), (copy / "_toc.yml").read_bytes()
    again = run_cli("new", "ops/check_things", env=in_copy(copy), cwd=copy)
    assert again.code == 2 and "exists already" in again.err and "never overwrites" in again.err
    other_area = run_cli("new", "dr/check_things", env=in_copy(copy), cwd=copy)
    assert other_area.code == 2 and "names are unique" in other_area.err
    for bad in ("check_things", "Ops/x", "ops/Bad-Name", "ops/1x", "a/b/c", "ops/"):
        res = run_cli("new", bad, env=in_copy(copy), cwd=copy)
        assert res.code == 2, (bad, res)
        assert "AREA/NAME" in res.err or "snake_case" in res.err
    assert target.read_bytes() == before and (copy / "_toc.yml").read_bytes() == toc_before
    assert sorted(p.stem for p in (copy / "runbooks").rglob("*.ipynb")) == sorted(
        [p.stem for p in catalog.paths()] + ["check_things"])


# ---------------------------------------------------------------- no secret in _build


def leaks(root: Path, value: str) -> list[str]:
    forms = scrub.forms(value)
    found = set()
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            found |= {f for f in forms if f in text}
    return sorted(found)


def canary_run(secret: str, extra_env: dict | None = None) -> dict:
    res = run_cli("run", str(CANARY), "-e", "dev", "--json", env={"BOOK_CANARY": secret, **(extra_env or {})})
    assert res.code == 1, res  # the canary fails on purpose, with the secret in its error
    return res.json()


def build_canary_book(tmp: Path) -> Path:
    """A book holding the canary runbook's chapter and the run history (the book process never sees the secret)."""
    env = {k: v for k, v in os.environ.items() if k != "BOOK_CANARY"}
    res = run_cli("book", "-e", "dev", "--runbook", str(CANARY), "--src", str(tmp / "src"), "--out", str(tmp),
                  "--json", env=env)
    assert res.code == 0, res
    return tmp / "_build"


def test_secret_canary_is_nowhere_in_the_built_book(database_url, db, tmp_path):
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    rec = canary_run(secret)
    try:
        built = build_canary_book(tmp_path)
        page = (built / "html" / "runbooks" / "other" / "canary_book.html").read_text()
        history = (built / "html" / "reports" / "history.html").read_text()
        assert rec["id"] in page and "[secret:BOOK_CANARY]" in page  # the run's evidence is on the page, scrubbed
        assert rec["id"] in history and "secret:BOOK_CANARY" in history  # its error text is in the run history
        assert leaks(built, secret) == []
        assert leaks(tmp_path / "src", secret) == []
    finally:
        db.execute("delete from stackbook.runs where id = %s", (rec["id"],))
        Path(rec["output"]).unlink(missing_ok=True)


def test_control_unscrubbed_canary_is_found_in_the_built_book(database_url, db, tmp_path):
    """Proves the search above finds a leak: with the runner's scrubbing off, the built site shows the secret."""
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    rec = canary_run(secret, {"STACKBOOK_UNSAFE_NO_SCRUB": "1", "STACKBOOK_RUN_STORE": str(tmp_path / "runs")})
    try:
        built = build_canary_book(tmp_path / "book")
        found = leaks(built, secret)
        assert secret in found and len(found) >= 3, found  # plain, base64 and URL-encoded forms
    finally:
        db.execute("delete from stackbook.runs where id = %s", (rec["id"],))
