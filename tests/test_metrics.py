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
def scratch_env(db):
    """An environment name no one else uses: the rows a test writes there are its own, removed afterwards."""
    from stackbook.run import ledger

    ledger.ensure_schema(db)
    env = f"t_metrics_{uuid.uuid4().hex[:10]}"
    yield env
    db.execute("delete from stackbook.runs where env = %s", (env,))


@pytest.fixture()
def known_runs(db, scratch_env):
    """Three finished runs and one skipped row of a catalogue runbook in the scratch environment."""
    from stackbook.run import ledger

    name = "platform_check"
    for status in ("succeeded", "failed", "succeeded"):
        rid = ledger.new_run_id() + uuid.uuid4().hex[:4]
        ledger.start_run(db, run_id=rid, runbook=name, path=None, env=scratch_env, params={}, output="x",
                         git_commit=None)
        time.sleep(0.05)
        ledger.finish_run(db, rid, status=status, results={}, error=None, reason=None)
    rid = ledger.new_run_id() + uuid.uuid4().hex[:4]
    ledger.insert_final(db, run_id=rid, runbook=name, env=scratch_env, status="skipped", reason="up to date")
    return name, scratch_env


def samples(text: str, runbook: str, env: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("runbook") == runbook and s.labels.get("env") == env:
                out[(s.name, s.labels.get("status"))] = s.value
    return out


def check(text: str, runbook: str, env: str) -> None:
    got = samples(text, runbook, env)
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
    check(text, *known_runs)
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary file left behind
    name, env = known_runs
    stdout = cli("metrics", "-e", env)
    assert stdout.code == 0 and f'env="{env}"' in stdout.out
    check(stdout.out, name, env)
    assert env not in cli("metrics", "-e", "prod").out


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
        check(text, *known_runs)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None


def test_series_are_bounded_by_the_catalogue_not_by_the_ledger(cli, db, scratch_env):
    """5,000 runbook names the catalogue does not know make one (other) bucket, not 20,000 series."""
    from stackbook.run import metrics

    n = 5000
    with db.cursor().copy("copy stackbook.runs (id, runbook, env, status, host, started_at, finished_at, duration_s) "
                          "from stdin") as copy:
        for i in range(n):
            copy.write_row((f"{scratch_env}-{i}", f"gone_{uuid.uuid4().hex[:12]}", scratch_env,
                            "failed" if i % 10 == 0 else "succeeded", "bench", "2026-01-01 00:00:00+00",
                            "2026-01-01 00:00:01+00", 1.0))
    db.execute("""insert into stackbook.runs (id, runbook, env, status, host, started_at, finished_at, duration_s)
                  values (%s, 'platform_check', %s, 'succeeded', 'bench', now(), now(), 2.0)""",
               (f"{scratch_env}-known", scratch_env))
    res = cli("metrics", "-e", scratch_env)
    assert res.code == 0, res
    series = [(s.name, s.labels) for f in text_string_to_metric_families(res.out) for s in f.samples]
    labels = {s[1]["runbook"] for s in series}
    assert labels == {metrics.OTHER, "platform_check"}, sorted(labels)[:5]
    assert len(series) <= 2 * 5 + 2, series  # per label: 2 states, last duration, last end, last success
    other = samples(res.out, metrics.OTHER, scratch_env)
    assert other[("stackbook_runs_total", "succeeded")] == n - n // 10
    assert other[("stackbook_runs_total", "failed")] == n // 10
    assert samples(res.out, "platform_check", scratch_env)[("stackbook_runs_total", "succeeded")] == 1
    assert len(res.out) < 5000
