"""Disaster-recovery drill: back up, lose the primary, restore elsewhere, prove it, measure.

A drill, step by step (``Drill`` holds the state; the ``dr_drill`` runbook calls
one method per step):

1. ``heartbeat()`` writes a row into ``stackbook.dr_heartbeat`` of the live
   database (``beat()``; a scheduler may call it at intervals too).
2. ``backup()`` opens a REPEATABLE READ transaction, exports its snapshot with
   ``pg_export_snapshot()``, takes ACCESS SHARE locks on every table (so none
   can be dropped under the backup), runs ``pg_dump -Fc --snapshot=...`` and,
   while it runs, reads every table's row count and content checksum in the
   same transaction: dump and manifest show the very same state. The manifest
   (``manifest.json``, with the dump's SHA-256) sits beside the dump under
   ``.stackbook/backups/<database>-<UTC time>-<id>/``.
3. ``fail()`` marks the simulated loss of the primary: the RTO clock starts,
   and the server time of the failure is what the RPO is measured against.
4. ``restore_and_verify()`` checks the dump against its SHA-256, creates the
   scratch database, runs ``pg_restore --exit-on-error``, compares every
   table's count and checksum with the manifest, reads the newest heartbeat of
   the restored database, and drops the scratch database (always, also when a
   step fails), unless the target was forced.
5. ``report()``: RTO = failure until verification passed; RPO = failure time
   minus the newest heartbeat in the restored database; both compared with the
   targets (``dr: {rto_target_s, rpo_target_s}`` of the environment file, or
   explicit values). The drill passes when every table matches and both
   targets are met.

Object storage: with ``dr: {backup_store: s3://bucket/prefix}`` in the environment
file, ``backup()`` uploads dump and manifest to ``<backup_store>/<backup name>/``
(papermill's boto3 client, the environment's ``s3_endpoint``), and
``restore_and_verify()`` downloads them into a fresh folder and restores that
download: the RTO includes it. With ``backup_copy: s3://other-bucket/prefix``
(and ``backup_copy_region``), the same files go to a second bucket, the copy
in another region, and the drill verifies that copy's dump against the
manifest's SHA-256 too (a missing or different copy is a problem of the drill).

The heartbeat is written just before the snapshot, so the RPO measured is an
upper bound of the data a restore of this backup would lose (failure time
minus the newest write known to be in it). A scheduler may call ``beat()`` at
intervals, so that the newest heartbeat of any backup also tells its age.

Format: ``pg_dump -Fc`` (custom), one compressed file. A single file is easy to
checksum, copy and keep, ``pg_restore -j`` restores it in parallel all the
same, and on a database this size a parallel dump (``-Fd -j``, one file per
table) would save nothing: its gain is on tables of many gigabytes, where the
directory format is the better choice.

The checksum of a table is the sum of the first 64 bits of ``md5(row::text)``
over its rows (order-independent, duplicates counted), with the session's
text formats pinned (UTC, ISO dates, ``extra_float_digits = 1``, hex bytea) so
that both sides print values alike. Materialised views are not in the
manifest: ``pg_restore`` refreshes them, so they need not equal the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from stackbook.core import project
from stackbook.core.errors import DatabaseUnavailable, DrError, DrRefused, UsageError  # noqa: F401 (re-exported)

HEARTBEAT_SCHEMA = "stackbook"
HEARTBEAT_TABLE = "dr_heartbeat"
HEARTBEAT_KEEP_DAYS = 7
SYSTEM_DATABASES = ("postgres", "template0", "template1")
DUMP_NAME = "database.pgdump"
MANIFEST_NAME = "manifest.json"
LOCK_WAIT = "30s"
SESSION_SETTINGS = (
    "set TimeZone = 'UTC'",
    "set DateStyle = 'ISO, YMD'",
    "set IntervalStyle = 'postgres'",
    "set extra_float_digits = 1",
    "set bytea_output = 'hex'",
)
TABLES_SQL = """
    select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'r' and n.nspname = any(%s)
      and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                      and d.deptype = 'e')
    order by 1, 2"""
SCHEMAS_SQL = """
    select nspname from pg_namespace
    where nspname not in ('information_schema') and nspname !~ '^pg_' order by 1"""
HEARTBEAT = sql.Identifier(HEARTBEAT_SCHEMA, HEARTBEAT_TABLE)


def backups_dir() -> Path:
    path = project.state_dir() / "backups"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def live_databases(source: str) -> set[str]:
    """Databases a drill never restores into unless forced: the source and the platform's own."""
    from stackbook.run import pgcluster

    names = {source, *pgcluster.DATABASES}
    return names | {pgcluster.database_name(n) for n in names}


