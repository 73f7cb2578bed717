"""The compliance audit: PostgreSQL, secrets and operations rules, the report, the runbook.

Every rule has a good and a bad case: the bad one is caught with the rule's id and the
resource named, the good one passes. PostgreSQL rules run over observations (pure) and
against the project-local cluster with deliberately weakened roles and a weakened
database; the secrets scan runs over a real temporary git repository and run store; the
operations rules over real ledger rows in a scratch environment name. Planted secrets are
built at run time, so this file holds none itself.
"""

from __future__ import annotations

import base64
import json
import secrets as pysecrets
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from stackbook.audit import RULES, SEVERITIES, Finding, at_or_above, finding, operations, postgres, secrets_scan
from stackbook.audit import report as audit_report

# ------------------------------------------------------------------ helpers


def by(findings: list[Finding], rule_id: str, status: str | None = None) -> list[Finding]:
    return [f for f in findings if f.id == rule_id and (status is None or f.status == status)]


def statuses(findings: list[Finding], rule_id: str) -> set[str]:
    return {f.status for f in findings if f.id == rule_id}


def test_every_rule_is_complete():
    import importlib

    for name in ("postgres", "secrets_scan", "operations", "report", "kubernetes"):
        importlib.import_module(f"stackbook.audit.{name}")  # registers its rules
    ids = set(RULES)
    assert {f"PG-{n:03d}" for n in range(1, 13)} <= ids
    assert {"SEC-001", "SEC-002", "OPS-001", "OPS-002", "OPS-003", "OPS-004", "AUDIT-001"} <= ids
    for rule in RULES.values():  # every area's rules, in one control format
        assert rule.title and rule.fix and rule.severity in SEVERITIES, rule
        assert rule.controls and all(c.startswith(("SOC2 ", "ISO27001 A.")) for c in rule.controls), rule
        assert any(c.startswith("SOC2 ") for c in rule.controls), rule
        assert any(c.startswith("ISO27001 ") for c in rule.controls), rule


# ------------------------------------------------------------------ PostgreSQL: pure rules over observations

GOOD_SETTINGS = {"ssl": "on", "password_encryption": "scram-sha-256", "log_connections": "on",
                 "log_disconnections": "on"}
BOOTSTRAP = {"oid": 10, "rolname": "postgres", "rolsuper": True, "rolcreaterole": True, "rolcreatedb": True,
             "rolcanlogin": True}
APP = {"oid": 16500, "rolname": "loader", "rolsuper": False, "rolcreaterole": False, "rolcreatedb": False,
       "rolcanlogin": True}
HBA_GOOD = [
    {"line_number": 2, "type": "local", "database": ["all"], "user_name": ["all"], "address": None, "netmask": None,
     "auth_method": "peer", "error": None},
    {"line_number": 3, "type": "hostssl", "database": ["all"], "user_name": ["all"], "address": "0.0.0.0",
     "netmask": "0.0.0.0", "auth_method": "scram-sha-256", "error": None},
]


def obs(**changes):
    base = {
        "settings": dict(GOOD_SETTINGS),
        "roles": [dict(BOOTSTRAP), dict(APP)],
        "admin_roles": [],
        "hba": [dict(r) for r in HBA_GOOD],
        "hba_error": None,
        "authid": [{"rolname": "postgres", "rolcanlogin": True, "no_password": False, "hash": "scram-sha-256"},
                   {"rolname": "loader", "rolcanlogin": True, "no_password": False, "hash": "scram-sha-256"}],
        "authid_error": None,
        "databases": [{"database": "warehouse", "schema": "public", "public_create": False, "acl": "{}"}],
    }
    base.update(changes)
    return base


def test_postgres_good_observation_passes_every_rule():
    findings = postgres.check_all(obs())
    assert {f.id for f in findings} == set(postgres.rule_ids())
    assert all(f.status == "pass" for f in findings), [f for f in findings if f.status != "pass"]


@pytest.mark.parametrize("rule_id,name,bad", [
    ("PG-001", "ssl", "off"),
    ("PG-002", "password_encryption", "md5"),
    ("PG-003", "log_connections", "off"),
    ("PG-004", "log_disconnections", "off"),
])
def test_postgres_settings_rules(rule_id, name, bad):
    good = postgres.check_all(obs(), [rule_id])
    assert statuses(good, rule_id) == {"pass"}
    weak = postgres.check_all(obs(settings={**GOOD_SETTINGS, name: bad}), [rule_id])
    [f] = by(weak, rule_id, "fail")
    assert f.resource == f"postgres/setting/{name}" and bad in f.evidence and f.severity == RULES[rule_id].severity


