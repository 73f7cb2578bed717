"""stackbook against a managed-style PostgreSQL: an ordinary login over verified TLS (issue 14, section 2).

A second PostgreSQL server, started here (the system's binaries or pgserver's, through ``pgcluster``'s helpers)
in a temporary folder: TLS with a server certificate for ``localhost``/127.0.0.1 signed by a test CA, ``hostssl``
only for TCP, SCRAM passwords. The DBA (the bootstrap superuser) creates the databases ``stackbook`` and
``mlflow`` and the login role ``app`` with exactly the privileges the README's "Running against your PostgreSQL"
section lists (``APP_GRANTS`` below is that SQL). Everything then runs as ``app`` with
``DATABASE_URL=postgresql://app:...@localhost:PORT/stackbook?sslmode=verify-full&sslrootcert=CA`` and a state
folder of its own. The server is stopped at the end of the module, also when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from stackbook.run import pgcluster
from tests.conftest import run_cli

DBA = "dba"
APP = "app"
# The README's "Running against your PostgreSQL" section, as the DBA runs it (keep the two the same).
APP_GRANTS = """
CREATE ROLE app LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
GRANT pg_read_all_settings, pg_read_all_stats, pg_monitor TO app;
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE stackbook, mlflow TO app;
"""
# in each of the two databases (public is owned by pg_database_owner; PostgreSQL 15 takes CREATE from PUBLIC)
APP_SCHEMA_GRANTS = "GRANT USAGE, CREATE ON SCHEMA public TO app;"
# runbooks not in the daily pipeline: each runs once here, with its defaults (destructive ones dry-run by default);
# the model's need the one the daily pipeline registers
STANDALONE = ("platform_check", "load_csv_folder", "provision_cluster", "provision_warehouse")
NEED_THE_MODEL = ("rollback_model", "serve_model")


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _make_certificates(folder: Path) -> None:
    """ca.crt/ca.key, and server.crt/server.key for localhost and 127.0.0.1 signed by the CA."""
    _openssl("req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=stackbook test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    _openssl("req", "-new", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr",
             cwd=folder)
    (folder / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initdb(bindir: str, user: str | None, base: Path, password: str, port: int) -> Path:
    data = base / "data"
    data.mkdir(mode=0o700)
    pgcluster._chown(data, user)
    pwfile = base / "dba.pw"
    pwfile.write_text(password + "\n")
    pgcluster._chown(pwfile, user)
    done = pgcluster._run_as(user, [str(Path(bindir) / "initdb"), "-D", str(data), "-U", DBA,
                                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"])
    pwfile.unlink()
    assert done.returncode == 0, done.stderr
    for name in ("server.crt", "server.key"):
        shutil.copy(base / "tls" / name, data / name)
        pgcluster._chown(data / name, user)
    (data / "server.key").chmod(0o600)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\n# stackbook test: a managed-style server\n"
                   f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}/sock'\n"
                   "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                   "password_encryption = 'scram-sha-256'\nmax_connections = 100\n"
                   + "".join(f"{k} = '{v}'\n" for k, v in pgcluster.LOG_SETTINGS.items()))
    (data / "pg_hba.conf").write_text("local    all  all                scram-sha-256\n"
                                      "hostssl  all  all  127.0.0.1/32  scram-sha-256\n")
    return data


def _provision(dba_url: str, app_password: str) -> None:
    import psycopg

    with psycopg.connect(dba_url, autocommit=True) as conn:
        conn.execute("create database stackbook")
        conn.execute("create database mlflow")
        for statement in APP_GRANTS.format(password=app_password).strip().splitlines():
            conn.execute(statement)
    for name in ("stackbook", "mlflow"):
        with psycopg.connect(dba_url.replace("/postgres?", f"/{name}?"), autocommit=True) as conn:
            conn.execute(APP_SCHEMA_GRANTS)


class Managed:
    """The running server: URLs for the DBA and for ``app``, and the environment the CLI runs with."""

    def __init__(self, base: Path, port: int, dba_password: str, app_password: str):
        ca = base / "tls" / "ca.crt"
        tls = f"sslmode=verify-full&sslrootcert={ca}"
        self.base, self.port, self.ca = base, port, ca
        self.dba_url = f"postgresql://{DBA}:{dba_password}@localhost:{port}/postgres?{tls}"
        self.url = f"postgresql://{APP}:{app_password}@localhost:{port}/stackbook?{tls}"
        self.env = {"DATABASE_URL": self.url, "STACKBOOK_DATABASE": "stackbook",
                    "STACKBOOK_STATE_DIR": str(base / "state")}
        self.pipeline_ran = False

    def cli(self, *args: str, timeout: float = 900):
        return run_cli(*args, env=self.env, timeout=timeout)

    def as_dba(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.dba_url, autocommit=True) as conn:
            conn.execute(statement)

    def query(self, statement: str, dbname: str = "stackbook") -> tuple:
        """One row, read as ``app``."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        with psycopg.connect(make_conninfo(self.url, dbname=dbname), autocommit=True) as conn:
            return conn.execute(statement).fetchone()


