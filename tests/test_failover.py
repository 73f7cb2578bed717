"""The failover runbook (runbooks/dr/failover.ipynb) for real: restore into a standby, a person attests, verified."""

from __future__ import annotations

import shutil
import uuid

import pytest

from stackbook.dr import drill as dr
from stackbook.run import db as sdb


def _drop(name: str) -> None:
    with sdb.connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def lost_primary(database_url):
    """A small database with a backup under .stackbook/backups, as the weekly drill leaves one."""
    name = f"sbt_fo_{uuid.uuid4().hex[:10]}"
    with sdb.connect("postgres") as conn:
        conn.execute(f'create database "{name}"')
    with sdb.connect(name) as conn:
        conn.execute("create table public.orders (id int primary key, amount numeric)")
        conn.execute("insert into public.orders select g, g * 1.5 from generate_series(1, 500) g")
    dr.backup(database=name)
    yield name
    for db_name in (name, f"{name}_standby"):
        _drop(db_name)
    for path in dr.backups_dir().glob(f"{name}-*"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow  # ~20 s: a backup, a restore, an attest (nbmake runs the runbook's dry run in `make test`)
def test_failover_restores_waits_for_the_person_then_verifies(cli, db, lost_primary):
    standby = f"{lost_primary}_standby"
    res = cli("run", "failover", "-p", "dry_run=false", "-p", f"database={lost_primary}", "--json")
    assert res.code == 4, res
    rec = res.json()
    assert rec["status"] == "waiting" and "Point the application" in rec["waiting"]["instruction"]
    with sdb.connect(standby) as conn:  # restored and verified before the manual step
        assert conn.execute("select count(*) from public.orders").fetchone()[0] == 500
    done = cli("attest", rec["id"], "--by", "oncall", "--note", "app on the standby", "--json")
    assert done.code == 0, done
    row = db.execute("select status, results from stackbook.runs where id = %s", (rec["id"],)).fetchone()
    assert row[0] == "succeeded" and row[1]["target"] == standby and row[1]["tables_verified"] >= 1, row
    assert row[1]["dry_run"] is False

    itself = cli("run", "failover", "-p", "dry_run=false", "-p", f"database={lost_primary}",
                 "-p", f"target={lost_primary}", "--json")
    assert itself.code == 1 and "must not be the lost primary" in itself.err, itself