@pytest.mark.parametrize("rule_id,column", [("PG-005", "rolsuper"), ("PG-006", "rolcreaterole"),
                                            ("PG-007", "rolcreatedb")])
def test_postgres_role_attribute_rules(rule_id, column):
    weak = postgres.check_all(obs(roles=[dict(BOOTSTRAP), {**APP, column: True}]), [rule_id])
    [f] = by(weak, rule_id, "fail")
    assert f.resource == "postgres/role/loader" and "loader" in f.evidence
    # the bootstrap superuser is the documented exception, reported as pass with the reason
    [boot] = [f for f in weak if f.resource == "postgres/role/postgres"]
    assert boot.status == "pass" and "bootstrap superuser (oid 10)" in boot.evidence
    # an allow-listed administrative role is treated the same way
    allowed = postgres.check_all(obs(roles=[dict(BOOTSTRAP), {**APP, column: True}], admin_roles=["loader"]),
                                 [rule_id])
    assert statuses(allowed, rule_id) == {"pass"}
    assert any("allow-list" in f.evidence for f in allowed if f.resource == "postgres/role/loader")


@pytest.mark.parametrize("rule_id,method", [("PG-008", "trust"), ("PG-009", "md5"), ("PG-009", "password")])
def test_postgres_hba_rules(rule_id, method):
    assert statuses(postgres.check_all(obs(), [rule_id]), rule_id) == {"pass"}
    rows = [dict(r) for r in HBA_GOOD] + [{**HBA_GOOD[1], "line_number": 7, "auth_method": method}]
    [f] = by(postgres.check_all(obs(hba=rows), [rule_id]), rule_id, "fail")
    assert f.resource == "postgres/pg_hba.conf/line/7" and method in f.evidence
    # trust is not flagged by the md5/password rule and vice versa
    other = "PG-009" if rule_id == "PG-008" else "PG-008"
    assert statuses(postgres.check_all(obs(hba=rows), [other]), other) == {"pass"}


def test_postgres_unreadable_catalogues_are_skipped_not_passed():
    findings = postgres.check_all(obs(hba=None, hba_error="permission denied", authid=None,
                                      authid_error="permission denied"))
    for rid in ("PG-008", "PG-009", "PG-010", "PG-011"):
        [f] = by(findings, rid)
        assert f.status == "skip" and "superuser" in f.evidence


def test_postgres_password_rules():
    authid = [{"rolname": "postgres", "rolcanlogin": True, "no_password": False, "hash": "scram-sha-256"},
              {"rolname": "etl", "rolcanlogin": True, "no_password": True, "hash": None},
              {"rolname": "readers", "rolcanlogin": False, "no_password": True, "hash": None},
              {"rolname": "legacy", "rolcanlogin": True, "no_password": False, "hash": "md5"}]
    findings = postgres.check_all(obs(authid=authid), ["PG-010", "PG-011"])
    assert [f.resource for f in by(findings, "PG-010", "fail")] == ["postgres/role/etl"]  # a group role is fine
    assert [f.resource for f in by(findings, "PG-011", "fail")] == ["postgres/role/legacy"]


def test_postgres_public_schema_rule():
    dbs = [{"database": "a", "schema": "public", "public_create": False, "acl": "{}"},
           {"database": "b", "schema": "public", "public_create": True, "acl": "{=UC/postgres}"}]
    findings = postgres.check_all(obs(databases=dbs), ["PG-012"])
    assert [f.resource for f in by(findings, "PG-012", "fail")] == ["postgres/database/b/schema/public"]
    assert [f.resource for f in by(findings, "PG-012", "pass")] == ["postgres/database/a/schema/public"]


# ------------------------------------------------------------------ PostgreSQL: live


def test_postgres_live_cluster_passes(db):
    findings = postgres.check_all(postgres.observe(db))
    assert {f.id for f in findings} == set(postgres.rule_ids())
    bad = [f for f in findings if f.status != "pass"]
    # other sessions may hold their own roles; none of the cluster-wide settings may fail
    assert not [f for f in bad if f.id in ("PG-001", "PG-002", "PG-003", "PG-004", "PG-008", "PG-009")], bad
    boot = [f for f in by(findings, "PG-005") if "oid 10" in f.evidence]
    assert boot and boot[0].status == "pass"


@pytest.fixture()
def weak_role(db):
    """A throwaway login role without a password that can create roles and databases; dropped afterwards."""
    name = f"audit_weak_{uuid.uuid4().hex[:8]}"
    db.execute(f'create role "{name}" login createdb createrole')
    try:
        yield name
    finally:
        db.execute(f'drop role if exists "{name}"')


