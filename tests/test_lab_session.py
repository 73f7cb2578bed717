"""A runbook stepped through in JupyterLab is a run (`stackbook lab NAME`): checked, recorded, published.

Each session is the real thing: `stackbook lab NAME --no-browser --json` started as a process (its own Jupyter
server on 127.0.0.1, a free port, token auth), driven in headless Chromium with Playwright (Debian's
/usr/bin/chromium, never `playwright install`) or, where no cell has to run, through the server's REST API. The
fixture runbook (tests/fixtures/lab/lab_session.ipynb, exclusive) prints its declared secret LAB_SECRET, records
results, raises when asked, and ends with `stackbook.finish()`. Every process a test starts is stopped by its
fixture, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from stackbook.core import project
from stackbook.run import session as session_mod
from tests.conftest import ROOT, STACKBOOK, chromium, run_cli, wait_for

FIXTURE = str(ROOT / "tests" / "fixtures" / "lab" / "lab_session.ipynb")
RUNBOOK = "lab_session"
# the cells of the session copy: 0 markdown, 1 parameters, 2 injected, 3 records, 4 raises if asked, 5, 6 finish
FAIL_CELL, AFTER_CELL = 4, 5


@pytest.fixture()
def lab_env(db):
    """A scratch environment (dev's settings): the test's rows, and only them, are in it; removed afterwards."""
    name = f"t_lab_{uuid.uuid4().hex[:8]}"
    path = project.environments_dir() / f"{name}.yml"
    path.write_text((project.environments_dir() / "dev.yml").read_text())
    yield name
    path.unlink(missing_ok=True)
    for (run_id,) in db.execute("select id from stackbook.runs where env = %s", (name,)).fetchall():
        shutil.rmtree(project.state_dir() / "lab" / run_id, ignore_errors=True)
    shutil.rmtree(Path(project.run_store_root()) / name, ignore_errors=True)
    db.execute("delete from stackbook.runs where env = %s", (name,))


class Session:
    """`stackbook lab FIXTURE -e ENV --no-browser --json` as a process: its ready document, its end."""

    def __init__(self, env_name: str, secret: str, *args: str):
        self.secret = secret
        self.proc = subprocess.Popen([STACKBOOK, "lab", FIXTURE, "-e", env_name, "--no-browser", "--json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "LAB_SECRET": secret, "STACKBOOK_LAB_SAVE_WAIT": "20",
                                          "STACKBOOK_LAB_RESTART_GRACE": "3"})
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        line = self._first_line()
        self.info = json.loads(line)
        self.run_id, self.url, self.notebook = self.info["run_id"], self.info["url"], Path(self.info["notebook"])
        self.port = int(self.url.split(":")[2].split("/")[0])
        self.token = self.url.split("token=")[1]

    def _first_line(self) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=90)
        assert box and box[0].strip(), f"no ready document from `stackbook lab`: {''.join(self.err)[-3000:]}"
        return box[0]

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`stackbook lab` still runs after {timeout} s: {''.join(self.err)[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture()
def sessions(database_url):
    started: list[Session] = []

    def start(env_name: str, *args: str, secret: str | None = None) -> Session:
        s = Session(env_name, secret or "lab-canary/" + secrets.token_urlsafe(18), *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def open_notebook(page, s: Session, db) -> None:
    """The session copy open in JupyterLab, every cell shown, its kernel started (the extension wrote its pid)."""
    page.goto(s.url)
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length === 7", timeout=60_000)
    wait_for(lambda: row(db, s.run_id)["kernel_pid"], timeout=60)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def run_all(page) -> None:
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_text("Run All Cells", exact=True).click()


def run_cell(page, index: int) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def row(db, run_id: str) -> dict:
    from psycopg.rows import dict_row

    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("select * from stackbook.runs where id = %s", (run_id,)).fetchone()


def cells_recorded(db, run_id: str, count: int):
    found = [c for c in (row(db, run_id)["cells"] or []) if c.get("event") in ("cell", "finish")]
    return found if len(found) >= count else None


def secret_free(s: Session, *paths: Path) -> None:
    for path in paths:
        text = path.read_text()
        assert s.secret not in text, f"the secret is in {path}"


def test_a_session_run_saved_and_finished_in_jupyterlab_is_a_succeeded_run(sessions, page, db, lab_env):
    s = sessions(lab_env)
    open_notebook(page, s, db)
    run_all(page)
    page.wait_for_selector("text=save the notebook now", timeout=60_000)  # stackbook.finish() ran
    page.wait_for_selector(f"text={s.secret}", timeout=30_000)  # the browser shows the live output as it is
    page.keyboard.press("Control+s")
    assert s.wait() == 0, "".join(s.err)[-3000:]
    rec = row(db, s.run_id)
    assert rec["status"] == "succeeded" and rec["kind"] == "interactive" and rec["reason"] == "finished by " \
        "stackbook.finish()"
    assert rec["results"] == {"doubled": 4, "label": "lab", "after": True}
    ran = [c for c in rec["cells"] if c["event"] in ("cell", "finish")]
    assert [c["index"] for c in ran] == [1, 2, 3, 4, 5, 6] and all(c["in_order"] and c["ok"] for c in ran)
    assert rec["operator"] and rec["code_sha256"] and rec["finished_at"]
    stored = Path(rec["output"])
    assert rec["notebook_sha256"] == __import__("hashlib").sha256(stored.read_bytes()).hexdigest()
    nb = json.loads(stored.read_text())
    assert nb["metadata"]["stackbook"]["run"]["id"] == s.run_id
    assert any("[secret:LAB_SECRET]" in json.dumps(c.get("outputs")) for c in nb["cells"])  # the outputs, scrubbed
    checkpoints = list(s.notebook.parent.glob(".ipynb_checkpoints/*.ipynb"))
    assert checkpoints, "JupyterLab made no checkpoint"
    secret_free(s, stored, s.notebook, *checkpoints)
    assert s.secret not in json.dumps(rec, default=str)
    listed = run_cli("runs", "--kind", "interactive", "-e", lab_env, "--json")
    assert [r["id"] for r in listed.json()] == [s.run_id]
    from stackbook.book import evidence as book_evidence

    assert book_evidence.read(db, lab_env, [RUNBOOK]).latest(RUNBOOK)["id"] == s.run_id  # what the book lists
    verified = run_cli("verify", "--json")  # its row equals its chain entry, its notebook has the recorded hash
    assert [p for p in verified.json()["problems"] if p.get("ref") == s.run_id] == [], verified


def test_a_cell_that_raises_fails_the_session_naming_it_and_cells_out_of_order_are_listed(sessions, page, db,
                                                                                           lab_env):
    s = sessions(lab_env, "-p", "fail=true")
    open_notebook(page, s, db)
    run_cell(page, AFTER_CELL)  # before its turn: it raises NameError, it is listed
    wait_for(lambda: cells_recorded(db, s.run_id, 1), timeout=30)
    run_all(page)  # stops at the cell that raises
    wait_for(lambda: cells_recorded(db, s.run_id, 5), timeout=30)
    live = row(db, s.run_id)
    assert live["status"] == "running" and live["results"] == {"doubled": 4}  # recorded as it came
    # the session holds the exclusive lock: a second session, and a headless run, are refused
    with_secret = {"LAB_SECRET": s.secret}
    second = run_cli("lab", FIXTURE, "-e", lab_env, "--no-browser", "--json", env=with_secret, timeout=60)
    assert second.code == 3, second
    headless = run_cli("run", FIXTURE, "-e", lab_env, env=with_secret, timeout=60)
    assert headless.code == 3, headless
    ended = run_cli("lab", "end", s.run_id, "--json")
    assert ended.code == 1, ended
    rec = ended.json()
    assert rec["status"] == "failed" and rec["error"]["cell_index"] == FAIL_CELL
    assert rec["error"]["ename"] == "RuntimeError" and "[secret:LAB_SECRET]" in rec["error"]["evalue"]
    assert f"cell {FAIL_CELL} raised RuntimeError" in rec["reason"]
    assert f"cells run out of order: {AFTER_CELL}" in rec["reason"]
    early = [c for c in rec["cells"] if c.get("event") == "cell"][0]
    assert early["index"] == AFTER_CELL and early["in_order"] is False and early["ename"] == "NameError"
    assert s.wait() == 1
    assert s.secret not in json.dumps(row(db, s.run_id), default=str)


def test_a_session_whose_kernel_is_killed_is_failed_and_nothing_stays_running(sessions, db, lab_env):
    s = sessions(lab_env, "-p", "count=3")
    s.api("/api/sessions", "POST", {"path": s.notebook.name, "type": "notebook", "kernel": {"name": "python3"}})
    pid = wait_for(lambda: row(db, s.run_id)["kernel_pid"], timeout=60)
    os.kill(pid, signal.SIGKILL)
    assert s.wait(timeout=60) == 1
    rec = row(db, s.run_id)
    assert rec["status"] == "failed" and f"kernel (pid {pid}) died" in rec["reason"]
    assert db.execute("select count(*) from stackbook.runs where env = %s and status = 'running'",
                      (lab_env,)).fetchone()[0] == 0
    with pytest.raises(urllib.error.URLError):  # the session's server is gone with it
        s.api("/api/status")
    assert _processes_of(lab_env) == []
    # parity: a headless run with the same arguments gets the same injected cell (and finish() does nothing)
    headless = run_cli("run", FIXTURE, "-e", lab_env, "-p", "count=3", "--json", env={"LAB_SECRET": s.secret})
    assert headless.code == 0, headless
    assert headless.json()["results"] == {"doubled": 6, "label": "lab", "after": True}

    def injected(path: str) -> str:
        cells = json.loads(Path(path).read_text())["cells"]
        return next(c["source"] for c in cells if "injected-parameters" in c["metadata"].get("tags", []))

    assert injected(str(s.notebook)) == injected(headless.json()["output"])
    assert "count = 3" in injected(str(s.notebook))


def test_shutting_the_kernel_down_ends_the_session(sessions, db, lab_env):
    s = sessions(lab_env)
    kernel = s.api("/api/sessions", "POST", {"path": s.notebook.name, "type": "notebook",
                                             "kernel": {"name": "python3"}})["kernel"]
    wait_for(lambda: row(db, s.run_id)["kernel_pid"], timeout=60)
    s.api(f"/api/kernels/{kernel['id']}", "DELETE")
    assert s.wait(timeout=60) == 1  # nothing ran: failed, naming the first cell
    rec = row(db, s.run_id)
    assert rec["status"] == "failed" and rec["reason"].startswith("the kernel was shut down; cell 1 did not run")
    assert rec["error"]["cell_index"] == 1


def test_an_abandoned_session_is_reaped_cancelled(sessions, db, lab_env):
    s = sessions(lab_env)
    s.proc.send_signal(signal.SIGKILL)  # the supervisor gone: its server dies with it, its row is abandoned
    s.proc.wait(timeout=10)
    listed = run_cli("runs", "-e", lab_env, "--json")  # reaps
    rec = next(r for r in listed.json() if r["id"] == s.run_id)
    assert rec["status"] == "cancelled" and rec["reason"].startswith("session abandoned: ")
    wait_for(lambda: _refused(s), timeout=20)


def _refused(s: Session) -> bool:
    try:
        s.api("/api/status")
    except urllib.error.URLError:
        return True
    return False


def test_bad_parameters_exit_2_and_start_nothing(db, lab_env):
    lab_root = project.state_dir() / "lab"
    before = set(lab_root.iterdir()) if lab_root.exists() else set()
    for bad in (["-p", "count=many"], ["-p", "nosuch=1"]):
        res = run_cli("lab", FIXTURE, "-e", lab_env, "--no-browser", "--json", *bad, timeout=60)
        assert res.code == 2, res
        assert res.json()["kind"] == "ParameterError" and bad[1].split("=")[0] in res.json()["error"], res
    assert run_cli("lab", "no_such_runbook", "-e", lab_env, "--no-browser").code == 2
    assert _processes_of(lab_env) == []  # no server, no kernel
    assert db.execute("select count(*) from stackbook.runs where env = %s", (lab_env,)).fetchone()[0] == 0
    after = set(lab_root.iterdir()) if lab_root.exists() else set()
    assert after == before


def _processes_of(env_name: str) -> list[int]:
    """Processes whose environment says they belong to environment ENV_NAME (a session's server or kernel)."""
    marker, found = f"STACKBOOK_ENV={env_name}".encode(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _cell(sha: str, ok: bool = True, event: str = "cell", ename: str | None = None) -> dict:
    return {"event": event, "sha256": sha, "ok": ok, "ename": ename, "evalue": "boom" if ename else None}


EXPECTED = [{"index": i, "sha256": f"s{i}", "cell_id": f"c{i}"} for i in (1, 2, 3)]


def test_evaluate_in_order_out_of_order_edited_restarted():
    ok = session_mod.evaluate(EXPECTED, [_cell("s1"), _cell("s2"), _cell("s3", event="finish")], {})
    assert ok.status == "succeeded" and ok.reason is None
    retried = session_mod.evaluate(EXPECTED, [_cell("s1"), _cell("s2", False, ename="E"), _cell("s2"), _cell("s3")],
                                   {})
    assert retried.status == "succeeded"
    ahead = session_mod.evaluate(EXPECTED, [_cell("s3"), _cell("s1"), _cell("s2"), _cell("s3"), _cell("x")],
                                 {"c9": 9})
    assert ahead.status == "succeeded" and "cells run out of order: 3" in ahead.reason
    assert "edited or added" in ahead.reason and ahead.cells[0]["in_order"] is False
    restarted = session_mod.evaluate(EXPECTED, [_cell("s1"), _cell("s2"), {"event": "kernel_started"}, _cell("s3")],
                                     {})
    assert restarted.status == "failed" and restarted.error["cell_index"] == 1
    failed = session_mod.evaluate(EXPECTED, [_cell("s1"), _cell("s2", False, ename="KeyError")], {})
    assert failed.status == "failed" and failed.error == {"cell_index": 2, "ename": "KeyError", "evalue": "boom"}
    assert failed.reason.startswith("cell 2 raised KeyError: boom")
