"""The project-local PostgreSQL: a second checkout runs side by side, from pgserver's bundled binaries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pgserver
import psycopg
import pytest

from tests.conftest import ROOT, run_cli

PGSERVER_BIN = str(Path(pgserver.__file__).parent / "pginstall" / "bin")


@pytest.fixture()
def second_checkout():
    # under the project so the unprivileged cluster user can reach it (pytest's tmp dirs are 0700)
    path = ROOT / ".stackbook" / "tmp" / "second-checkout"
    shutil.rmtree(path, ignore_errors=True)
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
        assert conn.execute("select current_database()").fetchone()[0] == "stackbook"
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
