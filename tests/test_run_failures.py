"""Runs that go wrong: dead kernels, timeouts, killed runners, Ctrl-C, exclusive locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stackbook.run import ledger
from tests.conftest import ROOT, STACKBOOK, nb, wait_for


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running_row(db, runbook: str, proc: subprocess.Popen):
    """The running ledger row of the run that `proc` started (its runner's pid), once it has one.

    Matched by pid, not by run id order: two ids of the same second sort by their random part.
    """
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"stackbook run exited {proc.returncode} before its run was seen running:\n{err}")
    return db.execute(
        "select id, pid, kernel_pid from stackbook.runs where runbook = %s and status = 'running' and pid = %s "
        "and host = %s order by started_at desc limit 1",
        (runbook, proc.pid, ledger.hostname()),
    ).fetchone()


def cell_states(notebook: dict) -> list[str]:
    """Papermill's status of every code cell that has one, in order."""
    return [c["metadata"]["papermill"]["status"] for c in notebook["cells"]
            if c["cell_type"] == "code" and "papermill" in c["metadata"]]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([STACKBOOK, "run", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_kernel_that_kills_itself(cli):
    res = cli("run", nb("kills_kernel"), "--json")
    assert res.code == 1
    rec = res.json()
    assert rec["status"] == "failed" and "kernel died" in rec["reason"]
    partial = json.loads(Path(rec["output"]).read_text())
    outputs = [o for c in partial["cells"] for o in c.get("outputs", [])]
    assert any("about to die" in "".join(o.get("text", "")) for o in outputs)  # the partial notebook was kept
    assert cell_states(partial)[-1] == "failed"  # the cell the kernel died in (issue 10), never "completed"
    assert "running" not in cell_states(partial)


def test_cell_timeout(cli):
    res = cli("run", nb("sleeps"), "-p", "seconds=30", "--cell-timeout", "1", "--json")
    assert res.code == 1
    rec = res.json()
    assert rec["status"] == "timed_out" and rec["error"]["ename"] == "CellTimeoutError"
    assert not alive(rec["results"]["kernel_pid"])


def test_run_timeout(cli):
    res = cli("run", nb("sleeps"), "-p", "seconds=30", "--timeout", "2", "--json")
    assert res.code == 1
    rec = res.json()
    assert rec["status"] == "timed_out" and "timeout of 2.0 s" in rec["reason"]
    assert rec["duration_s"] < 25


def test_runner_killed_is_reaped_at_once_and_its_kernel_does_not_live_on(cli, db):
    proc = start(nb("sleeps"), "-p", "seconds=120")
    row = wait_for(lambda: (r := running_row(db, "sleeps", proc)) and r[2] and r)
    run_id, runner_pid, kernel_pid = row
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = cli("runs", "--runbook", "sleeps", "--limit", "5", "--json")
    rec = next(r for r in res.json() if r["id"] == run_id)
    assert rec["status"] == "failed" and "stale" in rec["reason"] and str(runner_pid) in rec["reason"]
    wait_for(lambda: not alive(kernel_pid), timeout=20)


def test_silent_run_on_another_host_is_reaped_after_heartbeat_timeout(db, cli):
    ledger.ensure_schema(db)
    run_id = ledger.new_run_id()
    db.execute(
        "insert into stackbook.runs (id, runbook, env, status, host, pid, heartbeat_at) "
        "values (%s, 'elsewhere', 'dev', 'running', 'another-host', 1, now() - interval '2 minutes')",
        (run_id,),
    )
    fresh_id = ledger.new_run_id() + "-fresh"
    db.execute(
        "insert into stackbook.runs (id, runbook, env, status, host, pid, heartbeat_at) "
        "values (%s, 'elsewhere', 'dev', 'running', 'another-host', 1, now())",
        (fresh_id,),
    )
    try:
        res = cli("runs", "show", run_id, "--json").json()
        assert res["status"] == "failed" and "no heartbeat" in res["reason"]
        assert cli("runs", "show", fresh_id, "--json").json()["status"] == "running"  # within the timeout
    finally:
        db.execute("delete from stackbook.runs where id in (%s, %s)", (run_id, fresh_id))


def test_ctrl_c_cancels_and_keeps_partial_notebook(db):
    proc = start(nb("sleeps"), "-p", "seconds=120", "--json")
    run_id, _, kernel_pid = wait_for(lambda: (r := running_row(db, "sleeps", proc)) and r[2] and r)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rec = ledger.get_run(db, run_id)
    assert rec.status == "cancelled"
    partial = json.loads(Path(rec.output).read_text())
    assert any("sleeping" in "".join(o.get("text", "")) for c in partial["cells"] for o in c.get("outputs", []))
    assert cell_states(partial)[-1] == "failed" and "running" not in cell_states(partial)  # not "completed"
    wait_for(lambda: not alive(kernel_pid), timeout=20)


def test_exclusive_runbook_refuses_a_second_run_then_allows_one(db, cli):
    first = start(nb("exclusive"), "-p", "seconds=20")
    holder = wait_for(lambda: running_row(db, "exclusive", first))
    second = cli("run", nb("exclusive"), "-p", "seconds=0")
    assert second.code == 3, second
    assert holder[0] in second.err and "exclusive" in second.err
    other_env = cli("run", nb("exclusive"), "-p", "seconds=0", "-e", "staging")
    assert other_env.code == 0, other_env  # the lock is per (runbook, environment)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    third = cli("run", nb("exclusive"), "-p", "seconds=0")
    assert third.code == 0, third


def test_lock_is_freed_when_its_holder_dies(db, cli):
    first = start(nb("exclusive"), "-p", "seconds=60")
    wait_for(lambda: running_row(db, "exclusive", first))
    first.send_signal(signal.SIGKILL)
    first.wait()
    res = cli("run", nb("exclusive"), "-p", "seconds=0")
    assert res.code == 0, res


# ------------------------------------------------------------------ the run store, and the row on every path


@pytest.mark.parametrize("store,needle", [
    ("{tmp}/a-file/runs", "cannot be written"),  # a folder that cannot be created (a file is in the way)
    ("ftp://x", "uses ftp://, which papermill cannot write"),
])
def test_run_store_that_cannot_be_written_is_exit_2_and_records_nothing(cli, db, tmp_path, store, needle):
    (tmp_path / "a-file").write_text("in the way\n")
    store = store.format(tmp=tmp_path)
    res = cli("run", nb("typed"), "--json", env={"STACKBOOK_RUN_STORE": store})
    assert res.code == 2, res
    doc = res.json()
    assert doc["kind"] == "UsageError" and needle in doc["error"] and "nothing was executed" in doc["error"]
    assert "STACKBOOK_RUN_STORE" in doc["error"] and "Traceback" not in res.err
    ledger.ensure_schema(db)  # other tests may run "typed" meanwhile: look for a row of this store only
    rows = db.execute("select id from stackbook.runs where output like %s", (store + "/%",)).fetchall()
    assert rows == []  # no row: nothing ran
    assert (tmp_path / "a-file").read_text() == "in the way\n"


def test_run_store_files_are_owner_only_and_a_failed_write_leaves_no_temporary_file(tmp_path):
    from stackbook.run import runstore

    folder = tmp_path / "dev" / "rb"
    runstore.write_text(str(folder / "1.ipynb"), "{}\n")
    assert (folder / "1.ipynb").stat().st_mode & 0o777 == 0o600
    (folder / "2.ipynb").mkdir()  # a folder where the notebook goes: the rename fails after the write
    (folder / "2.ipynb" / "keep").write_text("")
    with pytest.raises(OSError):
        runstore.write_text(str(folder / "2.ipynb"), "{}\n")
    assert sorted(p.name for p in folder.iterdir()) == ["1.ipynb", "2.ipynb"]  # no .tmp left behind
    assert (folder / "1.ipynb").read_text() == "{}\n"


def exclusive_lock_is_free(db, runbook: str, env: str = "dev") -> bool:
    """Whether another session could take RUNBOOK's lock now (taken and given back at once)."""
    key = ledger.lock_key(runbook, env)
    got = db.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]
    if got:
        db.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
    return got


def test_final_save_that_fails_finishes_the_row_failed_and_frees_the_lock(db, tmp_path, monkeypatch):
    """In one process, as a pipeline runs its tasks: the run store breaks under a running exclusive runbook."""
    from stackbook.run import engine

    monkeypatch.setenv("STACKBOOK_RUN_STORE", str(tmp_path / "runs"))
    options = engine.RunOptions(progress="off")
    rec = engine.run(nb("breaks_run_store"), options)
    assert rec.status == "failed" and "executed notebook not written" in rec.reason, rec
    assert rec.finished_at is not None and ledger.get_run(db, rec.id).status == "failed"
    assert exclusive_lock_is_free(db, "breaks_run_store")
    Path(rec.output).parent.unlink()  # the file the runbook put in the folder's place
    again = engine.run(nb("breaks_run_store"), engine.RunOptions(cli_params=["break_store=false"], progress="off"))
    assert again.status == "succeeded", again  # not refused: the first run let go of the lock
    assert json.loads(Path(again.output).read_text())["metadata"]["stackbook"]["run"]["status"] == "succeeded"


class _Boom(Exception):
    pass


class FailOnStart:
    """An ``on_start`` that fails after the row was opened (as a pipeline's could); keeps the run id."""

    run_id: str | None = None

    def __call__(self, run_id: str) -> None:
        self.run_id = run_id
        raise _Boom("on_start broke")


def test_an_error_after_the_row_opened_finishes_it_and_frees_the_lock(db, tmp_path, monkeypatch):
    from stackbook.run import engine

    monkeypatch.setenv("STACKBOOK_RUN_STORE", str(tmp_path / "runs"))
    prep = engine.prepare(nb("exclusive"), engine.RunOptions(cli_params=["seconds=0"], progress="off"))
    hook = FailOnStart()
    with pytest.raises(_Boom):
        engine.execute(prep, on_start=hook)
    rec = ledger.get_run(db, hook.run_id)
    assert rec.status == "failed" and "_Boom: on_start broke" in rec.reason and rec.finished_at is not None
    assert rec.error["ename"] == "_Boom"
    assert exclusive_lock_is_free(db, "exclusive")
    assert engine.execute(prep).status == "succeeded"  # a second run of the exclusive runbook is not refused
