"""The project-local PostgreSQL: a second checkout runs side by side, from pgserver's bundled binaries;
as root, a checkout the cluster's OS user cannot reach keeps its data under /var/lib/stackbook."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pgserver
import psycopg
import pytest

from stackbook.core import project
from tests.conftest import ROOT, TEST_DATABASE, run_cli

PGSERVER_BIN = str(Path(pgserver.__file__).parent / "pginstall" / "bin")


@pytest.fixture()
def second_checkout():
    # a folder the unprivileged cluster user can reach (pytest's tmp dirs and the state folder are 0700)
    path = Path(tempfile.mkdtemp(prefix="stackbook-second-checkout-"))
    path.chmod(0o755)
    (path / "runbooks").mkdir(parents=True)
    (path / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    env = {"STACKBOOK_PROJECT": str(path), "STACKBOOK_HOME": str(path / ".stackbook"), "STACKBOOK_PG_BIN": PGSERVER_BIN,
           "DATABASE_URL": ""}
    yield path, env
    run_cli("down", env=env)
    shutil.rmtree(path, ignore_errors=True)


def test_two_checkouts_side_by_side_with_bundled_binaries(database_url, second_checkout):
    path, env = second_checkout
    first = run_cli("status", "--json").json()
    up = run_cli("up", "--json", env=env)
    assert up.code == 0, up
    doc = up.json()
    assert doc["started"] is True and doc["running"] is True
    assert doc["bindir"] == PGSERVER_BIN and doc["port"] != first["port"]
    assert doc["data_dir"].startswith(str(path))
    with psycopg.connect(doc["database_url"]) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == TEST_DATABASE  # made on demand
        assert conn.execute("show ssl").fetchone()[0] in ("on", "off")
    again = run_cli("up", env=env)
    assert again.code == 0 and "already running" in again.out
    # the first checkout's cluster is untouched
    assert run_cli("status", "--json").json()["running"] is True
    down = run_cli("down", env=env)
    assert down.code == 0 and "stopped" in down.out
    status = run_cli("status", "--json", env=env).json()
    assert status["running"] is False
    assert run_cli("status", env=env).code == 1


def test_database_url_set_starts_nothing(database_url):
    res = run_cli("up", env={"DATABASE_URL": database_url})
    assert res.code == 0 and "DATABASE_URL is set" in res.err
    st = run_cli("status", "--json", env={"DATABASE_URL": database_url}).json()
    assert st["mode"] == "external" and st["database_url"] == database_url


def test_no_database_exits_2_with_the_fix(tmp_path):
    project = tmp_path / "p"
    (project / "runbooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    shutil.copy(ROOT / "tests" / "fixtures" / "foundation" / "typed.ipynb", project / "runbooks" / "typed.ipynb")
    (project / "infra" / "environments").mkdir(parents=True)
    (project / "infra" / "environments" / "dev.yml").write_text("params: {}\n")
    res = run_cli("run", "typed", env={"STACKBOOK_PROJECT": str(project), "STACKBOOK_HOME": str(project / ".sb"),
                                       "DATABASE_URL": ""}, cwd=project)
    assert res.code == 2 and "stackbook up" in res.err


# ---------------------------------------------------------------- a checkout the cluster's OS user cannot reach

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the cluster as another OS user")


def _reaches(path: Path) -> bool:
    return subprocess.run(["test", "-x", str(path)], user="stackbook", cwd="/").returncode == 0


@pytest.fixture()
def hidden_clone(tmp_path):
    """A git clone of this repository inside a folder only root can enter (mode 0700, as /root is)."""
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    clone = hidden / "stackbook"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    env = {"STACKBOOK_PROJECT": str(clone), "STACKBOOK_HOME": "", "STACKBOOK_STATE_DIR": "", "STACKBOOK_DATABASE": "",
           "DATABASE_URL": ""}
    yield clone, env
    run_cli("down", env=env, cwd=clone)
    key = hashlib.sha256(str(clone / ".stackbook" / "pg").encode()).hexdigest()[:12]
    shutil.rmtree(Path("/var/lib/stackbook") / key, ignore_errors=True)


@as_root
def test_a_checkout_the_database_user_cannot_reach_keeps_its_data_outside(database_url, hidden_clone):
    clone, env = hidden_clone
    assert not _reaches(clone)
    up = run_cli("up", "--json", env=env, cwd=clone)
    assert up.code == 0, up
    doc = up.json()
    key = hashlib.sha256(str(clone / ".stackbook" / "pg").encode()).hexdigest()[:12]
    data = Path(doc["data_dir"])
    assert doc["running"] is True and data == Path("/var/lib/stackbook") / key / "pg" / "data"
    assert not str(data).startswith(str(clone)) and _reaches(data)
    assert data.stat().st_uid == data.parent.stat().st_uid == data.parent.parent.stat().st_uid != 0
    assert stat.S_IMODE(data.parent.parent.stat().st_mode) == 0o700
    info = clone / ".stackbook" / "pg" / "cluster.json"  # port and password stay in the checkout
    assert info.exists() and stat.S_IMODE(info.stat().st_mode) == 0o600
    human = run_cli("status", env=env, cwd=clone)
    assert human.code == 0 and str(data) in human.out and "cannot reach" in human.out, human
    status = run_cli("status", "--json", env=env, cwd=clone).json()
    assert status["data_dir"] == str(data) and str(clone / ".stackbook" / "pg") in status["data_dir_note"]
    with psycopg.connect(status["database_url"], autocommit=True) as conn:
        conn.execute("create table reached (n int)")
        conn.execute("insert into reached values (42)")
        assert conn.execute("select current_database(), sum(n) from reached").fetchone() == ("stackbook", 42)
    assert run_cli("status", "--json").json()["data_dir"].startswith(str(ROOT))  # this checkout's cluster: as it was
    down = run_cli("down", env=env, cwd=clone)
    assert down.code == 0 and "stopped" in down.out, down


@as_root
def test_an_explicit_home_the_database_user_cannot_reach_is_refused_with_the_fix(hidden_clone):
    clone, env = hidden_clone
    home = clone / "elsewhere"
    res = run_cli("up", env={**env, "STACKBOOK_HOME": str(home)}, cwd=clone)
    assert res.code == 1, res
    assert f"cannot reach {home / 'pg'}" in res.err and "STACKBOOK_HOME" in res.err
    assert not (home / "pg" / "data" / "PG_VERSION").exists()


# ---------------------------------------------------------------- the test session's own database and state folder


def test_the_session_has_its_own_database_and_state_folder(database_url):
    """conftest gives every process the tests start a database and a state folder that are not the developer's."""
    st = run_cli("status", "--json").json()
    assert st["database"] == TEST_DATABASE and st["database_url"].endswith(f"/{TEST_DATABASE}")
    assert database_url.endswith(f"/{TEST_DATABASE}")
    assert project.state_dir() == project.home_dir() / "test" and project.run_store_root().startswith(
        str(project.state_dir()))
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres") as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
    assert {TEST_DATABASE, "mlflow_test"} <= names


def test_a_bad_database_name_is_refused_naming_the_setting(database_url):
    res = run_cli("status", env={"STACKBOOK_DATABASE": 'x"; drop'})
    assert res.code == 2, res
    assert "STACKBOOK_DATABASE" in res.err and "lower-case letters" in res.err and "Traceback" not in res.err