@pytest.fixture(scope="module")
def managed():
    bindir = pgcluster.find_bindir()
    if not pgcluster._supports_ssl(bindir):
        pytest.skip(f"the PostgreSQL binaries in {bindir} are built without OpenSSL")
    user = pgcluster._ensure_os_user()
    base = Path(tempfile.mkdtemp(prefix="stackbook-managed-pg-"))
    base.chmod(0o755)  # the server's OS user reaches its data, certificates and socket folder
    (base / "tls").mkdir()
    (base / "sock").mkdir()
    pgcluster._chown(base / "sock", user)
    _make_certificates(base / "tls")
    port, dba_password, app_password = _free_port(), secrets.token_hex(12), secrets.token_hex(12)
    data = _initdb(bindir, user, base, dba_password, port)
    pg_ctl = str(Path(bindir) / "pg_ctl")
    log = base / "postgres.log"
    log.touch()
    pgcluster._chown(log, user)
    started = pgcluster._run_as(user, [pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)])
    try:
        assert started.returncode == 0, started.stderr + log.read_text()
        server = Managed(base, port, dba_password, app_password)
        _provision(server.dba_url, app_password)
        yield server
    finally:
        pgcluster._run_as(user, [pg_ctl, "stop", "-m", "fast", "-w", "-D", str(data)])
        shutil.rmtree(base, ignore_errors=True)


def test_the_role_is_ordinary_and_only_verified_tls_gets_in(managed):
    import psycopg

    with psycopg.connect(managed.url) as conn:
        row = conn.execute("select rolsuper, rolcreaterole, rolcreatedb, ssl from pg_roles, pg_stat_ssl "
                           "where rolname = current_user and pid = pg_backend_pid()").fetchone()
    assert row == (False, False, False, True)
    plain = managed.url.replace("sslmode=verify-full", "sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(plain).close()
    wrong_host = managed.url.replace("@localhost:", "@127.0.0.2:")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wrong_host, connect_timeout=5).close()


@pytest.mark.slow
def test_daily_pipeline_as_the_app_role(managed):
    res = managed.cli("pipeline", "run", "daily", "--profile", "test", "--json", timeout=1200)
    assert res.code == 0, res
    out = res.json()
    assert out["status"] == "succeeded" and not out["failed"], res
    assert {"load_jaffle_shop", "build_warehouse", "train_customer_model", "compliance_audit"} <= set(out["ran"])
    profile = (managed.base / "state" / "dbt" / "dev" / "profiles.yml").read_text()
    assert "sslmode: verify-full" in profile and f"sslrootcert: {managed.ca}" in profile
    # MLflow's tables went into the mlflow database (its URL keeps sslmode and sslrootcert), owned by app
    assert managed.query("select count(*) from mlflow.public.experiments", "mlflow")[0] >= 1
    managed.pipeline_ran = True


@pytest.mark.parametrize("runbook", STANDALONE + NEED_THE_MODEL)
def test_every_other_runbook_runs_as_the_app_role(managed, runbook):
    if runbook in NEED_THE_MODEL and not managed.pipeline_ran:
        pytest.skip(f"{runbook} needs the model the daily pipeline registers (a slow test: run without -m 'not slow')")
    res = managed.cli("run", runbook, "--json")
    assert res.code == 0, res
    assert res.json()["status"] == "succeeded", res


def test_provisioning_names_createrole_and_applies_nothing(managed):
    res = managed.cli("run", "provision_warehouse", "-p", "dry_run=false", "--json")
    assert res.code == 1, res
    said = res.err + res.out
    assert "lacks the CREATEROLE privilege" in said and 'ALTER ROLE "app" CREATEROLE' in said, res
    assert "nothing was applied" in said, res
    assert managed.query("select count(*) from pg_roles where rolname like 'stackbook\\_%'") == (0,)
    assert managed.query("select to_regnamespace('audit')") == (None,)


def test_compliance_audit_skips_what_the_role_cannot_read(managed):
    import psycopg

    from stackbook.audit import postgres as pg_rules

    with psycopg.connect(managed.url) as conn:
        findings = pg_rules.audit(conn)
    by_rule: dict[str, set[str]] = {}
    for f in findings:
        by_rule.setdefault(f.id, set()).add(f.status)
    assert "error" not in set().union(*by_rule.values()), findings
    for rule in ("PG-008", "PG-009", "PG-010", "PG-011"):  # pg_hba_file_rules and pg_authid: superuser only
        assert by_rule[rule] == {"skip"}, findings
    hba = next(f for f in findings if f.id == "PG-008")
    assert 'GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO "app"' in hba.evidence, hba
    for rule in ("PG-001", "PG-002", "PG-003", "PG-004", "PG-005", "PG-006", "PG-007"):
        assert by_rule[rule] == {"pass"}, (rule, findings)
    assert "fail" not in by_rule["PG-012"], findings


def test_dr_drill_names_the_privilege_it_needs(managed):
    refused = managed.cli("run", "dr_drill", "--json")
    assert refused.code != 0, refused
    said = refused.err + refused.out
    assert "lacks the CREATEDB privilege" in said and 'ALTER ROLE "app" CREATEDB' in said, refused
    managed.as_dba("ALTER ROLE app CREATEDB")
    try:
        res = managed.cli("run", "dr_drill", "--json")
    finally:
        managed.as_dba("ALTER ROLE app NOCREATEDB")
    assert res.code == 0, res


def test_book_and_metrics_as_the_app_role(managed):
    out = managed.base / "book"
    res = managed.cli("book", "-e", "dev", "--out", str(out), "--json")
    assert res.code == 0, res
    metrics = managed.cli("metrics", "--out", str(managed.base / "metrics.prom"))
    assert metrics.code == 0, metrics
    text = (managed.base / "metrics.prom").read_text()
    assert "stackbook_" in text
    json.dumps(res.json())
    assert os.path.exists(out)