def test_postgres_live_weakened_role_is_caught(db, weak_role):
    findings = postgres.check_all(postgres.observe(db, all_databases=False))
    resource = f"postgres/role/{weak_role}"
    for rid in ("PG-006", "PG-007", "PG-010"):
        assert resource in {f.resource for f in by(findings, rid, "fail")}, (rid, by(findings, rid))
    assert resource not in {f.resource for f in by(findings, "PG-005", "fail")}  # not a superuser
    # named as an administrative role, its attributes are allowed (its missing password is not)
    allowed = audit_report.run("dev", areas=["postgres"], conn=db, admin_roles=[weak_role], write=False).findings
    for rid in ("PG-006", "PG-007"):
        [f] = [f for f in allowed if f.id == rid and f.resource == resource]
        assert f.status == "pass" and "allow-list" in f.evidence
    assert resource in {f.resource for f in by(allowed, "PG-010", "fail")}


def test_postgres_live_weakened_public_schema_is_caught(db, database_url):
    name = f"audit_pub_{uuid.uuid4().hex[:8]}"
    db.execute(f'create database "{name}"')
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(database_url, dbname=name), autocommit=True) as other:
            other.execute("grant create on schema public to public")
        findings = postgres.check_all(postgres.observe(db), ["PG-012"])
        [f] = [f for f in findings if f.resource == f"postgres/database/{name}/schema/public"]
        assert f.status == "fail" and "PUBLIC may CREATE" in f.evidence
        assert statuses([x for x in findings if x.resource == "postgres/database/stackbook/schema/public"],
                        "PG-012") == {"pass"}
    finally:
        db.execute(f'drop database if exists "{name}" with (force)')


def test_postgres_live_as_non_superuser_skips_what_it_cannot_read(db, database_url):
    name = f"audit_ro_{uuid.uuid4().hex[:8]}"
    password = pysecrets.token_hex(16)
    db.execute(f"create role \"{name}\" login password '{password}'")
    try:
        url = psycopg.conninfo.make_conninfo(database_url, user=name, password=password)
        with psycopg.connect(url, autocommit=True) as conn:
            findings = postgres.check_all(postgres.observe(conn, all_databases=False))
        for rid in ("PG-008", "PG-009", "PG-010", "PG-011"):
            [f] = by(findings, rid)
            assert f.status == "skip" and "not readable" in f.evidence, f
        assert statuses(findings, "PG-001") == {"pass"}  # settings are still checked
    finally:
        db.execute(f'drop role if exists "{name}"')


# ------------------------------------------------------------------ secrets: detection


def _key_block() -> str:
    body = base64.b64encode(pysecrets.token_bytes(96)).decode()
    return "-----BEGIN " + "RSA PRIVATE KEY-----\n" + body + "\n-----END " + "RSA PRIVATE KEY-----\n"


def _random_password() -> str:
    return "Q7" + pysecrets.token_urlsafe(14) + "!x"