def _connect(database: str, autocommit: bool = True):
    from stackbook.run import db

    return db.connect(database, autocommit=autocommit)


def _pin_formats(conn) -> None:
    for setting in SESSION_SETTINGS:
        conn.execute(setting)


def _database_exists(name: str) -> bool:
    with _connect("postgres") as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def _pg_env(database: str) -> dict[str, str]:
    """libpq environment for a client tool: the password never appears on a command line."""
    from psycopg.conninfo import conninfo_to_dict

    from stackbook.core.privacy import TELEMETRY_OFF
    from stackbook.run import db

    info = conninfo_to_dict(db.url(database))
    env = {**os.environ, **TELEMETRY_OFF}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("password", "PGPASSWORD"),
                     ("dbname", "PGDATABASE"), ("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT")):
        if info.get(key) is not None:
            env[var] = str(info[key])
    env.pop("DATABASE_URL", None)
    return env


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- heartbeat


def beat(database: str = "stackbook", source: str = "dr_drill") -> datetime:
    """Write a heartbeat row (creating ``stackbook.dr_heartbeat`` if needed); returns its server time."""
    import psycopg

    with _connect(database) as conn:
        for attempt in (1, 2):
            try:
                conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(HEARTBEAT_SCHEMA)))
                conn.execute(sql.SQL("""create table if not exists {} (
                    id bigint generated always as identity primary key,
                    beat_at timestamptz not null default clock_timestamp(),
                    source text not null default '')""").format(HEARTBEAT))
                break
            except psycopg.errors.UniqueViolation:  # created concurrently
                if attempt == 2:
                    raise
        conn.execute(sql.SQL("delete from {} where beat_at < now() - make_interval(days => %s)").format(HEARTBEAT),
                     (HEARTBEAT_KEEP_DAYS,))
        return conn.execute(sql.SQL("insert into {} (source) values (%s) returning beat_at").format(HEARTBEAT),
                            (source,)).fetchone()[0]


# ---------------------------------------------------------------- backup


