"""No outcome lost: a run outlives a database restart, the spool keeps what a vanished database could not take,
and the server log keeps no secret.

Real PostgreSQL throughout. The restarts happen to a SECOND cluster started for this module (``stackbook up``
with a home of its own), never to the shared one: the runner under test reaches it through DATABASE_URL while
``stackbook down`` and ``stackbook up`` stop and start it under a long cell.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psycopg
import pytest

from stackbook.run import db as db_mod
from stackbook.run import ledger, pgcluster, spool
from tests.conftest import ROOT, STACKBOOK, nb, run_cli, wait_for

SHARED_BY_CLUSTER = 0o710 if os.geteuid() == 0 else 0o700  # as root, the cluster's OS user traverses the home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Cluster:
    """The second cluster: its home, the environment that addresses it for `stackbook up/down`, its URL."""

    home: Path
    env: dict[str, str]
    url: str

    def up(self) -> None:
        res = run_cli("up", env=self.env)
        assert res.code == 0, res

    def down(self) -> None:
        res = run_cli("down", env=self.env)
        assert res.code == 0 and "stopped" in res.out, res

    def query(self, sql: str, args: tuple = ()) -> list[tuple] | None:
        """Rows of SQL on a fresh connection; None while the cluster is down (or the ledger not made yet)."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
                return conn.execute(sql, args).fetchall()
        except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
            return None


@pytest.fixture(scope="module")
def second_cluster(database_url):
    # a home the cluster's unprivileged OS user can reach (pytest's tmp dirs and the state folder are 0700)
    base = Path(tempfile.mkdtemp(prefix="stackbook-resilience-"))
    base.chmod(0o755)
    env = {"STACKBOOK_HOME": str(base / "home"), "DATABASE_URL": ""}
    up = run_cli("up", "--json", env=env)
    assert up.code == 0, up
    yield Cluster(base / "home", env, up.json()["database_url"])
    run_cli("down", env=env)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def runner_env(second_cluster):
    """What a runner against the second cluster gets: its URL, a state folder of its own, quick heartbeats.
    The folder has a short path: the kernel's ipc sockets live under it (at most 107 bytes a path)."""
    state = Path(tempfile.mkdtemp(prefix="sb-state-"))
    yield {"DATABASE_URL": second_cluster.url, "STACKBOOK_STATE_DIR": str(state), "STACKBOOK_HEARTBEAT_INTERVAL": "0.5"}
    shutil.rmtree(state, ignore_errors=True)