@pytest.mark.parametrize("make,kind", [
    (lambda: _key_block(), "private key"),
    (lambda: "aws_key = '" + "AKIA" + "".join(pysecrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ234567") for _ in range(16))
     + "'", "AWS access key id"),
    (lambda: 'db_password = "' + _random_password() + '"', "password assignment"),
    (lambda: '{"api_key": "' + pysecrets.token_hex(20) + '"}', "password assignment"),
    (lambda: "url = 'postgresql://etl:" + pysecrets.token_hex(12) + "@db.internal:5432/warehouse'",
     "URL with inline password"),
])
def test_detect_catches_planted_secrets(make, kind):
    hits = secrets_scan.detect(make(), "planted.py")
    assert kind in {h.kind for h in hits}, hits


@pytest.mark.parametrize("text", [
    'password_encryption = "scram-sha-256"',
    "url = 'postgresql://stackbook:[secret:DATABASE_PASSWORD]@127.0.0.1:5432/stackbook'",
    "url = f'postgresql://{user}:{self.password}@{host}/db'",
    'db_password = os.environ["DB_PASSWORD"]',
    'token = "${TOKEN}"',
    'password = "changeme123"',
    'PASSWORD = "<your password here>"',
    "postgresql://user:pass@localhost/db",
    "api_key = get_api_key()",
])
def test_detect_ignores_placeholders_and_scrubbed_markers(text):
    assert secrets_scan.detect(text, "ok.py") == []


def test_detect_config_files_and_known_values_and_inline_allow():
    value = _random_password()
    assert secrets_scan.detect(f"DB_PASSWORD={value}\n", "app.env", config=True)
    assert not secrets_scan.detect(f"DB_PASSWORD={value}\n", "app.py")  # unquoted code is not a literal
    encoded = base64.b64encode(value.encode()).decode()
    hits = secrets_scan.detect(f"print({encoded!r})", "x.py", known={"WAREHOUSE_PASSWORD": value})
    assert [(h.kind, h.name) for h in hits] == [("known secret value", "WAREHOUSE_PASSWORD")]
    assert not secrets_scan.detect(f'db_password = "{value}"  # stackbook-audit: allow', "x.py")
    # evidence never holds the value
    assert value not in hits[0].describe() and encoded not in hits[0].describe()


# ------------------------------------------------------------------ secrets: repository and run store


def _git_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    return repo


def _ctx(repo: Path, run_store: Path, **kw) -> dict:
    return secrets_scan.context("dev", root=repo, run_store=str(run_store), known=kw.pop("known", {}), **kw)


def test_sec001_clean_repository_passes(tmp_path):
    repo = _git_repo(tmp_path, {"src/app.py": "import os\npassword = os.environ['PW']\n",
                                "infra/app.yml": "image: app:1.2.3\npassword: ${APP_PASSWORD}\n"})
    findings = secrets_scan.check_all(_ctx(repo, tmp_path / "runs"), ["SEC-001"])
    [f] = findings
    assert f.status == "pass" and "2 tracked files scanned" in f.evidence


def test_sec001_planted_key_in_tracked_file_is_caught(tmp_path):
    repo = _git_repo(tmp_path, {"src/app.py": "x = 1\n", "deploy/id_rsa": _key_block(),
                                "config/prod.env": f"WAREHOUSE_PASSWORD={_random_password()}\n"})
    (repo / "untracked.pem").write_text(_key_block())  # not tracked: not the repository's content
    findings = secrets_scan.check_all(_ctx(repo, tmp_path / "runs"), ["SEC-001"])
    failed = sorted(f.resource for f in by(findings, "SEC-001", "fail"))
    assert failed == ["repo/config/prod.env:1", "repo/deploy/id_rsa:1"], findings
    assert all(f.severity == "critical" for f in findings)


def test_sec001_allowlisted_fixture_is_counted_not_failed(tmp_path):
    repo = _git_repo(tmp_path, {"tests/fixtures/audit/bad.py": 'db_password = "' + _random_password() + '"\n',
                                secrets_scan.ALLOWLIST_FILE: "tests/fixtures/audit/**  # deliberately bad\n"})
    [f] = secrets_scan.check_all(_ctx(repo, tmp_path / "runs", allowlist=None), ["SEC-001"])
    assert f.status == "pass" and "allow-listed: 1 in tests/fixtures/audit/**" in f.evidence


def test_sec001_not_a_repository_is_skipped(tmp_path):
    [f] = secrets_scan.check_all(_ctx(tmp_path, tmp_path / "runs"), ["SEC-001"])
    assert f.status == "skip"


def _executed(outputs_text: str) -> dict:
    return {"cells": [{"cell_type": "code", "source": ["print(url)"], "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": [outputs_text]}]}],
        "metadata": {"papermill": {"parameters": {"rows": 10}}}, "nbformat": 4, "nbformat_minor": 5}


def test_sec002_scrubbed_notebooks_pass_and_leaks_are_caught(tmp_path):
    store = tmp_path / "runs" / "dev"
    ok = store / "load" / "20260101T000000-aaaaaa.ipynb"
    ok.parent.mkdir(parents=True)
    ok.write_text(json.dumps(_executed("postgresql://etl:[secret:DATABASE_PASSWORD]@db:5432/w\n")))
    ctx = _ctx(tmp_path, store)
    [f] = secrets_scan.check_all(ctx, ["SEC-002"])
    assert f.status == "pass" and "1 executed notebooks" in f.evidence

    leaked = store / "load" / "20260102T000000-bbbbbb.ipynb"
    value = pysecrets.token_hex(12)
    leaked.write_text(json.dumps(_executed(f"postgresql://etl:{value}@db:5432/w\n")))
    known_value = _random_password()
    other = store / "train" / "20260103T000000-cccccc.ipynb"
    other.parent.mkdir()
    other.write_text(json.dumps(_executed("token " + base64.urlsafe_b64encode(known_value.encode()).decode())))
    findings = secrets_scan.check_all(_ctx(tmp_path, store, known={"MLFLOW_TOKEN": known_value}), ["SEC-002"])
    failed = {f.resource: f for f in by(findings, "SEC-002", "fail")}
    assert set(failed) == {"runs/dev/load/20260102T000000-bbbbbb.ipynb", "runs/dev/train/20260103T000000-cccccc.ipynb"}
    assert "MLFLOW_TOKEN" in failed["runs/dev/train/20260103T000000-cccccc.ipynb"].evidence
    assert all(value not in f.evidence and known_value not in f.evidence for f in findings)


