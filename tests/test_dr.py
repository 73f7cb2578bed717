"""The disaster-recovery drill against the real cluster, on a source database each test creates."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from stackbook.dr import drill as dr
from stackbook.run import db as sdb


def _databases(prefix: str) -> list[str]:
    with sdb.connect("postgres") as conn:
        return [r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                           (prefix.replace("_", r"\_") + "%",))]


def _drop(name: str) -> None:
    with sdb.connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def source(database_url):
    """A small database with awkward types, duplicates, nulls, a view, a matview and a sequence."""
    name = f"sbt_dr_{uuid.uuid4().hex[:10]}"
    with sdb.connect("postgres") as conn:
        conn.execute(f'create database "{name}"')
    with sdb.connect(name) as conn:
        conn.execute("create schema app")
        conn.execute("""create table app.orders (id bigserial primary key, amount numeric(12, 2), ratio float8,
                        at timestamptz default now(), tags text[], doc jsonb, blob bytea, span interval)""")
        conn.execute("""insert into app.orders (amount, ratio, tags, doc, blob, span)
                        select g * 1.25, g / 7.0, array['a', g::text], jsonb_build_object('g', g),
                               decode(md5(g::text), 'hex'), make_interval(secs => g)
                        from generate_series(1, 5000) g""")
        conn.execute("create table app.dupes (x text)")
        conn.execute("insert into app.dupes values ('same'), ('same'), (null), ('')")
        conn.execute("create table app.empty (x int)")
        conn.execute("create view app.big_orders as select * from app.orders where amount > 100")
        conn.execute("create materialized view app.totals as select count(*) n from app.orders")
        conn.execute("create table public.notes (t text)")
        conn.execute("insert into public.notes values ('hello')")
    yield name
    for db_name in _databases(f"{name}"):
        _drop(db_name)
    for path in dr.backups_dir().glob(f"{name}-*"):
        shutil.rmtree(path, ignore_errors=True)


def test_drill_against_a_scratch_database_passes(source):
    report = dr.run_drill(database=source, rto_target_s=300, rpo_target_s=300)
    assert report.passed, report.problems
    assert report.checksums_match and report.mismatches == []
    # app.orders, app.dupes, app.empty, public.notes and the heartbeat table
    assert report.tables_verified == report.tables_total == 5
    assert 0 < report.rto_seconds < 300 and 0 < report.rpo_seconds < 300
    assert report.scratch_dropped and _databases(f"{source}_drill") == []
    results = report.results()
    assert set(results) >= {"rto_seconds", "rpo_seconds", "tables_verified", "checksums_match", "rto_target_s",
                            "rpo_target_s"}
    backup = dr.Backup.load(report.backup_dir)
    assert {t.name: t.rows for t in backup.tables}["app.orders"] == 5000
    assert {t.name: t.rows for t in backup.tables}["app.dupes"] == 4
    assert stat.S_IMODE(Path(backup.dump).stat().st_mode) == 0o600
    assert Path(backup.dump).parent.parent == dr.backups_dir()


def test_dump_and_manifest_come_from_one_snapshot(source):
    """Rows written while the backup runs are in neither the dump nor the manifest, so they still agree."""
    stop = threading.Event()
    written = []

    def writer():
        with sdb.connect(source) as conn:
            while not stop.is_set():
                conn.execute("insert into app.orders (amount) values (1)")
                conn.execute("insert into app.dupes values ('late')")
                written.append(1)

    drill = dr.Drill(database=source, rto_target_s=300, rpo_target_s=300)
    drill.heartbeat()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        drill.backup()
    finally:
        stop.set()
        thread.join()
    drill.fail()
    drill.restore_and_verify()
    report = drill.report()
    assert written, "the writer never ran"
    assert report.passed, report.problems
    with sdb.connect(source) as conn:
        live = conn.execute("select count(*) from app.orders").fetchone()[0]
    manifest = {t.name: t.rows for t in drill.backup_.tables}
    assert 5000 <= manifest["app.orders"] <= live


def test_a_changed_table_fails_the_drill(source):
    drill = dr.Drill(database=source, rto_target_s=300, rpo_target_s=300)
    drill.heartbeat()
    backup = drill.backup()
    entry = next(t for t in backup.tables if t.name == "app.dupes")
    entry.checksum = "12345"  # the restored table will not match this
    drill.fail()
    drill.restore_and_verify()
    report = drill.report()
    assert not report.passed and not report.checksums_match
    assert any(p.startswith("app.dupes: content checksum") for p in report.problems)
    assert report.tables_verified == report.tables_total - 1


def test_a_corrupted_backup_fails_with_a_clear_message(source):
    drill = dr.Drill(database=source, rto_target_s=300, rpo_target_s=300)
    drill.heartbeat()
    backup = drill.backup()
    dump = Path(backup.dump)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    drill.fail()
    with pytest.raises(dr.DrError, match=r"backup file .*database\.pgdump is corrupted: its SHA-256"):
        drill.restore_and_verify()
    assert _databases(f"{source}_drill") == []  # nothing restored, no scratch database left
    with sdb.connect(source) as conn:  # the live database is untouched
        assert conn.execute("select count(*) from app.orders").fetchone() == (5000,)


def test_a_truncated_archive_stops_pg_restore_with_its_error(source):
    drill = dr.Drill(database=source, rto_target_s=300, rpo_target_s=300)
    drill.heartbeat()
    backup = drill.backup()
    dump = Path(backup.dump)
    dump.write_bytes(dump.read_bytes()[: backup.size_bytes // 2])
    backup.sha256 = dr._sha256(dump)  # a manifest that agrees: only pg_restore can tell
    drill.fail()
    with pytest.raises(dr.DrError, match=r"pg_restore|not a readable pg_dump archive") as info:
        drill.restore_and_verify()
    assert str(dump) in str(info.value)
    assert _databases(f"{source}_drill") == []


def test_missed_rto_target_fails_the_run(cli, source):
    res = cli("run", "dr_drill", "-p", f"database={source}", "-p", "rto_target_s=0", "--json")
    assert res.code == 1, res
    rec = res.json()
    assert rec["status"] == "failed"
    assert "RTO" in rec["error"]["evalue"] and "exceeds the target of 0 s" in rec["error"]["evalue"]
    results = rec["results"]
    assert results["rto_target_s"] == 0 and results["rto_seconds"] > 0
    assert results["checksums_match"] is True and results["drill_passed"] is False
    assert results["rpo_target_s"] == 300  # from infra/environments/dev.yml
    assert _databases(f"{source}_drill") == []


@pytest.mark.parametrize("target", ["stackbook", "mlflow", "SOURCE"])
def test_a_live_target_is_refused(source, target):
    target = source if target == "SOURCE" else target
    before = sorted(p.name for p in dr.backups_dir().iterdir())
    with pytest.raises(dr.DrRefused, match="is a live database"):
        dr.Drill(database=source, target=target)
    assert sorted(p.name for p in dr.backups_dir().iterdir()) == before  # refused before any backup


def test_system_databases_are_refused_even_with_force(source):
    with pytest.raises(dr.DrRefused, match="system database"):
        dr.Drill(database=source, target="postgres", force=True)


def test_an_existing_target_needs_force_and_is_then_kept(source):
    target = f"{source}_copy"
    with sdb.connect("postgres") as conn:
        conn.execute(f'create database "{target}" template template0')
    with pytest.raises(dr.DrRefused, match="already exists"):
        dr.Drill(database=source, target=target)
    report = dr.run_drill(database=source, target=target, force=True, rto_target_s=300, rpo_target_s=300)
    assert report.passed, report.problems
    assert _databases(target) == [target]  # forced targets are not dropped


def test_schemas_select_what_is_backed_up(source):
    report = dr.run_drill(database=source, schemas="app", rto_target_s=300, rpo_target_s=300)
    assert report.passed, report.problems
    backup = dr.Backup.load(report.backup_dir)
    assert backup.schemas == ["app", "stackbook"]  # the heartbeat's schema always comes along
    assert "public.notes" not in {t.name for t in backup.tables}
    with pytest.raises(dr.UsageError, match="schema.*nope.*not in database"):
        dr.backup(source, schemas="app,nope")


def test_targets_come_from_the_environment_file():
    import yaml

    from stackbook.core import project

    data = yaml.safe_load((project.environments_dir() / "prod.yml").read_text())
    t = dr.targets("prod")
    assert (t.rto_target_s, t.rpo_target_s) == (data["dr"]["rto_target_s"], data["dr"]["rpo_target_s"])
    assert dr.targets("prod", rto_target_s=0).rto_target_s == 0


def test_prune_keeps_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(dr, "backups_dir", lambda: tmp_path)
    names = [f"db-2026010{i}T000000Z-abcdef" for i in range(1, 5)] + ["db_other-20260101T000000Z-abcdef"]
    for n in names:
        (tmp_path / n).mkdir()
    removed = dr.prune("db", keep=2)
    assert sorted(Path(r).name for r in removed) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_manifest_is_json_with_counts_and_checksums(source):
    backup = dr.backup(source)
    try:
        data = json.loads(backup.manifest_path.read_text())
        assert data["snapshot"] and data["sha256"] == backup.sha256
        assert all({"schema", "table", "rows", "checksum"} <= set(t) for t in data["tables"])
        with psycopg.connect(sdb.url(source)) as conn:
            rows, checksum = dr.table_checksum(conn, "app", "dupes")
        assert {t["table"]: t["checksum"] for t in data["tables"]}["dupes"] == checksum and rows == 4
    finally:
        shutil.rmtree(backup.directory)


def test_a_table_locked_too_long_fails_the_backup_clearly(source, monkeypatch):
    monkeypatch.setattr(dr, "LOCK_WAIT", "300ms")
    before = sorted(p.name for p in dr.backups_dir().iterdir())
    with psycopg.connect(sdb.url(source)) as holder:  # a transaction holding ACCESS EXCLUSIVE on app.dupes
        holder.execute("lock table app.dupes in access exclusive mode")
        with pytest.raises(dr.DrError, match=r"table app\.dupes .* stayed locked by another session"):
            dr.backup(source)
        holder.rollback()
    assert sorted(p.name for p in dr.backups_dir().iterdir()) == before  # no half backup left
