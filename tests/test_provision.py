"""Provisioning the warehouse against the real cluster, each test in its own scratch database.

The three roles are cluster-wide: the tests create them when missing (with
passwords kept in .stackbook/credentials) and leave them, as provisioning the
dev cluster does; every database they create is dropped.
"""

from __future__ import annotations

import stat
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from stackbook.core import project
from stackbook.provision import warehouse as provision
from stackbook.run import db as sdb

LOADER, TRANSFORMER, READER = (r.name for r in provision.ROLES)


def _exists(name: str) -> bool:
    with sdb.connect("postgres") as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


@pytest.fixture()
def scratch_db(database_url):
    name = f"sbt_prov_{uuid.uuid4().hex[:10]}"
    yield name
    with sdb.connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def provisioned(scratch_db):
    provision.apply(scratch_db)
    with sdb.connect(scratch_db) as conn:  # tables created by the admin after provisioning
        conn.execute("create table raw.events (id bigserial primary key, payload text)")
        conn.execute("insert into raw.events (payload) values ('a'), ('b')")
        conn.execute("create table marts.daily (day date primary key, n int)")
        conn.execute("insert into marts.daily values ('2026-01-01', 2)")
    return scratch_db


def _login(role: str, database: str, password: str | None = None):
    conninfo = make_conninfo(sdb.url(database), user=role, password=password or provision.password_for(role))
    return psycopg.connect(conninfo, autocommit=True)


def test_dry_run_shows_the_sql_and_changes_nothing(scratch_db):
    plan = provision.plan(scratch_db)
    assert plan.steps[0].shown == f'CREATE DATABASE "{scratch_db}"'
    assert any(s == 'CREATE SCHEMA IF NOT EXISTS "raw"' for s in plan.statements)
    assert any(s.startswith('GRANT USAGE ON SCHEMA "marts" TO "stackbook_reader"') for s in plan.statements)
    assert "SCRAM-SHA-256$" not in plan.script()  # verifiers are masked in what people see
    outcome = provision.apply(scratch_db, dry_run=True)
    assert outcome.applied == [] and outcome.dry_run
    assert "none applied" in outcome.message
    assert not _exists(scratch_db)
    assert provision.plan(scratch_db).statements == plan.statements


def test_second_apply_changes_nothing(scratch_db):
    first = provision.apply(scratch_db)
    assert first.changed and _exists(scratch_db)
    shown = [s.shown for s in first.applied]
    assert f'CREATE DATABASE "{scratch_db}"' in shown
    assert 'GRANT USAGE, CREATE ON SCHEMA "raw" TO "stackbook_loader"' in shown
    second = provision.apply(scratch_db)
    assert not second.changed and second.applied == []
    assert "nothing to change" in second.message
    assert not provision.plan(scratch_db)
    assert "nothing to change" in provision.plan(scratch_db).script()
    with sdb.connect(scratch_db) as conn:
        schemas = {r[0] for r in conn.execute("select nspname from pg_namespace")}
    assert set(provision.SCHEMAS) <= schemas
    assert provision.role_problems() == []


def test_roles_are_least_privilege_logins_with_scram_passwords(provisioned):
    for entry in provision.role_report():
        assert entry["exists"] and entry["canlogin"] and entry["scram_password"]
        assert not (entry["super"] or entry["createrole"] or entry["createdb"] or entry["replication"])
    for role in provision.role_names():
        path = project.home_dir() / "credentials" / role
        if path.exists():  # generated here (not from a STACKBOOK_*_PASSWORD secret)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_future_tables_get_default_privileges(provisioned):
    # raw.events and marts.daily were created after provisioning: nothing left to plan
    assert not provision.plan(provisioned)
    with sdb.connect(provisioned) as conn:
        def has(role, table, priv):
            return conn.execute("select has_table_privilege(%s, %s, %s)", (role, table, priv)).fetchone()[0]

        assert has(LOADER, "raw.events", "INSERT")
        assert has(TRANSFORMER, "raw.events", "SELECT") and not has(TRANSFORMER, "raw.events", "INSERT")
        assert has(READER, "marts.daily", "SELECT") and not has(READER, "marts.daily", "INSERT")
        assert not has(READER, "raw.events", "SELECT")