def test_sec002_printed_environment_reports_the_credential_not_the_working_directory(tmp_path):
    """`pwd` stays a keyword, but PWD=/work/... (a directory) is not a password: one finding, the real key."""
    aws_secret = "".join(pysecrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+")
                         for _ in range(40))
    environ = {"PWD": "/work/main/runbooks/ops", "OLDPWD": "/work/main", "HOME": "/root", "LANG": "C.UTF-8",
               "PATH": "/work/main/.venv/bin:/usr/local/bin:/usr/bin:/bin", "SHLVL": "1", "TERM": "xterm",
               "SSH_AUTH_SOCK": "/tmp/ssh-k3j2Ab9Q/agent.1234", "GIT_ASKPASS": "/usr/lib/git-core/git-gui--askpass",
               "JPY_PARENT_PID": "4242", "AWS_SECRET_ACCESS_KEY": aws_secret, "KERNEL_ID": str(uuid.uuid4())}
    printed = f"environ({environ!r})\n"  # what print(os.environ) shows
    store = tmp_path / "runs" / "dev"
    path = store / "debug" / "20260101T000000-aaaaaa.ipynb"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_executed(printed)))
    hits = secrets_scan.scan_run_store(store, secrets_scan.Detector({})).hits
    assert [h.kind for h in hits] == ["AWS secret access key"], [h.describe() for h in hits]
    [f] = secrets_scan.check_all(_ctx(tmp_path, store), ["SEC-002"])
    assert f.status == "fail" and "AWS secret access key" in f.evidence
    assert aws_secret not in f.evidence and "/work/main" not in f.evidence
    # a path-shaped credential is still one: random segments, or '+'
    assert secrets_scan.detect('db_pwd = "/k9QzXb8Lm2/Tq7Rw"', "x.py")  # stackbook-audit: allow
    assert secrets_scan.detect('api_token = "/usr/' + pysecrets.token_hex(8) + '+Zx"', "x.py")


def test_secrets_live_repository_and_run_store_pass():
    findings = secrets_scan.audit("dev")
    assert statuses(findings, "SEC-001") == {"pass"}, [f for f in findings if f.status != "pass"]


# ------------------------------------------------------------------ operations


def test_window_hours_from_metadata_and_cron():
    assert operations.window_hours({"freshness_hours": 3, "schedule": "0 * * * *"})[0] == 3
    assert operations.window_hours({"schedule": "*/30 * * * *"})[0] == 1.0
    assert operations.window_hours({"schedule": "0 6 * * *", "timeout": 1800})[0] == 48.5
    assert operations.window_hours({"schedule": "0 6 * * 1-5"})[0] == 144.0  # Friday to Monday is the longest gap
    assert operations.window_hours({}, 168.0) == (168.0, "default window")


@pytest.fixture()
def scratch_env(db):
    """A scratch environment name in the real ledger; its rows are deleted afterwards."""
    from stackbook.run import ledger

    ledger.ensure_schema(db)
    env = f"audit-test-{uuid.uuid4().hex[:8]}"
    yield env
    db.execute("delete from stackbook.runs where env = %s", (env,))


def add_run(db, env: str, runbook: str, status: str, hours_ago: float, results: dict | None = None,
            reason: str | None = None) -> str:
    run_id = f"t{uuid.uuid4().hex[:12]}"
    db.execute(
        """insert into stackbook.runs (id, runbook, env, status, host, results, reason, started_at, finished_at,
                                       heartbeat_at)
           values (%s, %s, %s, %s, 'test', %s, %s, now() - make_interval(secs => %s) - interval '1 minute',
                   case when %s = 'running' then null else now() - make_interval(secs => %s) end, now())""",
        (run_id, runbook, env, status, json.dumps(results or {}), reason, hours_ago * 3600, status,
         hours_ago * 3600),
    )
    return run_id


RUNBOOKS = [
    {"name": "fresh", "schedule": "0 * * * *", "freshness_hours": None, "timeout": None},  # window 2 h
    {"name": "stale", "schedule": "0 * * * *", "freshness_hours": None, "timeout": None},
    {"name": "failing", "schedule": "0 * * * *", "freshness_hours": None, "timeout": None},
    {"name": "never", "schedule": "0 6 * * *", "freshness_hours": None, "timeout": None},
    {"name": "adhoc", "schedule": None, "freshness_hours": None, "timeout": None},
    {"name": "dr_drill", "schedule": None, "freshness_hours": 24, "timeout": None},
]