def start_run(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([STACKBOOK, "run", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kernel_running(cluster: Cluster, proc: subprocess.Popen, runbook: str, besides: tuple[str, ...]):
    assert proc.poll() is None, f"the runner exited {proc.returncode}: {proc.communicate()}"
    return cluster.query("select id, kernel_pid from stackbook.runs where runbook = %s and status = 'running' "
                         "and kernel_pid is not null and id <> all(%s) order by started_at", (runbook, list(besides)))


def in_long_cell(cluster: Cluster, proc: subprocess.Popen, runbook: str, besides: tuple[str, ...] = ()):
    """(run id, kernel pid) of RUNBOOK's running row (not one of BESIDES) once its kernel runs."""
    rows = wait_for(partial(_kernel_running, cluster, proc, runbook, besides))
    time.sleep(1.0)  # the first cells are quick: now the sleeping one runs
    return rows[0]


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def notebook_status(output: str) -> str:
    return json.loads(Path(output).read_text())["metadata"]["stackbook"]["run"]["status"]


def spooled(state: Path) -> list[Path]:
    return sorted((state / "spool").rglob("*.json")) if (state / "spool").exists() else []


# ------------------------------------------------------------------ a restart under a long cell


def test_a_database_restart_under_a_long_cell_loses_nothing_and_keeps_the_lock(second_cluster, runner_env):
    cluster = second_cluster
    proc = start_run(runner_env, nb("exclusive"), "-p", "seconds=15", "--json")
    run_id, _ = in_long_cell(cluster, proc, "exclusive")
    cluster.down()
    time.sleep(2.0)  # heartbeats find the database gone
    cluster.up()
    # the runner reconnects and takes its exclusive lock again: a second run is refused while the first runs
    wait_for(lambda: cluster.query("select 1 from pg_locks where locktype = 'advisory' and granted"))
    second = run_cli("run", nb("exclusive"), "-p", "seconds=0", env=runner_env)
    code, out, err = finish(proc)
    assert second.code == 3 and run_id in second.err, second
    assert code == 0, err
    assert "connection is closed" not in err and "Traceback" not in err
    doc = json.loads(out)
    assert doc["id"] == run_id and doc["status"] == "succeeded"
    [(status, reason, beat_after_start)] = cluster.query(
        "select status, reason, heartbeat_at > started_at from stackbook.runs where id = %s", (run_id,))
    assert (status, beat_after_start) == ("succeeded", True) and reason is None  # the lock was never lost
    assert notebook_status(doc["output"]) == "succeeded"  # the ledger agrees with the executed notebook
    assert spooled(Path(runner_env["STACKBOOK_STATE_DIR"])) == []


def test_a_lock_another_run_took_while_the_database_was_away_is_recorded(second_cluster, runner_env):
    """The lock dies with the server; a run that takes it before the first reconnects is named in its row."""
    cluster = second_cluster
    slow_beats = {**runner_env, "STACKBOOK_HEARTBEAT_INTERVAL": "60"}  # no reconnection before the final record
    first = start_run(slow_beats, nb("exclusive"), "-p", "seconds=12", "--json")
    first_id, _ = in_long_cell(cluster, first, "exclusive")
    cluster.down()
    cluster.up()
    other = start_run(runner_env, nb("exclusive"), "-p", "seconds=30")
    try:
        other_id, _ = in_long_cell(cluster, other, "exclusive", besides=(first_id,))
        code, out, err = finish(first)
    finally:
        other.terminate()
        finish(other)
    assert code == 0, err
    [(status, reason)] = cluster.query("select status, reason from stackbook.runs where id = %s", (first_id,))
    assert status == "succeeded", reason
    assert "exclusive lock was lost while the database was away" in reason and other_id in reason
    assert json.loads(out)["reason"] == reason


# ------------------------------------------------------------------ a database that stays away: the spool


def test_a_database_that_stays_away_spools_the_record_and_the_next_command_writes_it(second_cluster, runner_env):
    cluster = second_cluster
    state = Path(runner_env["STACKBOOK_STATE_DIR"])
    env = {**runner_env, "STACKBOOK_DB_RETRY_S": "2"}
    proc = start_run(env, nb("sleeps"), "-p", "seconds=6", "--json")
    try:
        run_id, _ = in_long_cell(cluster, proc, "sleeps")
        cluster.down()
        code, out, err = finish(proc)
    finally:
        cluster.up()
    assert code == 0, err  # the notebook's outcome, not the database's
    assert "unreachable" in err and "kept in" in err and "Traceback" not in err
    doc = json.loads(out)
    assert doc["id"] == run_id and doc["status"] == "succeeded" and notebook_status(doc["output"]) == "succeeded"
    [kept] = spooled(state)
    assert kept.name == f"{run_id}.json" and mode(kept) == 0o600
    assert mode(kept.parent) == mode(kept.parent.parent) == 0o700
    assert mode(Path(doc["output"])) == 0o600 and mode(Path(doc["output"]).parent) == 0o700
    record = json.loads(kept.read_text())["record"]
    assert record["status"] == "succeeded" and record["finished_at"] and record["kernel_pid"]
    assert cluster.query("select status from stackbook.runs where id = %s", (run_id,)) == [("running",)]

    # the next command that reaches the database writes it, before the reaper could call it stale
    runs = run_cli("runs", "--json", env=runner_env)
    assert runs.code == 0, runs
    assert {r["id"]: r["status"] for r in runs.json()}[run_id] == "succeeded"
    assert f"run {run_id}" in runs.err and "from the spool" in runs.err
    assert spooled(state) == []
    [(status, finished, took)] = cluster.query(
        "select status, finished_at, duration_s from stackbook.runs where id = %s", (run_id,))
    assert status == "succeeded" and finished == datetime.fromisoformat(record["finished_at"])
    assert took == record["duration_s"]
    again = run_cli("runs", "--json", env=runner_env)
    assert again.code == 0 and "spool" not in again.err


# ------------------------------------------------------------------ the spool, applied to the shared ledger


def _spool_record(conn, runbook: str, status: str = "running") -> ledger.RunRecord:
    rid = ledger.new_run_id()
    ledger.start_run(conn, run_id=rid, runbook=runbook, path=None, env="dev", params={"n": 1}, output="x.ipynb",
                     git_commit=None)
    if status != "running":
        conn.execute("update stackbook.runs set status = %s, error = %s where id = %s",
                     (status, json.dumps({"ename": "StaleRun"}) if status == "failed" else None, rid))
    return ledger.get_run(conn, rid)


def test_spooled_records_are_applied_once_scrubbed_and_never_over_a_finished_row(database_url):
    runbook = f"spooled_{secrets.token_hex(4)}"
    secret = "sp-" + secrets.token_hex(12)
    now = datetime.now(UTC)
    with ledger.session() as conn:
        target = db_mod.target_of(conn)
        running = _spool_record(conn, runbook)
        reaped = _spool_record(conn, runbook, "failed")  # a reaper that came first: failed, StaleRun
        cancelled = _spool_record(conn, runbook, "cancelled")  # finished some other way: left alone
    missing = replace(running, id=ledger.new_run_id())  # a row the database never got
    for rec in (running, reaped, cancelled, missing):
        final = replace(rec, status="succeeded", results={"token": secret, "rows": 3}, finished_at=now,
                        duration_s=1.5)
        path = spool.keep(final, target, redact=lambda text: text.replace(secret, "[secret:TOKEN]"))
        assert secret not in path.read_text() and mode(path) == 0o600
    broken = spool.folder(target) / "broken.json"
    broken.write_text("{ not json")
    try:
        with ledger.session() as conn:
            rows = {r.id: r for r in ledger.list_runs(conn, runbook=runbook, limit=None)}
        assert {rid: rows[rid].status for rid in (running.id, reaped.id, cancelled.id, missing.id)} == {
            running.id: "succeeded", reaped.id: "succeeded", cancelled.id: "cancelled", missing.id: "succeeded"}
        assert rows[running.id].results == {"token": "[secret:TOKEN]", "rows": 3}
        assert rows[running.id].finished_at == now and rows[running.id].duration_s == 1.5
        assert not any(p.name.startswith(tuple(rows)) for p in spool.pending(target))
        assert (spool.folder(target) / "broken.unreadable").exists()
    finally:
        (spool.folder(target) / "broken.unreadable").unlink(missing_ok=True)
        broken.unlink(missing_ok=True)
        with ledger.session(reap_stale=False) as conn:
            conn.execute("delete from stackbook.runs where runbook = %s", (runbook,))


def test_a_spooled_waiting_or_interactive_record_keeps_its_step_and_its_cells(database_url):
    """The jsonb columns of schema 3 come back from the spool: a run that ended `waiting` while the database was
    away keeps the step it waits at; a lab session's record (a row the database never got) keeps its cells."""
    runbook = f"spooled_{secrets.token_hex(4)}"
    step = {"cell_index": 5, "instruction": "Switch DNS to the standby, then confirm."}
    cells = [{"index": 3, "ok": True, "sha256": "ab" * 32}]
    with ledger.session() as conn:
        target = db_mod.target_of(conn)
        running = _spool_record(conn, runbook)
    waiting = replace(running, status="waiting", waiting=step, finished_at=datetime.now(UTC), duration_s=1.0)
    session = replace(running, id=ledger.new_run_id(), kind="interactive", status="succeeded", cells=cells,
                      finished_at=datetime.now(UTC), duration_s=2.0)
    for rec in (waiting, session):
        spool.keep(rec, target, redact=str)
    try:
        with ledger.session() as conn:
            rows = {r.id: r for r in ledger.list_runs(conn, runbook=runbook, limit=None)}
        assert rows[waiting.id].status == "waiting" and rows[waiting.id].waiting == step
        assert rows[session.id].kind == "interactive" and rows[session.id].cells == cells
        assert not any(p.name.startswith(tuple(rows)) for p in spool.pending(target))
    finally:
        with ledger.session(reap_stale=False) as conn:
            conn.execute("delete from stackbook.runs where runbook = %s", (runbook,))


def test_a_bad_retry_budget_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv(db_mod.RETRY_ENV, "soon")
    with pytest.raises(db_mod.DatabaseUnavailable, match="STACKBOOK_DB_RETRY_S='soon' is not a number of seconds"):
        db_mod.retry_budget_s()


# ------------------------------------------------------------------ the server log and the state folder


def _log_from(log: Path, offset: int, marker: str) -> str | None:
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", errors="replace")
    return text if f"application_name={marker}" in text else None


def _log_after(log: Path, offset: int, marker: str) -> str:
    """The server log from OFFSET on, once a connection named MARKER is in it."""
    return wait_for(partial(_log_from, log, offset, marker), timeout=20)


def test_a_failing_statement_leaves_nothing_of_its_secret_in_the_server_log(database_url, db):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL names another server: its log is where it runs")
    log = pgcluster.log_path(pgcluster.load_info())
    offset = log.stat().st_size
    secret = "pw-" + secrets.token_hex(12)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        db.execute("select %s::int", (secret,))  # ERROR: invalid input syntax for type integer: "<secret>"
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        db.execute(f"select '{secret}'::int")  # the statement's text holds it too
    marker = "logcheck" + secrets.token_hex(4)
    with psycopg.connect(database_url, application_name=marker):
        pass
    text = _log_after(log, offset, marker)
    assert secret not in text and "ERROR" not in text and "STATEMENT" not in text
    assert "connection authorized" in text  # connection logging stays
    assert mode(log) == 0o600
    settings = dict(db.execute("select name, setting from pg_settings where name = any(%s)",
                               (list(pgcluster.LOG_SETTINGS),)).fetchall())
    assert settings == pgcluster.LOG_SETTINGS


def test_up_brings_an_existing_cluster_to_the_log_settings_and_owner_only_modes(second_cluster):
    cluster = second_cluster
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("alter system set log_min_messages = 'warning'")
        conn.execute("alter system set log_min_error_statement = 'error'")
        conn.execute("select pg_reload_conf()")
    wait_for(lambda: cluster.query("show log_min_messages") == [("warning",)], timeout=10)
    planted = cluster.home / "left" / "behind.txt"  # what an older version left readable
    planted.parent.mkdir(mode=0o755)
    planted.write_text("x")
    planted.chmod(0o644)
    cluster.up()  # already running: the settings are applied with ALTER SYSTEM and a reload
    wait_for(lambda: cluster.query("show log_min_messages") == [("log",)], timeout=10)
    assert cluster.query("show log_min_error_statement") == [("panic",)]
    assert mode(planted) == 0o600 and mode(planted.parent) == 0o700
    assert mode(cluster.home) == mode(cluster.home / "pg") == SHARED_BY_CLUSTER
    assert mode(cluster.home / "pg" / "postgres.log") == mode(cluster.home / "pg" / "cluster.json") == 0o600


def test_the_state_folder_and_what_is_written_there_are_the_owners_alone(database_url, tmp_path, monkeypatch):
    from stackbook.core import project
    from stackbook.core.files import atomic_write_text

    assert mode(project.state_dir()) == 0o700  # the test session's, tightened by `stackbook up`
    monkeypatch.setenv("STACKBOOK_STATE_DIR", str(tmp_path / "fresh-state"))
    state = project.state_dir()
    written = atomic_write_text(state / "a" / "b" / "c.json", "{}")
    assert mode(state) == mode(written.parent) == mode(written.parent.parent) == 0o700
    assert mode(written) == 0o600
    public = atomic_write_text(tmp_path / "published" / "metrics.prom", "x 1\n", mode=0o644)  # for node_exporter
    assert mode(public) == 0o644 and mode(public.parent) == 0o755


def _sec003(tmp_path: Path, known: str, logs: list[Path]):
    from stackbook.audit import secrets_scan

    ctx = secrets_scan.context("dev", root=tmp_path, run_store=str(tmp_path / "runs"), known={"API_TOKEN": known},
                               logs=logs)
    return secrets_scan.check_all(ctx, ["SEC-003"])


def test_the_audit_scans_the_server_log_for_secrets(tmp_path):
    from stackbook.audit import secrets_scan

    known = "kn-" + secrets.token_hex(12)
    clean = tmp_path / "postgres.log"
    clean.write_text("2026-01-01 LOG:  connection authorized: user=stackbook database=stackbook\n" * 3)
    leaky = tmp_path / "old.log"
    leaky.write_text("LOG:  connection received\n" * 2 + f'ERROR:  invalid input syntax for type integer: "{known}"\n')

    [ok] = _sec003(tmp_path, known, [clean])
    assert ok.status == "pass" and "1 server log files scanned" in ok.evidence
    [bad] = _sec003(tmp_path, known, [clean, leaky])
    assert bad.status == "fail" and bad.resource == "pg/old.log:3" and "API_TOKEN" in bad.evidence
    assert known not in bad.evidence and known not in bad.resource
    live = secrets_scan.server_logs()
    if not os.environ.get("DATABASE_URL"):
        assert live == [pgcluster.log_path(pgcluster.load_info())]
        [shared] = secrets_scan.check_all(secrets_scan.context("dev"), ["SEC-003"])
        assert shared.status == "pass", shared