def test_reader_login_cannot_write_raw(provisioned):
    with _login(READER, provisioned) as conn:
        assert conn.info.host == "127.0.0.1"  # over TCP, authenticated with its SCRAM password
        assert conn.execute("select n from marts.daily").fetchone() == (2,)  # it reads marts
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into raw.events (payload) values ('x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table raw.sneaky (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into marts.daily values ('2026-01-02', 1)")
    probe = provision.probe_write(provisioned, READER, "raw")
    assert probe.denied, probe.evidence
    assert any("permission denied" in e for e in probe.evidence)
    # the probe is not vacuous: the loader may write raw
    loader = provision.probe_write(provisioned, LOADER, "raw")
    assert not loader.denied and any(e.startswith("ALLOWED") for e in loader.evidence)
    with sdb.connect(provisioned) as conn:
        assert conn.execute("select count(*) from raw.events").fetchone() == (2,)  # probes rolled back
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _login(READER, provisioned, password="not-the-password")


def test_drift_is_planned_and_revoked(provisioned):
    with sdb.connect(provisioned) as conn:
        conn.execute(f"grant usage on schema raw to {READER}")
        conn.execute(f"grant insert on raw.events to {READER}")
        conn.execute(f"alter default privileges in schema marts grant insert on tables to {READER}")
        conn.execute("grant create on schema staging to public")
    plan = provision.plan(provisioned)
    assert set(plan.statements) == {
        f'REVOKE USAGE ON SCHEMA "raw" FROM "{READER}"',
        f'REVOKE INSERT ON TABLE raw.events FROM "{READER}"',
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "stackbook" IN SCHEMA "marts" REVOKE INSERT ON TABLES FROM "{READER}"',
        'REVOKE CREATE ON SCHEMA "staging" FROM PUBLIC',
    }
    assert provision.apply(provisioned).changed
    assert not provision.plan(provisioned)
    assert provision.probe_write(provisioned, READER, "raw").denied


def test_a_secret_password_that_differs_is_planned_masked(provisioned, monkeypatch):
    monkeypatch.setenv("STACKBOOK_READER_PASSWORD", "another-password-" + uuid.uuid4().hex)
    plan = provision.plan(provisioned)
    assert plan.statements == [f"ALTER ROLE \"{READER}\" WITH PASSWORD '{provision.MASK}'"]
    assert "STACKBOOK_READER_PASSWORD" in plan.steps[0].why
    assert "another-password" not in plan.script()


def test_a_non_ascii_secret_is_refused(provisioned, monkeypatch):
    monkeypatch.setenv("STACKBOOK_LOADER_PASSWORD", "pässwörd-long-enough")
    with pytest.raises(provision.ProvisionError, match="STACKBOOK_LOADER_PASSWORD.*printable ASCII"):
        provision.plan(provisioned)


def test_scram_verifier_matches_only_its_password():
    verifier = provision.scram_verifier("s3cret-value")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert provision.verifier_matches(verifier, "s3cret-value")
    assert not provision.verifier_matches(verifier, "s3cret-valuE")
    assert not provision.verifier_matches("md5abcdef", "s3cret-value")
    assert not provision.verifier_matches(None, "s3cret-value")


def test_system_databases_are_refused():
    with pytest.raises(provision.UsageError, match="system database"):
        provision.plan("postgres")


# ---------------------------------------------------------------- approval for destructive runs


def _ledger_rows(database: str) -> int:
    with sdb.connect() as conn:
        return conn.execute("select count(*) from stackbook.runs where runbook = 'provision_warehouse' "
                            "and params->>'database' = %s", (database,)).fetchone()[0]


def test_prod_apply_without_approval_exits_3_and_changes_nothing(cli, scratch_db):
    res = cli("run", "provision_warehouse", "-e", "prod", "-p", "dry_run=false", "-p", f"database={scratch_db}")
    assert res.code == 3, res
    assert "stackbook approve provision_warehouse -e prod" in res.err and "nothing was executed" in res.err
    assert not _exists(scratch_db)
    assert _ledger_rows(scratch_db) == 0


def test_prod_dry_run_needs_no_approval(cli, scratch_db):
    res = cli("run", "provision_warehouse", "-e", "prod", "-p", f"database={scratch_db}", "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["approved_by"] is None and rec["params"]["dry_run"] is True
    assert rec["results"]["statements_planned"] > 0 and rec["results"]["statements_applied"] == 0
    assert not _exists(scratch_db)


def test_prod_apply_with_approval_records_the_approver(cli, scratch_db):
    args = ("provision_warehouse", "-e", "prod", "-p", "dry_run=false", "-p", f"database={scratch_db}")
    approval = cli("approve", *args, "--by", "alice", "--reason", "new warehouse")  # prod: alice may approve
    assert approval.code == 0, approval
    res = cli("run", *args, "--approval", approval.out.strip(), "--json", env={"STACKBOOK_OPERATOR": "carol"})
    assert res.code == 0, res
    run_id = res.json()["id"]
    shown = cli("runs", "show", run_id, "--json")
    assert shown.code == 0, shown
    rec = shown.json()
    assert rec["approved_by"] == "alice" and rec["env"] == "prod" and rec["status"] == "succeeded"
    assert rec["approval_id"] == approval.out.strip() and rec["operator"] == "carol"
    assert rec["results"]["statements_applied"] > 0
    assert rec["results"]["reader_write_denied"] is True
    assert _exists(scratch_db)
    text = cli("runs", "show", run_id)
    assert "approved_by: alice" in text.out


def test_dry_run_verification_sees_role_changes_not_other_sessions_tables(provisioned):
    before = provision.plan(provisioned)
    with sdb.connect(provisioned) as conn:  # another session's work: not provisioning's concern
        conn.execute("create schema other_team")
        conn.execute("create table raw.other (x int)")
    assert provision.verify(provisioned, before=before, dry_run=True).ok
    with sdb.connect(provisioned) as conn:  # a change to a managed role is (and gets planned away)
        conn.execute(f"grant pg_read_all_stats to {READER}")
    try:
        result = provision.verify(provisioned, before=before, dry_run=True)
        assert not result.ok and "managed roles" in result.problems[0]
        assert f'REVOKE "pg_read_all_stats" FROM "{READER}"' in provision.plan(provisioned).statements
    finally:
        with sdb.connect(provisioned) as conn:
            conn.execute(f"revoke pg_read_all_stats from {READER}")