def test_ops001_ops002_freshness_from_ledger_rows(db, scratch_env):
    add_run(db, scratch_env, "fresh", "failed", 5)
    add_run(db, scratch_env, "fresh", "succeeded", 0.5)
    add_run(db, scratch_env, "stale", "succeeded", 5)
    add_run(db, scratch_env, "failing", "failed", 0.2, reason="cell 3 raised")
    add_run(db, scratch_env, "adhoc", "failed", 100)
    add_run(db, scratch_env, "never", "skipped", 0.1)  # a pipeline skipped it: it did not run
    add_run(db, "dev-other-" + scratch_env, "never", "succeeded", 0.1)  # another environment does not count
    try:
        findings = operations.check_all(operations.context(scratch_env, db, runbooks=RUNBOOKS),
                                        ["OPS-001", "OPS-002"])
    finally:
        db.execute("delete from stackbook.runs where env = %s", ("dev-other-" + scratch_env,))
    res = {(f.id, f.resource): f for f in findings}
    r = lambda name: f"runbook/{name}@{scratch_env}"  # noqa: E731
    assert res[("OPS-001", r("fresh"))].status == "pass"
    assert res[("OPS-001", r("stale"))].status == "fail" and "older than its window of 2 h" in \
        res[("OPS-001", r("stale"))].evidence
    failing = res[("OPS-001", r("failing"))]
    assert failing.status == "fail" and "none succeeded" in failing.evidence
    assert res[("OPS-001", r("never"))].status == "skip"
    assert res[("OPS-002", r("never"))].status == "fail" and res[("OPS-002", r("never"))].severity == "medium"
    assert {res[("OPS-002", r(n))].status for n in ("fresh", "stale", "failing")} == {"pass"}
    assert not [f for f in findings if "adhoc" in f.resource]  # not scheduled: not checked


def test_ops003_ops004_dr_drill(db, scratch_env):
    ctx = lambda: operations.context(scratch_env, db, runbooks=RUNBOOKS)  # noqa: E731
    never = operations.check_all(ctx(), ["OPS-003", "OPS-004"])
    assert statuses(never, "OPS-003") == {"skip"} and statuses(never, "OPS-004") == {"fail"}

    add_run(db, scratch_env, "dr_drill", "succeeded", 2, results={"rto_seconds": 12.5, "rpo_seconds": 30})
    good = operations.check_all(ctx(), ["OPS-003", "OPS-004"])
    assert statuses(good, "OPS-003") == {"pass"} and statuses(good, "OPS-004") == {"pass"}
    assert "rto_seconds=12.5" in by(good, "OPS-003")[0].evidence

    add_run(db, scratch_env, "dr_drill", "failed", 1, reason="RTO 900 s missed its target of 300 s")
    add_run(db, scratch_env, "dr_drill", "running", 0)  # a drill in progress does not count
    [f] = operations.check_all(ctx(), ["OPS-003"])
    assert f.status == "fail" and "RTO 900 s" in f.evidence

    db.execute("delete from stackbook.runs where env = %s", (scratch_env,))
    add_run(db, scratch_env, "dr_drill", "succeeded", 30)  # passed, but outside its 24 h window
    [f] = operations.check_all(ctx(), ["OPS-003"])
    assert f.status == "fail" and "older than its window of 24 h" in f.evidence

    no_drill = operations.check_all(operations.context(scratch_env, db, runbooks=RUNBOOKS[:-1]), ["OPS-004"])
    assert by(no_drill, "OPS-004", "fail") and "no DR drill is defined" in no_drill[0].evidence


# ------------------------------------------------------------------ report


def _fake(rule_id: str, status: str) -> Finding:
    return finding(rule_id, status, f"test/{rule_id}", "made by the test")


def test_report_fail_on_thresholds_and_error_counts_as_failed():
    rep = audit_report.Report(env="t", fail_on="high", areas=["postgres"], generated_at="x",
                              findings=[_fake("PG-001", "pass"), _fake("PG-003", "fail"), _fake("PG-010", "skip")])
    assert rep.passed and rep.checks_total == 3 and rep.checks_failed == 1
    rep.check()  # PG-003 is medium: below high
    with pytest.raises(audit_report.AuditFailed) as err:
        rep.check("medium")
    assert err.value.failing_ids == ["PG-003"] and "PG-003" in str(err.value)
    rep.findings.append(_fake("PG-012", "error"))
    with pytest.raises(audit_report.AuditFailed) as err:
        rep.check()
    assert err.value.failing_ids == ["PG-012"]
    assert at_or_above("critical", "high") and not at_or_above("low", "medium")


