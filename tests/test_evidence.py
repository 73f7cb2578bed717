"""The evidence of runs (operator, hashes), the hash chain and ``stackbook verify``, on real runs.

Each test gets a database of its own in the project-local cluster (``STACKBOOK_DATABASE`` for the CLI
it starts), so that tampering with one chain never reaches another test's ledger; it is dropped after.
Runs are real ``stackbook run`` processes of the trivial benchmark notebook, in a real kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as pysecrets
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from stackbook.core import notebooks, project
from tests.conftest import ROOT, STACKBOOK

TRIVIAL = str(ROOT / "benchmarks" / "fixtures" / "trivial.ipynb")


class Ledger:
    """A scratch database: its connection, and the environment of CLI processes that use it."""

    def __init__(self, database_url: str):
        self.name = f"stackbook_ev_{uuid.uuid4().hex[:8]}"
        self.admin_url = database_url
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'create database "{self.name}"')
        self.url = psycopg.conninfo.make_conninfo(database_url, dbname=self.name)
        self.env = {**os.environ, "STACKBOOK_DATABASE": self.name}
        self.env.pop("DATABASE_URL", None)
        self.conn = psycopg.connect(self.url, autocommit=True)

    def stackbook(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([STACKBOOK, *args], cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                              timeout=300)

    def run(self, x: int = 2, env: dict | None = None) -> dict:
        done = self.stackbook("run", TRIVIAL, "-p", f"x={x}", "--json", env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def verify(self, *args: str) -> subprocess.CompletedProcess:
        return self.stackbook("verify", *args)

    def superuser_sql(self, sql: str, args: tuple = ()) -> None:
        """SQL as the superuser would run it to hide something: the append-only trigger disabled around it."""
        with self.conn.transaction():
            self.conn.execute("alter table stackbook.chain disable trigger chain_append_only")
            self.conn.execute(sql, args)
            self.conn.execute("alter table stackbook.chain enable trigger chain_append_only")

    def close(self) -> None:
        self.conn.close()
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{self.name}" with (force)')


@pytest.fixture()
def ledger_db(database_url):
    scratch = Ledger(database_url)
    yield scratch
    scratch.close()


def test_a_run_records_its_evidence_and_the_untouched_ledger_verifies(ledger_db):
    first, second = ledger_db.run(2), ledger_db.run(3)
    stored = Path(second["output"]).read_bytes()
    assert second["notebook_sha256"] == hashlib.sha256(stored).hexdigest()
    assert second["code_sha256"] == notebooks.code_sha256(json.loads(Path(TRIVIAL).read_text()))
    assert second["params_sha256"] == hashlib.sha256(b'{"x":3}').hexdigest()
    env_file = project.environments_dir() / "dev.yml"
    assert second["env_file_sha256"] == hashlib.sha256(env_file.read_bytes()).hexdigest()
    assert second["operator"] and second["operator_verified"] is False
    assert second["git_dirty"] in (True, False) and second["git_commit"]
    assert first["code_sha256"] == second["code_sha256"] and first["params_sha256"] != second["params_sha256"]

    done = ledger_db.verify()
    assert done.returncode == 0, done.stderr
    head = ledger_db.conn.execute("select hash from stackbook.chain where seq = 2").fetchone()[0]
    assert f"chain intact: 2 entries, head {head}" in done.stdout
    doc = json.loads(ledger_db.verify("--json", "--head", head).stdout)
    assert doc["ok"] and doc["entries"] == 2 and doc["notebooks_checked"] == 2 and doc["problems"] == []
    later = json.loads(ledger_db.verify("--json", "--since", "2999-01-01").stdout)
    assert later["ok"] and later["entries"] == 2 and later["runs_checked"] == 0  # the chain is still walked whole


def test_the_operator_is_declared_by_stackbook_operator_or_the_airflow_dag_run(ledger_db):
    declared = ledger_db.run(env={**ledger_db.env, "STACKBOOK_OPERATOR": "alice"})
    assert (declared["operator"], declared["operator_verified"]) == ("alice", False)
    airflow = ledger_db.run(env={**ledger_db.env, "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-12-01T00:00:00"})
    assert airflow["operator"] == "airflow:scheduled__2026-12-01T00:00:00"


def test_the_chain_refuses_update_and_delete(ledger_db):
    ledger_db.run()
    for sql in ("update stackbook.chain set kind = 'x'", "delete from stackbook.chain", "truncate stackbook.chain"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            ledger_db.conn.execute(sql)
    assert ledger_db.conn.execute("select count(*) from stackbook.chain").fetchone()[0] == 1


def test_a_status_edited_with_sql_is_named(ledger_db):
    run = ledger_db.run()
    ledger_db.conn.execute("update stackbook.runs set status = 'failed' where id = %s", (run["id"],))
    done = ledger_db.verify()
    assert done.returncode == 1
    assert f"entry 1 (run {run['id']}): field status edited: the ledger row says 'failed', the chain " \
           "'succeeded'" in done.stderr
    assert "chain BROKEN" in done.stdout


def test_results_edited_with_sql_and_the_entry_rewritten_by_a_superuser_are_named(ledger_db):
    run = ledger_db.run()
    ledger_db.run()
    ledger_db.conn.execute("""update stackbook.runs set results = '{"rows": 1}' where id = %s""", (run["id"],))
    ledger_db.superuser_sql("update stackbook.chain set entry = jsonb_set(entry, '{results}', '{\"rows\": 1}') "
                            "where ref = %s", (run["id"],))
    done = ledger_db.verify()
    assert done.returncode == 1
    assert f"entry 1 (run {run['id']}): its hash does not match its contents: the entry was edited" in done.stderr


def test_an_entry_deleted_in_the_middle_is_named(ledger_db):
    runs = [ledger_db.run(x) for x in (1, 2, 3)]
    ledger_db.superuser_sql("delete from stackbook.chain where seq = 2")
    done = ledger_db.verify()
    assert done.returncode == 1
    assert f"entry 3 (run {runs[2]['id']}): entry 2 missing (deleted) between entry 1 and entry 3" in done.stderr
    assert "does not link to the entry before it" in done.stderr
    assert f"chain (run {runs[1]['id']}): a finished run that is not in the chain" in done.stderr


def test_the_last_entries_deleted_are_caught_by_the_published_head(ledger_db):
    for x in (1, 2, 3):
        ledger_db.run(x)
    published = json.loads(ledger_db.verify("--json").stdout)["head"]
    ledger_db.superuser_sql("delete from stackbook.chain where seq >= 2")
    ledger_db.superuser_sql("delete from stackbook.runs where id not in (select ref from stackbook.chain)")
    assert ledger_db.verify().returncode == 0  # a clean cut: only the published head shows it
    done = ledger_db.verify("--head", published)
    assert done.returncode == 1
    assert f"the published head {published[:12]}... is not in the chain (1 entries" in done.stderr
    bad = ledger_db.verify("--head", "not-a-hash")
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr


def test_an_executed_notebook_edited_or_deleted_is_named(ledger_db):
    edited, deleted = ledger_db.run(1), ledger_db.run(2)
    path = Path(edited["output"])
    path.write_text(path.read_text().replace('"x": 1', '"x": 5'))
    Path(deleted["output"]).unlink()
    done = ledger_db.verify()
    assert done.returncode == 1
    assert f"entry 1 (run {edited['id']}): executed notebook {edited['output']} changed" in done.stderr
    assert f"entry 2 (run {deleted['id']}): executed notebook {deleted['output']} is gone" in done.stderr


def test_twenty_concurrent_runs_leave_one_valid_chain(ledger_db):
    with ThreadPoolExecutor(max_workers=20) as pool:
        runs = list(pool.map(ledger_db.run, range(20)))
    seqs = [r[0] for r in ledger_db.conn.execute("select seq from stackbook.chain order by seq").fetchall()]
    assert seqs == list(range(1, 21))
    refs = {r[0] for r in ledger_db.conn.execute("select ref from stackbook.chain").fetchall()}
    assert refs == {r["id"] for r in runs}
    doc = json.loads(ledger_db.verify("--json").stdout)
    assert doc["ok"] and doc["entries"] == 20, doc["problems"]


@pytest.fixture()
def database_identity_env():
    """An environment file that says ``identity: database`` (removed afterwards)."""
    name = f"t_identity_{uuid.uuid4().hex[:8]}"
    path = project.environments_dir() / f"{name}.yml"
    path.write_text("description: operators log in to the database as themselves\nidentity: database\n")
    yield name
    path.unlink(missing_ok=True)


def test_under_identity_database_the_operator_is_the_role_that_connected(ledger_db, database_identity_env):
    ledger_db.run()  # the schema, created by the owner
    role, password = f"ev_operator_{uuid.uuid4().hex[:8]}", pysecrets.token_hex(16)
    conn = ledger_db.conn
    conn.execute(f"create role \"{role}\" login password '{password}'")
    try:
        conn.execute(f'grant usage on schema stackbook to "{role}"')
        conn.execute(f'grant select, insert, update on stackbook.runs to "{role}"')
        conn.execute(f'grant select, insert on stackbook.chain to "{role}"')
        info = psycopg.conninfo.conninfo_to_dict(ledger_db.url)
        url = f"postgresql://{role}:{password}@{info['host']}:{info['port']}/{ledger_db.name}"
        run = _run_in(ledger_db, database_identity_env, url)
        assert (run["operator"], run["operator_verified"]) == (role, True)
        with psycopg.connect(url, autocommit=True) as as_role, pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role.execute("update stackbook.chain set kind = 'x'")
        assert ledger_db.verify().returncode == 0
    finally:
        conn.execute(f'drop owned by "{role}"')  # its privileges in this database
        conn.execute(f'drop role "{role}"')


def _run_in(ledger_db: Ledger, env_name: str, url: str) -> dict:
    env = {**ledger_db.env, "DATABASE_URL": url, "STACKBOOK_OPERATOR": "someone-else"}
    done = ledger_db.stackbook("run", TRIVIAL, "-e", env_name, "-p", "x=7", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_bad_since_or_environment_is_a_usage_error(ledger_db):
    done = ledger_db.verify("--since", "yesterday")
    assert done.returncode == 2 and "--since 'yesterday' is not a date" in done.stderr
    done = ledger_db.verify("-e", "nowhere")
    assert done.returncode == 2 and "unknown environment 'nowhere'" in done.stderr


def test_a_record_applied_from_the_spool_is_appended_to_the_chain(ledger_db, monkeypatch):
    """The spool path: a run whose database was away at its end is finished, and chained, by the next session."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from stackbook.run import db, ledger, spool

    monkeypatch.setenv("STACKBOOK_DATABASE", ledger_db.name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    ledger_db.run()  # the schema, and one entry before
    run_id = ledger.new_run_id()
    with ledger.session() as conn:
        ledger.start_run(conn, run_id=run_id, runbook="trivial", path=TRIVIAL, env="dev", params={"x": 1},
                         output="nowhere.ipynb", git_commit=None)
        row = ledger.get_run(conn, run_id)
        target = db.target_of(conn)
    now = datetime.now(UTC)
    spool.keep(replace(row, status="succeeded", finished_at=now, heartbeat_at=now, duration_s=1.0), target)
    with ledger.session() as conn:  # drains the spool
        assert ledger.get_run(conn, run_id).status == "succeeded"
    entry = ledger_db.conn.execute("select seq, entry from stackbook.chain where ref = %s", (run_id,)).fetchone()
    assert entry[0] == 2 and entry[1]["status"] == "succeeded"
    assert ledger_db.verify().returncode == 0
