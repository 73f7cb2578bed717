"""Steps a person must confirm (issue 11 §4): a cell tagged `manual` ends a headless run `waiting`;
`stackbook attest` records who confirmed it and continues the same run; `stackbook runs cancel` ends it.

The fixture (tests/fixtures/resume/manual.ipynb, exclusive) computes a value, stops at a markdown cell
tagged `manual`, then uses the value: the continued run has the kernel's state back from the snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackbook.run import ledger, snapshot
from tests.conftest import ROOT

MANUAL = str(ROOT / "tests" / "fixtures" / "resume" / "manual.ipynb")
INSTRUCTION = "Switch DNS to the standby, then confirm."
MANUAL_CELL = 5  # 0 title, 1 parameters, 2 injected, 3 setup, 4 before, 5 the manual step, 6 after


@pytest.fixture(autouse=True)
def _no_waiting_manual_runs(cli, db):
    """A test that failed half-way leaves its run waiting, and a waiting exclusive runbook blocks the next test:
    every waiting run of the fixture is cancelled before and after each test."""
    def cancel_all():
        ids = [r[0] for r in db.execute("select id from stackbook.runs where runbook = 'manual' and status = 'waiting'")]
        for run_id in ids:
            assert cli("runs", "cancel", run_id).code == 0
    cancel_all()
    yield
    cancel_all()


def _waiting(cli, tmp_path: Path, env: str) -> dict:
    res = cli("run", MANUAL, "-e", env, "-p", f"counter={tmp_path / 'counter'}", "--json")
    assert res.code == 4, res  # waiting: not failed, not done (exit 4), and stderr says how to go on
    rec = res.json()
    assert "stackbook attest" in res.err and rec["id"] in res.err
    return rec


def _chain_entry(db, kind: str, ref: str) -> dict | None:
    row = db.execute("select entry from stackbook.chain where kind = %s and ref = %s order by seq desc limit 1",
                     (kind, ref)).fetchone()
    return row[0] if row else None


def test_a_manual_step_waits_blocks_the_runbook_and_attest_continues_the_run(cli, db, tmp_path):
    rec = _waiting(cli, tmp_path, "dev")
    assert rec["status"] == "waiting"
    assert rec["waiting"] == {"cell_index": MANUAL_CELL, "instruction": INSTRUCTION}
    assert snapshot.load_manifest(rec["id"]) is not None
    listed = cli("runs", "--status", "waiting", "--json").json()
    assert rec["id"] in [r["id"] for r in listed]
    blocked = cli("run", MANUAL, "-p", f"counter={tmp_path / 'other'}")  # exclusive: the waiting run holds it
    assert blocked.code == 3 and rec["id"] in blocked.err and "stackbook attest" in blocked.err, blocked
    assert not (tmp_path / "other").exists()

    res = cli("attest", rec["id"], "--by", "alice", "--note", "DNS switched at 12:00", "--json")
    assert res.code == 0, res
    done = res.json()
    assert done["id"] == rec["id"] and done["status"] == "succeeded" and done["waiting"] is None
    assert (tmp_path / "counter").read_text().splitlines() == ["before", "after 7"]  # the state came back
    attestation = done["attestation"]
    row = db.execute("select run_id, cell_index, instruction, attested_by, note from stackbook.attestations "
                     "where id = %s", (attestation["id"],)).fetchone()
    assert row == (rec["id"], MANUAL_CELL, INSTRUCTION, "alice", "DNS switched at 12:00")
    entry = _chain_entry(db, "attestation", attestation["id"])
    assert entry is not None and entry["run_id"] == rec["id"] and entry["attested_by"] == "alice"
    assert _chain_entry(db, "run", rec["id"])["status"] == "succeeded"  # the run's latest entry: its final state
    cells = json.loads(Path(done["output"]).read_text())["cells"]
    assert cells[MANUAL_CELL]["metadata"]["stackbook"]["attestation"]["attested_by"] == "alice"

    again = cli("attest", rec["id"], "--by", "bob")
    assert again.code == 2 and "not waiting" in again.err, again
    assert db.execute("select count(*) from stackbook.attestations where run_id = %s",
                      (rec["id"],)).fetchone()[0] == 1
    assert snapshot.load_manifest(rec["id"]) is None  # the run succeeded: its snapshot is gone


def test_runs_cancel_ends_a_waiting_run_and_refuses_others(cli, db, tmp_path):
    rec = _waiting(cli, tmp_path, "staging")
    res = cli("runs", "cancel", rec["id"], "--json")
    assert res.code == 0, res
    assert res.json()["status"] == "cancelled"
    assert ledger.get_run(db, rec["id"]).status == "cancelled"
    assert _chain_entry(db, "run", rec["id"])["status"] == "cancelled"
    again = cli("runs", "cancel", rec["id"])
    assert again.code == 2 and "not waiting" in again.err, again
    attest = cli("attest", rec["id"], "--by", "alice")
    assert attest.code == 2 and "cancelled" in attest.err, attest
    assert (tmp_path / "counter").read_text().splitlines() == ["before"]
    free = cli("run", MANUAL, "-e", "staging", "-p", f"counter={tmp_path / 'next'}", "--json")
    assert free.code == 4 and free.json()["status"] == "waiting", free  # no longer blocked
    cli("runs", "cancel", free.json()["id"])
    snapshot.remove(rec["id"])
    snapshot.remove(free.json()["id"])