def test_report_run_writes_json_with_every_field(db, scratch_env, tmp_path, monkeypatch):
    from stackbook.core import project

    out = tmp_path / "runs" / "x" / "20260101T000000-abcdef.ipynb"
    monkeypatch.setenv("STACKBOOK_RUN_OUTPUT", str(out))
    rep = audit_report.run(scratch_env, areas=["postgres", "operations"], conn=db, fail_on="critical",
                           severity={"OPS-002": "low"})
    try:
        path = Path(rep.path)
        assert path.parent == project.state_dir() / "audit" / scratch_env and path.exists()
        data = json.loads(path.read_text())
        assert data["env"] == scratch_env and data["summary"]["checks_total"] == len(data["findings"]) > 10
        for f in data["findings"]:
            assert {"id", "severity", "status", "resource", "evidence", "controls", "title", "fix"} <= set(f)
        assert set(data["rules"]) == {f["id"] for f in data["findings"]}
        # under the runner a copy goes next to the executed notebook
        assert json.loads((out.parent / "20260101T000000-abcdef.audit.json").read_text())["findings"] == \
            data["findings"]
        # the environment's override lowered OPS-002 and says so in the evidence
        ops2 = [f for f in data["findings"] if f["id"] == "OPS-002"]
        assert ops2 and all(f["severity"] == "low" for f in ops2)
        assert rep.summary().shape[0] >= 12 and not rep.frame().empty and "Audit" in rep.html()
        assert "SOC2 CC6.1" in set(rep.controls()["control"])
    finally:
        shutil.rmtree(project.state_dir() / "audit" / scratch_env, ignore_errors=True)


def test_report_bad_input_is_a_usage_error():
    from stackbook.core.errors import UsageError

    with pytest.raises(UsageError, match="unknown audit area 'network'"):
        audit_report.run("dev", areas=["network"], write=False)
    with pytest.raises(UsageError, match="fail_on must be one of"):
        audit_report.run("dev", areas=["postgres"], fail_on="severe", write=False)
    with pytest.raises(UsageError, match="no such file or folder"):
        audit_report.run("dev", areas=["kubernetes"], manifests_dir="/nonexistent/manifests", write=False)


def test_report_kubernetes_area_checks_the_rendered_overlay():
    rep = audit_report.run("dev", areas=["kubernetes"], write=False)
    assert rep.findings and all(f.id.startswith("K8S-") for f in rep.findings), rep.findings


K8S_FIXTURES = Path(__file__).parent / "fixtures" / "k8s"


def test_report_kubernetes_manifests_dir_good_and_bad():
    good = audit_report.run("dev", areas=["kubernetes"], manifests_dir=str(K8S_FIXTURES / "good"), write=False)
    assert good.findings and good.passed, [f for f in good.findings if f.status != "pass"]
    bad = audit_report.run("dev", areas=["kubernetes"], manifests_dir=str(K8S_FIXTURES / "bad"), write=False)
    with pytest.raises(audit_report.AuditFailed) as err:
        bad.check()
    assert len(err.value.failing_ids) >= 5 and all(i.startswith("K8S-") for i in err.value.failing_ids)


def test_report_kubernetes_overlay_missing_or_broken(own_project):
    root, env = own_project
    overlay = root / "infra" / "k8s" / "overlays" / env
    overlay.mkdir(parents=True)
    rep = audit_report.run("no-such-env", areas=["kubernetes"], write=False)
    [f] = rep.findings
    assert (f.id, f.status) == ("AUDIT-001", "skip") and "no Kubernetes overlay" in f.evidence

    (overlay / "kustomization.yaml").write_text("resourcez: [deployment.yaml]\n")  # a typo: not rendered
    rep = audit_report.run(env, areas=["kubernetes"], write=False)
    [f] = rep.findings
    assert (f.id, f.status) == ("AUDIT-001", "error") and "resourcez" in f.evidence and not rep.passed


def test_report_area_error_becomes_a_finding(monkeypatch):
    def broken(env, opts):
        raise RuntimeError("catalogue unreadable")

    monkeypatch.setitem(audit_report.AREA_RUNNERS, "operations", broken)
    rep = audit_report.run("dev", areas=["operations"], write=False)
    [f] = rep.findings
    assert (f.id, f.status, f.resource) == ("AUDIT-001", "error", "area/operations")
    assert "catalogue unreadable" in f.evidence and not rep.passed


