"""`stackbook metrics`: Prometheus text from the real ledger, to a file and over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, STACKBOOK


@pytest.fixture()
def known_runs(db):
    """Three finished runs and one skipped row of a runbook name no one else uses; removed afterwards."""
    from stackbook.run import ledger

    ledger.ensure_schema(db)
    name = f"metrics_{uuid.uuid4().hex[:8]}"
    ids = []
    for status in ("succeeded", "failed", "succeeded"):
        rid = ledger.new_run_id() + uuid.uuid4().hex[:4]
        ledger.start_run(db, run_id=rid, runbook=name, path=None, env="dev", params={}, output="x", git_commit=None)
        time.sleep(0.05)
        ledger.finish_run(db, rid, status=status, results={}, error=None, reason=None)
        ids.append(rid)
    rid = ledger.new_run_id() + uuid.uuid4().hex[:4]
    ledger.insert_final(db, run_id=rid, runbook=name, env="dev", status="skipped", reason="up to date")
    ids.append(rid)
    yield name
    db.execute("delete from stackbook.runs where id = any(%s)", (ids,))


def samples(text: str, runbook: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("runbook") == runbook:
                out[(s.name, s.labels.get("status"))] = s.value
    return out


def check(text: str, runbook: str) -> None:
    got = samples(text, runbook)
    assert got[("stackbook_runs_total", "succeeded")] == 2
    assert got[("stackbook_runs_total", "failed")] == 1
    assert got[("stackbook_runs_total", "skipped")] == 1
    assert got[("stackbook_last_run_duration_seconds", "succeeded")] > 0  # the latest finished run succeeded
    assert abs(got[("stackbook_last_success_timestamp_seconds", None)] - time.time()) < 120
    assert abs(got[("stackbook_last_run_timestamp_seconds", None)] - time.time()) < 120


def test_metrics_file_for_the_textfile_collector(cli, known_runs, tmp_path):
    out = tmp_path / "textfile" / "stackbook.prom"
    res = cli("metrics", "--out", str(out))
    assert res.code == 0, res
    text = out.read_text()
    assert "# TYPE stackbook_runs_total counter" in text
    assert "# TYPE stackbook_last_success_timestamp_seconds gauge" in text
    check(text, known_runs)
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary file left behind
    stdout = cli("metrics", "-e", "dev")
    assert stdout.code == 0 and known_runs in stdout.out
    assert known_runs not in cli("metrics", "-e", "prod").out


def test_metrics_served_on_localhost(database_url, known_runs):
    env = {**os.environ}
    proc = subprocess.Popen([STACKBOOK, "metrics", "--serve", "0", "--host", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready, "the metrics server did not start within 30 s"
        line = proc.stderr.readline()
        assert "serving metrics on http://127.0.0.1:" in line, line
        url = line.split("serving metrics on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (127.0.0.1 only)
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        check(text, known_runs)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
