"""Resuming a failed run (issue 11 §2): `stackbook resume RUN_ID` and `stackbook run NAME --resume RUN_ID`.

Real kernels, the real ledger, the real snapshots (``stackbook.run.snapshot``). The fixtures under
tests/fixtures/resume/ append one line per cell to a counter file (a parameter), so a test sees which
cells ran, and how often; their last code cell fails until a flag file (a parameter too) exists.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from stackbook.run import ledger, snapshot
from tests.conftest import ROOT, STACKBOOK, run_cli, wait_for

RESUME = ROOT / "tests" / "fixtures" / "resume"
# stored indexes of the counter fixture once failed: 0 banner, 1 title, 2 parameters, 3 injected, 4 setup,
# 5 computed, 6 slept, 7 anchor, 8 the failing cell, 9 last
FAILING_CELL = 8


def _first(tmp_path: Path, fixture: str | Path, *extra: str):
    path = fixture if isinstance(fixture, Path) else RESUME / f"{fixture}.ipynb"
    res = run_cli("run", str(path), "-p", f"counter={tmp_path / 'counter'}", "-p", f"flag={tmp_path / 'flag'}",
                  *extra, "--json")
    assert res.code == 1, res
    return res.json()


def _lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "counter").read_text().splitlines()


def _cells(output: str) -> list[dict]:
    return json.loads(Path(output).read_text())["cells"]


def test_resume_goes_on_with_the_value_computed_before_the_failure_and_runs_completed_cells_once(cli, tmp_path):
    old = _first(tmp_path, "counter")
    assert old["error"]["cell_index"] == FAILING_CELL and "snapshot kept" in old["reason"]
    assert snapshot.load_manifest(old["id"]) is not None
    assert _lines(tmp_path) == ["computed", "slept"]
    refused = cli("resume", old["id"], "--json")
    assert refused.code == 1 and "create the flag file" in refused.err  # still failing: a new failed run
    again = json.loads(refused.out)
    assert again["resumed_from"] == old["id"] and "snapshot kept" in again["reason"]
    (tmp_path / "flag").write_text("0")
    res = cli("resume", again["id"], "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["status"] == "succeeded" and rec["resumed_from"] == again["id"]
    assert _lines(tmp_path) == ["computed", "slept", "used 42", "last"]  # completed cells ran once
    cells = _cells(rec["output"])
    carried = [c["metadata"]["stackbook"]["carried_from"] for c in cells if "carried_from" in
               c["metadata"].get("stackbook", {})]
    assert carried == [old["id"], old["id"]]  # computed and slept: carried from the run that executed them
    assert all(c["metadata"]["papermill"]["status"] == "completed" for c in cells if c["cell_type"] == "code")
    shown = cli("runs", "show", rec["id"], "--json").json()
    assert shown["resumed_from"] == again["id"]
    assert snapshot.load_manifest(again["id"]) is None  # removed once the resumed run succeeded


def test_resume_refuses_what_it_cannot_continue(cli, tmp_path):
    old = _first(tmp_path, "counter")
    res = cli("resume", old["id"], "-p", "sleep_s=1")
    assert res.code == 2  # click: no such option on resume
    res = cli("run", str(RESUME / "counter.ipynb"), "--resume", old["id"], "-p", "sleep_s=1", "--json")
    assert res.code == 2 and "keeps the parameters" in res.json()["error"], res
    res = cli("run", str(RESUME / "kills.ipynb"), "--resume", old["id"])
    assert res.code == 2 and "is a run of 'counter'" in res.err, res
    (tmp_path / "flag").write_text("0")
    done = cli("run", str(RESUME / "counter.ipynb"), "--resume", old["id"], "--json")  # `run --resume` resumes too
    assert done.code == 0 and done.json()["resumed_from"] == old["id"], done
    res = cli("resume", done.json()["id"])
    assert res.code == 2 and "is succeeded" in res.err and "nothing was executed" in res.err, res
    assert _lines(tmp_path).count("computed") == 1


def test_a_changed_runbook_is_refused_unless_allowed(cli, tmp_path):
    runbook = tmp_path / "changed.ipynb"
    shutil.copy(RESUME / "kills.ipynb", runbook)
    old = _first(tmp_path, runbook)
    doc = json.loads(runbook.read_text())
    doc["cells"][-1]["source"] = ["note(f'changed {base}')"]
    runbook.write_text(json.dumps(doc))
    (tmp_path / "flag").touch()
    res = cli("resume", old["id"], "--from-cell", "7")
    assert res.code == 2 and "changed since run" in res.err and "--allow-changed" in res.err, res
    assert old["id"] in res.err and "then," in res.err  # names the run and both (short) hashes
    res = cli("resume", old["id"], "--from-cell", "7", "--allow-changed", "--json")
    assert res.code == 0, res
    assert _lines(tmp_path) == ["computed", "survived", "changed 40"]


def test_a_dead_kernel_leaves_no_snapshot_and_from_cell_goes_on(cli, tmp_path):
    old = _first(tmp_path, "kills")
    assert old["error"]["ename"] == "DeadKernelError" and "no snapshot" in old["reason"]
    res = cli("resume", old["id"], "--json")
    assert res.code == 2, res
    err = res.json()["error"]
    assert "no snapshot" in err and "--from-cell N" in err and f"stackbook runs show {old['id']}" in err
    assert "nothing was executed" in err
    res = cli("resume", old["id"], "--from-cell", "6")  # papermill's anchor, not a cell of the runbook
    assert res.code == 2 and "no such cell" in res.err, res
    (tmp_path / "flag").touch()
    res = cli("resume", old["id"], "--from-cell", str(old["error"]["cell_index"]), "--json")
    assert res.code == 0, res
    assert res.json()["resumed_from"] == old["id"]
    assert _lines(tmp_path) == ["computed", "survived", "base 40"]  # setup cells made `base` again


def test_ctrl_c_during_a_resumed_run_cancels_it_with_a_snapshot_again(db, tmp_path):
    old = _first(tmp_path, "counter")
    (tmp_path / "flag").write_text("120")  # the failing cell now passes, then sleeps
    proc = subprocess.Popen([STACKBOOK, "resume", old["id"], "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        def running():
            row = db.execute("select id, kernel_pid from stackbook.runs where resumed_from = %s "
                             "and status = 'running'", (old["id"],)).fetchone()
            return row if row and row[1] else None

        run_id, _ = wait_for(running)
        time.sleep(3.0)  # the snapshot restored, the setup cells run: in the sleeping cell now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    rec = ledger.get_run(db, run_id)
    assert rec.status == "cancelled" and "snapshot kept" in rec.reason, rec
    manifest = snapshot.load_manifest(run_id)
    assert manifest is not None and "value" in manifest.saved
    snapshot.remove(run_id)
    snapshot.remove(old["id"])


def test_a_cell_timeout_keeps_a_snapshot_and_the_resume_goes_on(cli, tmp_path):
    (tmp_path / "flag").write_text("120")  # the last cells pass the check, then sleep past --cell-timeout
    old = _first(tmp_path, "counter", "--cell-timeout", "3")
    assert old["status"] == "timed_out" and "snapshot kept" in old["reason"], old  # the busy kernel interrupted
    (tmp_path / "flag").write_text("0")
    res = cli("resume", old["id"], "--json")
    assert res.code == 0, res
    assert _lines(tmp_path) == ["computed", "slept", "used 42", "last"]