@pytest.fixture()
def own_project(tmp_path, monkeypatch):
    """A project of its own (``STACKBOOK_PROJECT``): one runbook that declares the secret CANARY_SECRET, no
    database, no environment file; and an environment name no other test uses. Yields (root, env)."""
    from stackbook.core import project

    root = tmp_path / "project"
    (root / "runbooks" / "ops").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    shutil.copy(Path(__file__).parent / "fixtures" / "foundation" / "leaks_secret.ipynb", root / "runbooks" / "ops")
    monkeypatch.setenv("STACKBOOK_PROJECT", str(root))
    monkeypatch.setenv("STACKBOOK_HOME", str(root / ".stackbook"))  # no cluster there
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CANARY_SECRET", raising=False)
    project.root.cache_clear()
    env = f"t_audit_{uuid.uuid4().hex[:8]}"
    try:
        yield root, env
    finally:
        project.root.cache_clear()
        shutil.rmtree(project.state_dir() / "audit" / env, ignore_errors=True)


@pytest.mark.parametrize("breakage", ["not text", "a folder"])
def test_report_that_cannot_build_its_redaction_fails_and_writes_nothing(own_project, breakage):
    """The secret values to scrub from the evidence cannot be read: the audit stops with a message that names
    the cause, checks nothing and writes no report (it used to scrub nothing and carry on)."""
    from stackbook.core import project
    from stackbook.core.errors import AuditRedactionError

    root, env = own_project
    dotenv = root / f".env.{env}"
    if breakage == "not text":
        dotenv.write_bytes(b"CANARY_SECRET=\xff\xfe-not-utf8\n")
    else:
        dotenv.mkdir()
    with pytest.raises(AuditRedactionError) as err:
        audit_report.run(env, areas=["secrets"])
    message = str(err.value)
    assert f"audit of {env}: cannot read the secret values its evidence must never show" in message
    assert f"{dotenv} is {'not UTF-8 text' if breakage == 'not text' else 'a directory'}" in message, message
    assert "wrote no report" in message
    assert not (project.state_dir() / "audit" / env).exists()  # nothing was recorded

    # repaired, the same audit runs and the declared secret is among the values it scrubs
    shutil.rmtree(dotenv) if dotenv.is_dir() else dotenv.unlink()
    value = pysecrets.token_urlsafe(16)
    dotenv.write_text(f"CANARY_SECRET={value}\n")
    assert secrets_scan.known_secrets(env) == {"CANARY_SECRET": value}
    rep = audit_report.run(env, areas=["secrets"], write=False)
    assert rep.findings and value not in json.dumps(rep.to_dict())


# ------------------------------------------------------------------ the runbook, through the runner


def test_runbook_fails_on_weak_role_and_records_evidence(cli, db, weak_role):
    res = cli("run", "compliance_audit", "-e", "dev", "-p", "areas=[postgres]", "--json")
    assert res.code == 1, res
    rec = res.json()
    assert rec["status"] == "failed"
    assert "PG-006" in json.dumps(rec["error"]) and "PG-007" in json.dumps(rec["error"])
    results = rec["results"]
    assert results["checks_failed"] >= 3 and results["checks_total"] > results["checks_failed"]
    assert {"PG-006", "PG-007"} <= set(results["failing_rules"])
    data = json.loads(Path(results["report_path"]).read_text())
    assert any(f["resource"] == f"postgres/role/{weak_role}" and f["status"] == "fail" for f in data["findings"])
    assert Path(rec["output"][: -len(".ipynb")] + ".audit.json").exists()


def test_runbook_fails_on_bad_manifests(cli):
    res = cli("run", "compliance_audit", "-e", "dev", "-p", "areas=[kubernetes]", "-p",
              f"manifests_dir={K8S_FIXTURES / 'bad'}", "--json")
    assert res.code == 1, res
    rec = res.json()
    assert "K8S-" in json.dumps(rec["error"]) and rec["results"]["checks_failed"] > 0
    ok = cli("run", "compliance_audit", "-e", "dev", "-p", "areas=[kubernetes]", "-p",
             f"manifests_dir={K8S_FIXTURES / 'good'}", "-p", "fail_on=low", "--json")
    assert ok.code == 0, ok


def test_runbook_passes_with_defaults_in_dev(cli):
    res = cli("run", "compliance_audit", "-e", "dev", "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["results"]["checks_total"] > 10 and Path(rec["results"]["report_path"]).exists()