@dataclass
class TableEntry:
    schema: str
    table: str
    rows: int
    checksum: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Backup:
    database: str
    directory: str
    dump: str
    sha256: str
    size_bytes: int
    snapshot: str
    snapshot_at: str  # server time inside the snapshot's transaction
    schemas: list[str]
    whole_database: bool
    tables: list[TableEntry]
    skipped: list[str]  # tables dropped between the snapshot and the lock: in neither dump nor manifest
    seconds: float
    format: str = "custom"

    @property
    def manifest_path(self) -> Path:
        return Path(self.directory) / MANIFEST_NAME

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_manifest(self) -> Path:
        path = self.manifest_path
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        path.chmod(0o600)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Backup:
        """A backup from its manifest (the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            data["tables"] = [TableEntry(**t) for t in data["tables"]]
            return cls(**data)
        except FileNotFoundError:
            raise DrError(f"no backup manifest at {path}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise DrError(f"backup manifest {path} is not valid: {exc}") from None

    def summary(self) -> dict[str, Any]:
        return {"database": self.database, "dump": self.dump, "size_bytes": self.size_bytes,
                "tables": len(self.tables), "rows": self.total_rows, "snapshot_at": self.snapshot_at,
                "seconds": round(self.seconds, 3), "skipped": self.skipped}

    def _repr_markdown_(self) -> str:
        head = (f"**backup of `{self.database}`**: {len(self.tables)} tables, {self.total_rows} rows, "
                f"{self.size_bytes} bytes in {self.seconds:.2f} s, snapshot at {self.snapshot_at}\n\n"
                f"`{self.dump}`\n\n| table | rows | checksum |\n| --- | ---: | --- |\n")
        return head + "\n".join(f"| {t.name} | {t.rows} | `{t.checksum}` |" for t in self.tables)


def table_checksum(conn, schema: str, table: str) -> tuple[int, str]:
    """Row count and order-independent content checksum of one table (in the connection's snapshot)."""
    row = conn.execute(sql.SQL(
        "select count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint), 0)::text "
        "from {} t").format(sql.Identifier(schema, table))).fetchone()
    return int(row[0]), row[1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_schemas(schemas: str | list[str] | None) -> list[str] | None:
    if schemas is None:
        return None
    if isinstance(schemas, str):
        schemas = [s.strip() for s in schemas.split(",")]
    out = [s for s in schemas if s]
    return out or None


def backup(database: str = "stackbook", schemas: str | list[str] | None = None,
           directory: str | Path | None = None) -> Backup:
    """``pg_dump -Fc`` of the database (or of ``schemas`` plus the heartbeat's) and its manifest, one snapshot."""
    wanted = _parse_schemas(schemas)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(directory) if directory else backups_dir() / f"{database}-{stamp}-{secrets.token_hex(3)}"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return _backup_into(out, database, wanted)
    except BaseException:
        if not directory:
            shutil.rmtree(out, ignore_errors=True)  # no half backup left behind
        raise


def _backup_into(out: Path, database: str, wanted: list[str] | None) -> Backup:
    """Dump ``database`` (or the schemas ``wanted``) into ``out`` from one snapshot, with per-table checksums."""
    import psycopg

    dump = out / DUMP_NAME
    t0 = time.monotonic()
    try:
        conn = _connect(database, autocommit=False)
    except (psycopg.OperationalError, DatabaseUnavailable) as exc:
        raise DrError(f"cannot connect to database {database!r} to back it up: {str(exc).strip()}") from None
    with conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        _pin_formats(conn)
        snapshot, snapshot_at = conn.execute("select pg_export_snapshot(), clock_timestamp()").fetchone()
        selected, whole = _selected_schemas(conn, database, wanted)
        locked, skipped = _lock_tables(conn, database, conn.execute(TABLES_SQL, (selected,)).fetchall())
        args = _pg_dump_args(dump, snapshot, selected if not whole else None, skipped)
        entries, returncode, err = _dump_while_checksumming(conn, args, database, locked)
        conn.rollback()
    if returncode != 0:
        raise DrError(f"pg_dump of database {database!r} failed (exit {returncode}); nothing was kept "
                      f"in {out}:\n{_tail(err)}")
    dump.chmod(0o600)
    result = Backup(
        database=database, directory=str(out), dump=str(dump), sha256=_sha256(dump), size_bytes=dump.stat().st_size,
        snapshot=snapshot, snapshot_at=snapshot_at.isoformat(), schemas=selected, whole_database=whole,
        tables=entries, skipped=skipped, seconds=time.monotonic() - t0,
    )
    result.write_manifest()
    return result


def _selected_schemas(conn, database: str, wanted: list[str] | None) -> tuple[list[str], bool]:
    """The schemas to back up (every one, or ``wanted`` and the heartbeat's) and whether that is the whole database."""
    existing = [r[0] for r in conn.execute(SCHEMAS_SQL)]
    if wanted is None:
        return existing, True
    unknown = [s for s in wanted if s not in existing]
    if unknown:
        raise UsageError(f"schema(s) {', '.join(unknown)} not in database {database!r} "
                         f"(it has: {', '.join(existing)})")
    return sorted({*wanted, HEARTBEAT_SCHEMA} & set(existing)), False


def _lock_tables(conn, database: str, tables: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """ACCESS SHARE locks on the tables, so none is altered or dropped until the dump has read it;
    the tables locked, and those dropped since the snapshot (``schema.table``)."""
    import psycopg

    conn.execute(f"set local lock_timeout = '{LOCK_WAIT}'")
    locked, skipped = [], []
    for schema, table in tables:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("lock table {} in access share mode").format(sql.Identifier(schema, table)))
            locked.append((schema, table))
        except psycopg.errors.UndefinedTable:  # dropped after the snapshot was taken
            skipped.append(f"{schema}.{table}")
        except psycopg.errors.LockNotAvailable:
            raise DrError(f"table {schema}.{table} of database {database!r} stayed locked by another session "
                          f"for {LOCK_WAIT} (DDL or a long transaction holding ACCESS EXCLUSIVE): see "
                          "pg_locks, let it finish, then run the drill again") from None
    return locked, skipped


def _pg_dump_args(dump: Path, snapshot: str, schemas: list[str] | None, skipped: list[str]) -> list[str]:
    """pg_dump of the exported snapshot into ``dump`` (custom format): ``schemas`` only, unless None."""
    from stackbook.run.pgcluster import pg_tool

    args = [pg_tool("pg_dump"), "-Fc", f"--snapshot={snapshot}", f"--lock-wait-timeout={LOCK_WAIT}",
            "--no-password", "-f", str(dump)]
    args += [f"--schema={sql.Identifier(s).as_string()}" for s in schemas or ()]
    args += [f"--exclude-table={sql.Identifier(*s.split('.', 1)).as_string()}" for s in skipped]
    return args


def _dump_while_checksumming(conn, args: list[str], database: str,
                             locked: list[tuple[str, str]]) -> tuple[list[TableEntry], int, str]:
    """Run pg_dump while checksumming the locked tables in the same snapshot; the entries, its exit code, stderr."""
    proc = subprocess.Popen(args, env=_pg_env(database), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        entries = [TableEntry(s, t, *table_checksum(conn, s, t)) for s, t in locked]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _, err = proc.communicate()
    return entries, proc.returncode, err


def prune(database: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest backups of ``database`` under ``.stackbook/backups``."""
    if keep < 1:
        raise UsageError(f"keep must be at least 1, got {keep}")
    pattern = re.compile(re.escape(database) + r"-\d{8}T\d{6}Z-[0-9a-f]{6}")
    found = sorted((p for p in backups_dir().iterdir() if p.is_dir() and pattern.fullmatch(p.name)),
                   key=lambda p: p.name, reverse=True)
    removed = []
    for old in found[keep:]:
        shutil.rmtree(old)
        removed.append(str(old))
    return removed


# ---------------------------------------------------------------- restore and verify


def check_target(source: str, target: str, force: bool = False) -> bool:
    """Refuse a restore target that is live or exists, unless forced. Returns True when it is to be created."""
    if not target or len(target) > 63:
        raise UsageError(f"restore target {target!r} is not a valid database name (1 to 63 characters)")
    if target in SYSTEM_DATABASES:
        raise DrRefused(f"restore target {target!r} is a system database: never restored into, even with force")
    live = target in live_databases(source)
    exists = _database_exists(target)
    if live and not force:
        raise DrRefused(f"restore target {target!r} is a live database (the source {source!r} or one stackbook "
                        "runs on): a drill restores into a scratch database; pass force=True only to restore "
                        "over it on purpose")
    if exists and not force:
        raise DrRefused(f"restore target {target!r} already exists: drop it, choose another target, or pass "
                        "force=True to restore over it (it is then kept, not dropped)")
    if not exists:
        check_can_create_database()
    return not exists


def check_can_create_database() -> None:
    """DrRefused unless the connected role may create the scratch database (SUPERUSER or CREATEDB)."""
    with _connect("postgres") as conn:
        user, allowed = conn.execute("select current_user, rolsuper or rolcreatedb from pg_roles "
                                     "where rolname = current_user").fetchone()
    if not allowed:
        raise DrRefused(f"the drill restores into a scratch database it creates, and role {user!r} lacks the "
                        f"CREATEDB privilege: a DBA grants it with ALTER ROLE {sql.Identifier(user).as_string()} "
                        "CREATEDB (or run the drill as a role that has it, or restore into an existing scratch "
                        "database with target=NAME, force=True)")


def check_dump(backup: Backup) -> None:
    """The dump file is there, has the SHA-256 of the manifest and reads as an archive."""
    from stackbook.run.pgcluster import pg_tool

    dump = Path(backup.dump)
    if not dump.exists():
        raise DrError(f"backup file {dump} is missing: take a new backup")
    digest = _sha256(dump)
    if digest != backup.sha256:
        raise DrError(f"backup file {dump} is corrupted: its SHA-256 is {digest[:16]}..., the manifest says "
                      f"{backup.sha256[:16]}...; do not restore it, take a new backup")
    done = subprocess.run([pg_tool("pg_restore"), "--list", str(dump)], capture_output=True, text=True,
                          env=_pg_env(backup.database))
    if done.returncode != 0:
        raise DrError(f"backup file {dump} is not a readable pg_dump archive: {_tail(done.stderr, 3)}")


def restore(backup: Backup, target: str, create: bool, jobs: int = 2) -> float:
    """``pg_restore --exit-on-error`` of the backup into ``target`` (created first when ``create``). Seconds taken."""
    from stackbook.run.pgcluster import pg_tool

    t0 = time.monotonic()
    if create:
        with _connect("postgres") as conn:
            conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(target)))
    args = [pg_tool("pg_restore"), "--exit-on-error", "--no-password", "-d", target]
    if jobs > 1:
        args.append(f"--jobs={jobs}")
    if not create:
        args += ["--clean", "--if-exists"]
    args.append(backup.dump)
    done = subprocess.run(args, capture_output=True, text=True, env=_pg_env(target))
    if done.returncode != 0:
        raise DrError(f"pg_restore of {backup.dump} into database {target!r} failed (exit {done.returncode}, "
                      f"--exit-on-error stopped at the first error):\n{_tail(done.stderr)}")
    return time.monotonic() - t0


@dataclass
class Verification:
    tables_verified: int
    mismatches: list[str]
    newest_heartbeat: datetime | None
    seconds: float

    @property
    def checksums_match(self) -> bool:
        return not self.mismatches


def verify(backup: Backup, target: str) -> Verification:
    """Every table of the manifest has its count and checksum in ``target``, and there is no other table."""
    t0 = time.monotonic()
    mismatches: list[str] = []
    verified = 0
    with _connect(target, autocommit=False) as conn:
        _pin_formats(conn)
        present = {f"{s}.{t}" for s, t in conn.execute(TABLES_SQL, (backup.schemas,)).fetchall()}
        for entry in backup.tables:
            if entry.name not in present:
                mismatches.append(f"{entry.name}: missing from the restored database")
                continue
            rows, checksum = table_checksum(conn, entry.schema, entry.table)
            if rows != entry.rows:
                mismatches.append(f"{entry.name}: {rows} rows restored, {entry.rows} in the manifest")
            elif checksum != entry.checksum:
                mismatches.append(f"{entry.name}: content checksum {checksum} differs from the manifest's "
                                  f"{entry.checksum}")
            else:
                verified += 1
        for extra in sorted(present - {e.name for e in backup.tables}):
            mismatches.append(f"{extra}: in the restored database but not in the manifest")
        newest = None
        if f"{HEARTBEAT_SCHEMA}.{HEARTBEAT_TABLE}" in present:
            newest = conn.execute(sql.SQL("select max(beat_at) from {}").format(HEARTBEAT)).fetchone()[0]
        conn.rollback()
    return Verification(tables_verified=verified, mismatches=mismatches, newest_heartbeat=newest,
                        seconds=time.monotonic() - t0)


def drop_database(name: str) -> None:
    with _connect("postgres") as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# ---------------------------------------------------------------- object storage


@dataclass
class Stores:
    """Where backups are kept besides the local folder (``dr.backup_store``, ``dr.backup_copy``)."""

    primary: str | None = None
    copy: str | None = None
    copy_region: str | None = None
    endpoint: str | None = None

    @classmethod
    def of(cls, env) -> Stores:
        section = env.get("dr") or {}
        """ENV's stores (checked when its file was loaded: ``environments._check_backup_stores``)."""
        return cls(primary=section.get("backup_store"), copy=section.get("backup_copy"),
                   copy_region=section.get("backup_copy_region"), endpoint=env.get("s3_endpoint"))

    def client(self, copy: bool = False):
        from stackbook.run import runstore

        if not copy:
            return runstore.client(self.endpoint)
        from boto3.session import Session

        url = runstore.endpoint_url(self.endpoint)
        return Session().client("s3", region_name=self.copy_region, **({"endpoint_url": url} if url else {}))


def _remote(store: str, backup: Backup, name: str) -> tuple[str, str]:
    """(bucket, key) of file NAME of BACKUP under STORE."""
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    return bucket, "/".join(p for p in (prefix.strip("/"), Path(backup.directory).name, name) if p)


def _s3_call(what: str, store: str, call, *args, **kwargs):
    """CALL, with botocore's errors as a DrError naming the store and the fix."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise DrError(f"{what} {store} failed ({code}): check that the bucket exists and that the AWS credentials "
                      "of the environment may read and write it (s3:GetObject, s3:PutObject)") from None
    except BotoCoreError as exc:
        raise DrError(f"{what} {store} failed: {exc}; check dr settings and s3_endpoint") from None


def upload(backup: Backup, stores: Stores) -> list[str]:
    """Dump and manifest to the backup store (and its copy); the s3:// URLs written."""
    written = []
    for store, copy in ((stores.primary, False), (stores.copy, True)):
        if not store:
            continue
        client = stores.client(copy)
        for local in (Path(backup.dump), backup.manifest_path):
            bucket, key = _remote(store, backup, local.name)
            _s3_call("upload to", store, client.upload_file, str(local), bucket, key)
            written.append(f"s3://{bucket}/{key}")
    return written


def download(backup: Backup, stores: Stores) -> tuple[Backup, float]:
    """The backup as kept in the backup store, downloaded into a fresh folder; (that backup, seconds)."""
    t0 = time.monotonic()
    folder = backups_dir() / f"{Path(backup.directory).name}.downloaded"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    client = stores.client()
    for name in (MANIFEST_NAME, DUMP_NAME):
        bucket, key = _remote(stores.primary, backup, name)
        _s3_call("download from", stores.primary, client.download_file, bucket, key, str(folder / name))
    fetched = Backup.load(folder)
    fetched.directory, fetched.dump = str(folder), str(folder / DUMP_NAME)
    return fetched, time.monotonic() - t0


def verify_copy(backup: Backup, stores: Stores) -> list[str]:
    """Problems of the copy in the other region: its dump missing or not the manifest's SHA-256."""
    if not stores.copy:
        return []
    from botocore.exceptions import ClientError

    bucket, key = _remote(stores.copy, backup, DUMP_NAME)
    try:
        body = stores.client(copy=True).get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        return [f"the copy s3://{bucket}/{key} cannot be read ({exc.response.get('Error', {}).get('Code')})"]
    digest = hashlib.sha256()
    chunk = body.read(1 << 20)
    while chunk:
        digest.update(chunk)
        chunk = body.read(1 << 20)
    if digest.hexdigest() != backup.sha256:
        return [f"the copy s3://{bucket}/{key} differs from the backup (SHA-256 {digest.hexdigest()[:16]}..., "
                f"manifest {backup.sha256[:16]}...)"]
    return []


# ---------------------------------------------------------------- targets and the drill


@dataclass
class Targets:
    rto_target_s: float
    rpo_target_s: float
    source: str


def targets(env_name: str | None = None, rto_target_s: float | None = None,
            rpo_target_s: float | None = None) -> Targets:
    """RTO and RPO targets: explicit values, else ``dr:`` of the environment file."""
    from stackbook.core import environments

    env = environments.load(env_name) if env_name else environments.current()
    section = env.get("dr") or {}
    if not isinstance(section, dict):
        raise UsageError(f"{env.path}: dr must be a mapping with rto_target_s and rpo_target_s")
    values = {}
    for key, explicit in (("rto_target_s", rto_target_s), ("rpo_target_s", rpo_target_s)):
        value = explicit if explicit is not None else section.get(key)
        if value is None:
            raise UsageError(f"no {key}: pass it as a parameter or set dr.{key} in {env.path}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise UsageError(f"{key} must be a number of seconds >= 0, got {value!r}")
        values[key] = float(value)
    where = "parameters" if rto_target_s is not None and rpo_target_s is not None else f"environment {env.name}"
    return Targets(source=where, **values)


@dataclass
class DrillReport:
    database: str
    target: str
    backup_dir: str
    tables_verified: int
    tables_total: int
    checksums_match: bool
    mismatches: list[str]
    rto_seconds: float
    rpo_seconds: float | None
    rto_target_s: float
    rpo_target_s: float
    targets_from: str
    backup_seconds: float
    restore_seconds: float
    verify_seconds: float
    backup_bytes: int
    scratch_dropped: bool
    problems: list[str] = field(default_factory=list)
    download_seconds: float = 0.0  # from the backup store, inside the RTO
    backup_store: str | None = None
    copy_verified: bool | None = None  # None: no copy configured

    @property
    def passed(self) -> bool:
        return not self.problems

    def results(self) -> dict[str, Any]:
        """What the runbook records for the ledger and the book."""
        return {
            "rto_seconds": round(self.rto_seconds, 3),
            "rpo_seconds": None if self.rpo_seconds is None else round(self.rpo_seconds, 3),
            "rto_target_s": self.rto_target_s,
            "rpo_target_s": self.rpo_target_s,
            "tables_verified": self.tables_verified,
            "tables_total": self.tables_total,
            "checksums_match": self.checksums_match,
            "drill_passed": self.passed,
            "backup_bytes": self.backup_bytes,
            "backup_dir": self.backup_dir,
            "backup_store": self.backup_store,
            "download_seconds": round(self.download_seconds, 3),
            "copy_verified": self.copy_verified,
        }

    def _repr_markdown_(self) -> str:
        rpo = "n/a" if self.rpo_seconds is None else f"{self.rpo_seconds:.2f} s"
        lines = [
            f"**DR drill of `{self.database}`: {'PASSED' if self.passed else 'FAILED'}**", "",
            "| measure | value | target |", "| --- | ---: | ---: |",
            f"| RTO | {self.rto_seconds:.2f} s | {self.rto_target_s:g} s |",
            f"| RPO | {rpo} | {self.rpo_target_s:g} s |",
            f"| tables verified | {self.tables_verified} / {self.tables_total} | all |",
            f"| backup / restore / verify | {self.backup_seconds:.2f} / {self.restore_seconds:.2f} / "
            f"{self.verify_seconds:.2f} s | |",
        ]
        lines += [f"- problem: {p}" for p in self.problems]
        return "\n".join(lines)


class Drill:
    """One drill's state, a method per runbook step (see the module docstring)."""

    def __init__(self, database: str = "stackbook", schemas: str | list[str] | None = None, target: str = "",
                 force: bool = False, jobs: int = 2, rto_target_s: float | None = None,
                 rpo_target_s: float | None = None, env: str | None = None, keep_backups: int = 3):
        if jobs < 1:
            raise UsageError(f"jobs must be at least 1, got {jobs}")
        self.database, self.schemas, self.force, self.jobs = database, schemas, force, jobs
        self.keep_backups = keep_backups
        suffix = re.sub(r"[^0-9a-z]", "", (os.environ.get("STACKBOOK_RUN_ID") or "").lower())[-8:]
        suffix = suffix or secrets.token_hex(4)
        self.target = target or f"{database[:40]}_drill_{suffix}_{secrets.token_hex(2)}"
        self.targets = targets(env, rto_target_s, rpo_target_s)
        from stackbook.core import environments

        self.stores = Stores.of(environments.load(env) if env else environments.current())
        self.download_seconds = 0.0
        self.copy_problems: list[str] = []
        self.create = check_target(database, self.target, force)  # refuse before anything is done
        self.last_beat: datetime | None = None
        self.backup_: Backup | None = None
        self.failed_at: datetime | None = None
        self._failed_mono: float | None = None
        self.verification: Verification | None = None
        self.restore_seconds = 0.0
        self.recovered_after: float | None = None
        self.scratch_dropped = False

    def heartbeat(self) -> datetime:
        self.last_beat = beat(self.database)
        return self.last_beat

    def backup(self) -> Backup:
        self.backup_ = backup(self.database, self.schemas)
        upload(self.backup_, self.stores)  # to the backup store and its copy, when configured
        prune(self.database, self.keep_backups)
        return self.backup_

    def fail(self) -> datetime:
        """The primary is lost now: the RTO clock starts, the RPO is measured against this server time."""
        if self.backup_ is None:
            raise DrError("fail() before backup(): take the backup first")
        with _connect(self.database) as conn:
            self.failed_at = conn.execute("select clock_timestamp()").fetchone()[0]
        self._failed_mono = time.monotonic()
        return self.failed_at

    def restore_and_verify(self) -> Verification:
        """Check the dump, restore it into the target, verify it, and drop the scratch database (always)."""
        if self.backup_ is None or self._failed_mono is None:
            raise DrError("restore_and_verify() before backup() and fail()")
        source = self.backup_
        try:
            if self.stores.primary:  # restore what the store holds, as after losing this machine too
                source, self.download_seconds = download(self.backup_, self.stores)
            check_dump(source)
            self.restore_seconds = restore(source, self.target, self.create, self.jobs)
            self.verification = verify(source, self.target)
            self.recovered_after = time.monotonic() - self._failed_mono
            self.copy_problems = verify_copy(self.backup_, self.stores)
        finally:
            if self.create:
                drop_database(self.target)
                self.scratch_dropped = not _database_exists(self.target)
            if source is not self.backup_:
                shutil.rmtree(source.directory, ignore_errors=True)
        return self.verification

    def report(self) -> DrillReport:
        v, b = self.verification, self.backup_
        if v is None or b is None or self.recovered_after is None:
            raise DrError("report() before restore_and_verify() finished")
        rpo = (self.failed_at - v.newest_heartbeat).total_seconds() if v.newest_heartbeat else None
        problems = list(v.mismatches)
        if self.recovered_after > self.targets.rto_target_s:
            problems.append(f"RTO {self.recovered_after:.2f} s exceeds the target of {self.targets.rto_target_s:g} s")
        if rpo is None:
            problems.append(f"no heartbeat in the restored {HEARTBEAT_SCHEMA}.{HEARTBEAT_TABLE}: RPO not measured")
        elif rpo > self.targets.rpo_target_s:
            problems.append(f"RPO {rpo:.2f} s exceeds the target of {self.targets.rpo_target_s:g} s")
        if self.create and not self.scratch_dropped:
            problems.append(f"scratch database {self.target!r} was not dropped")
        problems += self.copy_problems
        return DrillReport(
            database=self.database, target=self.target, backup_dir=b.directory,
            tables_verified=v.tables_verified, tables_total=len(b.tables), checksums_match=v.checksums_match,
            mismatches=v.mismatches, rto_seconds=self.recovered_after, rpo_seconds=rpo,
            rto_target_s=self.targets.rto_target_s, rpo_target_s=self.targets.rpo_target_s,
            targets_from=self.targets.source, backup_seconds=b.seconds, restore_seconds=self.restore_seconds,
            verify_seconds=v.seconds, backup_bytes=b.size_bytes, scratch_dropped=self.scratch_dropped,
            problems=problems, download_seconds=self.download_seconds, backup_store=self.stores.primary,
            copy_verified=None if not self.stores.copy else not self.copy_problems,
        )


def run_drill(**kwargs) -> DrillReport:
    """The whole drill in one call (tests, scripts): heartbeat, backup, fail, restore, verify, report."""
    drill = Drill(**kwargs)
    drill.heartbeat()
    drill.backup()
    drill.fail()
    drill.restore_and_verify()
    return drill.report()
