"""Loading a folder of CSV files into PostgreSQL with streaming COPY.

One table per file, named after the file stem. Per file, in one transaction:

1. **Skip** when the file's SHA-256 equals the one of the table's latest
   successful load (``<schema>._stackbook_loads``): a rerun adds nothing.
2. **Types** come from the existing table, else from the spec, else are
   inferred from the first ``sample_rows`` records; the table is created.
3. **Fast path**: the file's bytes go to ``COPY ... FROM STDIN`` in 1 MiB
   blocks, PostgreSQL checking encoding, column count and types. Without keys
   the table is emptied first (it mirrors its file); with keys the rows go to
   a temporary staging table, except on the first load of a table created in
   this transaction: there the rows go straight in and the primary key is
   added after (one index build, no staging, no merge), falling back to
   staging when a row is rejected or a key is empty or repeated.
4. **Checked path**, only when PostgreSQL rejected the fast path: the file is
   read again record by record; records with bytes invalid in the declared
   encoding, a wrong number of columns, an empty key or a value that does not
   parse as its column's type go to the quarantine (file, line, raw line,
   reason) and the others are streamed to COPY. Should PostgreSQL still reject
   a record the checks let through, that record is quarantined with
   PostgreSQL's message and the file is streamed again.
5. With keys: ``INSERT ... SELECT DISTINCT ON (keys) ... ON CONFLICT (keys)
   DO UPDATE`` from staging (the last occurrence of a key in a file wins; rows
   whose values did not change are not rewritten). Rows of the table whose keys
   the file does not carry stay.

**Bad rows and max_bad_ratio.** The bad share is counted per file
(bad / (good + bad)). A file over ``max_bad_ratio`` loads nothing: its
transaction is rolled back and the table keeps its previous content (a table
it would have created is not created), but its bad rows are still quarantined
so you can see why. Every other file is loaded
and committed, then the run raises :class:`TooManyBadRows` naming each
rejected file with its ratio. A file under the threshold loads its good rows
and quarantines the rest.

**Parallel files.** ``jobs`` files load at once (default: one per CPU core), largest first, each worker
over a connection of its own; files are independent (one table, one transaction each), so the result is
the one of ``jobs=1``. The report keeps the files' order.

**Locks.** Each file takes a transaction-level advisory lock on its table, so two loads of one table
queue. Without keys the table is emptied with ``TRUNCATE``: readers of that table wait until the file's
transaction commits, and then see the new content whole.

**Empty and header-only files** change nothing (a table that exists keeps its
rows) and are reported with status ``empty`` / ``header_only``, line 1 and the
reason; they do not fail the run.

Memory: blocks of 1 MiB, one record at a time, quarantine rows spooled to a
temporary file; nothing holds a file or a table.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import os
import queue
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from stackbook.core.errors import DatabaseUnavailable, FileError, SourceError
from stackbook.ingest import csvfile, infer, manifest
from stackbook.ingest.report import LoadReport

STAGE = "_stackbook_stage"
SEQ = "_stackbook_seq"
MAX_PG_REJECTS = 100  # PostgreSQL rejections the checks missed, per file, before giving up
RAW_LINE_MAX = 65536
WRITE_BATCH = 1 << 18  # characters of checked records sent to COPY at once
SEEN_MAX = 4096  # values remembered per column as valid, to skip checking repeats
MAX_JOBS = 32  # files loaded at once, at most (each a connection)

#: PostgreSQL errors that mean "this data is bad", as opposed to "the database is unwell"
DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.NotNullViolation)


def _resolve_source(source_dir: str | Path) -> Path:
    path = Path(source_dir).expanduser()
    if not path.is_absolute():
        from stackbook.core import project

        path = project.root() / path
    if not path.is_dir():
        raise SourceError(f"source_dir {path} is not a folder: pass a folder of .csv files "
                          f"(relative paths are taken from the project root)")
    return path


def _normalise_keys(keys: Mapping[str, Any] | None, tables: list[str], source: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, cols in (keys or {}).items():
        if isinstance(cols, str):
            cols = [cols]
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise SourceError(f"keys[{table!r}] must be a column name or a list of column names, got {cols!r}")
        out[str(table)] = [csvfile.column_name(c, 0) for c in cols]
    unknown = sorted(set(out) - set(tables))
    if unknown:
        raise SourceError(f"keys name tables with no file in {source}: {', '.join(unknown)}; "
                          f"tables there: {', '.join(tables) or 'none'}")
    return out


def _files_by_table(source: Path, pattern: str) -> dict[str, Path]:
    """table -> file, in file-name order."""
    files = sorted(p for p in source.iterdir() if p.is_file() and p.match(pattern))
    if not files:
        raise SourceError(f"no files matching {pattern} in {source}")
    by_table: dict[str, Path] = {}
    for f in files:
        t = csvfile.table_name(f)
        if t in by_table:
            raise SourceError(f"{by_table[t].name} and {f.name} both map to table {t}: rename one")
        by_table[t] = f
    return by_table


def load_folder(source_dir: str | Path, schema: str = "raw", keys: Mapping[str, Any] | None = None,
                encoding: str = "utf-8", max_bad_ratio: float = 0.001, spec=None, conn=None, *,
                pattern: str = "*.csv", sample_rows: int = infer.SAMPLE_ROWS, force: bool = False,
                check: bool = True, jobs: int | None = None) -> LoadReport:
    """Load every ``pattern`` file of ``source_dir`` into ``schema`` (see the module docstring).

    ``keys``: table -> key column(s). ``spec``: a dict or YAML/JSON file of column types (see
    :mod:`stackbook.ingest.infer`); relative paths, like ``source_dir``, are taken from the project root.
    ``conn``: a psycopg connection (default: ``stackbook.run.db.connect()``).
    ``force``: load files even when unchanged. Raises :class:`TooManyBadRows` or :class:`LoadError`
    (with ``.report``) after every file was handled when a file was rejected or failed; with
    ``check=False`` it returns the report instead and ``report.check()`` raises the same error later
    (so a runbook can record the figures first). ``jobs``: files loaded at once, each worker over a
    connection of its own (default: the CPU cores; at most ``MAX_JOBS`` and the number of files; one when
    ``conn`` is not in autocommit mode).
    """
    t0 = time.perf_counter()
    jobs = _jobs(jobs)
    source = _resolve_source(source_dir)
    if not schema or not isinstance(schema, str):
        raise SourceError("schema must be a non-empty name")
    if not (0 <= float(max_bad_ratio) <= 1):
        raise SourceError(f"max_bad_ratio must be between 0 and 1, got {max_bad_ratio}")
    enc = csvfile.encoding(encoding)
    by_table = _files_by_table(source, pattern)
    key_map = _normalise_keys(keys, list(by_table), source)
    if isinstance(spec, (str, Path)) and spec and not Path(spec).expanduser().is_absolute():
        from stackbook.core import project

        spec = project.root() / spec
    specs = infer.load_spec(spec)

    own = conn is None
    if own:
        from stackbook.run import db

        conn = db.connect()
    report = LoadReport(schema=schema, source_dir=str(source), max_bad_ratio=float(max_bad_ratio))
    try:
        infer.check_spec(conn, specs)  # a type that is not one PostgreSQL type name fails before anything is made
        with conn.transaction():
            manifest.ensure(conn, schema)
        opts = _Options(schema, enc, float(max_bad_ratio), sample_rows, force)
        tasks = [_Task(n, path, table, key_map.get(table), specs.get(table))
                 for n, (table, path) in enumerate(by_table.items())]
        report.tables.extend(_load_all(conn, tasks, opts, min(jobs, len(tasks))))
    finally:
        if own:
            conn.close()
    report.seconds = time.perf_counter() - t0
    if check:
        report.check()
    return report


# ---------------------------------------------------------------- files in parallel


@dataclass(frozen=True)
class _Options:
    """What every file of one load shares."""

    schema: str
    enc: csvfile.Encoding
    max_bad_ratio: float
    sample_rows: int
    force: bool


@dataclass(frozen=True)
class _Task:
    """One file to load: its position in the report, its table, keys and spec."""

    index: int
    path: Path
    table: str
    keys: list[str] | None
    table_spec: dict[str, str] | None


def _jobs(jobs: int | None) -> int:
    if jobs is None or jobs == 0:
        return max(1, min(os.cpu_count() or 1, MAX_JOBS))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise SourceError(f"jobs must be a whole number from 1 to {MAX_JOBS} (files loaded at once), or None "
                          f"for one per CPU core; got {jobs!r}")
    return jobs


def _load_all(conn, tasks: list[_Task], opts: _Options, jobs: int) -> list[dict]:
    """Every task's entry, in task order. With ``jobs`` > 1, worker threads take files largest first from one
    queue, each over a connection of its own (the first worker uses ``conn``). A ``conn`` that is not in
    autocommit mode loads every file itself: its caller decides when they commit, other connections could not
    wait for that."""
    if jobs <= 1 or not conn.autocommit:
        return [_load_task(conn, t, opts) for t in tasks]
    todo: queue.SimpleQueue[_Task] = queue.SimpleQueue()
    for t in sorted(tasks, key=_size, reverse=True):
        todo.put(t)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stackbook-ingest") as pool:
        futures = [pool.submit(_worker, conn if n == 0 else None, conn, todo, opts) for n in range(jobs)]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # an interrupt: no new file starts; the ones loading finish, then it goes on
            _drain(todo)
            raise
        if any(f.exception() for f in finished):  # a worker's error: likewise, and result() raises it below
            _drain(todo)
        done = [f.result() for f in futures]
    entries = sorted((pair for part in done for pair in part), key=itemgetter(0))
    return [entry for _, entry in entries]


def _drain(todo: queue.SimpleQueue[_Task]) -> None:
    while True:
        try:
            todo.get_nowait()
        except queue.Empty:
            return


def _worker(conn, like, todo: queue.SimpleQueue[_Task], opts: _Options) -> list[tuple[int, dict]]:
    """Load files from ``todo`` until it is empty, over ``conn`` or (None) a new connection like ``like``."""
    own = conn is None
    out: list[tuple[int, dict]] = []
    try:
        while True:
            try:
                task = todo.get_nowait()
            except queue.Empty:
                return out
            if conn is None:
                conn = _connect_like(like)
            out.append((task.index, _load_task(conn, task, opts)))
    finally:
        if own and conn is not None:
            conn.close()


def _connect_like(conn):
    """A new autocommit connection to the database ``conn`` is connected to, as the same user."""
    try:
        return psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot open another connection to {conn.info.dbname} for a parallel load "
                                  f"({' '.join(str(exc).split())}); pass jobs=1 to load over one connection"
                                  ) from None


def _size(task: _Task) -> int:
    return task.path.stat().st_size


def _load_task(conn, task: _Task, opts: _Options) -> dict:
    return _load_file(conn, task.path, opts.schema, task.table, task.keys, opts.enc, opts.max_bad_ratio,
                      task.table_spec, opts.sample_rows, opts.force)


# ---------------------------------------------------------------- one file


def _entry(table: str, path: Path) -> dict[str, Any]:
    return {"table": table, "file": path.name, "status": "", "method": None, "rows_loaded": 0,
            "rows_inserted": None, "rows_updated": None, "rows_quarantined": 0, "good_rows": 0,
            "bad_ratio": 0.0, "table_rows": None, "seconds": 0.0, "message": "", "line": None, "sha256": None}


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


@dataclass
class _FileLoad:
    """One file being loaded: where it goes, how, and its line of the report (``entry``) as it fills in."""

    conn: Any
    path: Path
    schema: str
    table: str
    keys: list[str] | None
    enc: csvfile.Encoding
    max_bad_ratio: float
    table_spec: dict[str, str] | None
    sample_rows: int
    force: bool
    entry: dict[str, Any]
    size: int
    t0: float = field(default_factory=time.perf_counter)
    started: _dt.datetime = field(default_factory=_utcnow)
    quarantine: _Spool | None = None

    def finish(self, status: str, message: str = "", **fields) -> dict:
        self.entry.update(fields, status=status, message=message, seconds=round(time.perf_counter() - self.t0, 3))
        return self.entry

    def note(self, status: str) -> int:
        """Record the load in the manifest; its load id."""
        e = self.entry
        return manifest.record(
            self.conn, self.schema, table_name=self.table, file_name=self.path.name, file_path=str(self.path),
            file_size=self.size, file_sha256=e["sha256"], status=status, method=e["method"], keys=self.keys,
            rows_loaded=e["rows_loaded"], rows_inserted=e["rows_inserted"], rows_updated=e["rows_updated"],
            rows_quarantined=e["rows_quarantined"], message=e["message"] or None, started_at=self.started,
            seconds=e["seconds"])


def _load_file(conn, path: Path, schema: str, table: str, keys: list[str] | None, enc: csvfile.Encoding,
               max_bad_ratio: float, table_spec: dict[str, str] | None, sample_rows: int, force: bool) -> dict:
    """Load one file in its own transaction (see the module docstring); its entry of the report."""
    load = _FileLoad(conn, path, schema, table, keys, enc, max_bad_ratio, table_spec, sample_rows, force,
                     entry=_entry(table, path), size=path.stat().st_size)
    try:
        header = csvfile.read_header(path, enc)
    except csvfile.HeaderError as exc:
        return _record_outcome(load, "failed", str(exc), line=1)
    if header is None:
        return _record_outcome(load, "empty", f"{path.name}, line 1: empty file, no header row; nothing loaded",
                               line=1)
    try:
        with conn.transaction():
            _load_locked(load, header)
        return load.entry
    except _Rejected:
        _record_rejected(load)
        return load.entry
    except FileError as exc:
        return _record_outcome(load, "failed", str(exc))
    finally:
        if load.quarantine:
            load.quarantine.close()


def _record_outcome(load: _FileLoad, status: str, message: str, **fields) -> dict:
    """A file that loads nothing (failed, empty): its entry, recorded in the manifest in a transaction of its own."""
    load.finish(status, message, **fields)
    with load.conn.transaction():
        load.note(status)
    return load.entry


def _record_rejected(load: _FileLoad) -> None:
    """A file over max_bad_ratio (its load rolled back): record it, and quarantine its bad rows all the same."""
    e = load.entry
    load.finish("rejected", f"{e['rows_quarantined']} of {e['good_rows'] + e['rows_quarantined']} "
                f"rows bad ({e['bad_ratio']:.2%}) > max_bad_ratio {load.max_bad_ratio:.2%}: nothing loaded, "
                f"bad rows in {load.schema}.{manifest.QUARANTINE}")
    with load.conn.transaction():
        load_id = load.note("rejected")
        manifest.forget_quarantine(load.conn, load.schema, load.table, e["sha256"])
        if load.quarantine:
            manifest.copy_quarantine(load.conn, load.schema, load.quarantine.rows(load.table, load.path.name,
                                                                                  e["sha256"]), load_id)


def _load_locked(load: _FileLoad, header) -> None:
    """Inside the file's transaction, under the table's advisory lock: skip, create, copy and merge."""
    conn, schema, table = load.conn, load.schema, load.table
    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"stackbook.ingest:{schema}.{table}"])
    existing = _table_columns(conn, schema, table)
    if _skip_unchanged(load, existing):
        return
    columns = header.columns
    missing = [k for k in load.keys or () if k not in columns]
    if missing:
        raise FileError(f"key column(s) {', '.join(missing)} not in the header of {load.path.name} "
                        f"(columns: {', '.join(columns)})")
    if not csvfile.has_rows_after(load.path, header.end):
        _header_only(load, header, existing)
        return
    types = _table_types(load, header, existing)
    if not existing and load.keys:  # a table created just now, without its primary key yet
        if _copy_fresh(load, header):
            return
        _add_primary_key(load.conn, schema, table, load.keys)
    _copy_and_merge(load, header, types)


def _skip_unchanged(load: _FileLoad, existing: dict[str, str] | None) -> bool:
    """True (and the entry ``skipped``) when the file is the one the table's last load loaded."""
    prev = manifest.last_loaded(load.conn, load.schema, load.table)
    if load.force or not existing or not prev or prev["file_size"] != load.size:
        return False
    load.entry["sha256"] = csvfile.sha256(load.path)
    if load.entry["sha256"] != prev["file_sha256"]:
        return False
    load.finish("skipped", f"unchanged since {prev['finished_at']:%Y-%m-%d %H:%M:%S %Z}",
                table_rows=_count(load.conn, load.schema, load.table))
    load.note("skipped")
    return True


def _header_only(load: _FileLoad, header, existing: dict[str, str] | None) -> None:
    """A header without data rows: the table is created only when a spec gives its types; no row changes."""
    if not existing and load.table_spec:
        types = {c: infer.logical_to_pg(load.table_spec.get(c, "text")) for c in header.columns}
        _create(load.conn, load.schema, load.table, types, load.keys)
    if load.entry["sha256"] is None:
        load.entry["sha256"] = csvfile.sha256(load.path)
    load.finish("header_only", f"{load.path.name}, line {header.lines}: header only, no data rows; "
                f"table {'left as it was' if existing else 'not created'}", line=header.lines,
                table_rows=_count(load.conn, load.schema, load.table) if existing else None)
    load.note("header_only")


def _table_types(load: _FileLoad, header, existing: dict[str, str] | None) -> dict[str, str]:
    """Column types: the existing table's (which must hold every column), else inferred and the table created
    (without its primary key: the caller adds it after the first COPY, or before staging)."""
    columns = header.columns
    if existing:
        extra = [c for c in columns if c not in existing]
        if extra:
            raise FileError(f"{load.path.name} has column(s) {', '.join(extra)} that table {load.schema}.{load.table} "
                            f"lacks: add them (alter table) or drop the table to recreate it")
        if load.keys:
            _ensure_unique(load.conn, load.schema, load.table, load.keys)
        return {c: existing[c] for c in columns}
    types = _types_for(load.path, load.enc, header, load.table_spec, load.sample_rows, load.schema, load.table)
    _create(load.conn, load.schema, load.table, types, None)
    return types


def _copy_fresh(load: _FileLoad, header) -> bool:
    """First load of a keyed table created in this transaction: COPY straight into it, then add the primary key
    (one index build instead of staging and merging). False, with the savepoint rolled back, when PostgreSQL
    rejects a row or the keys are empty or repeated: the caller takes the staging path, which handles those."""
    conn, schema, table = load.conn, load.schema, load.table
    try:
        with conn.transaction():
            dest = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            copied, sha = _copy_fast(conn, load.path, header, dest, header.columns, load.enc)
            _add_primary_key(conn, schema, table, load.keys)
    except DATA_ERRORS + (psycopg.errors.UniqueViolation,):
        return False
    load.entry.update(method="copy", sha256=sha, good_rows=copied, rows_quarantined=0, bad_ratio=0.0,
                      rows_loaded=copied, rows_inserted=copied, rows_updated=0, table_rows=copied)
    _record_loaded(load, sha, 0)
    return True


def _add_primary_key(conn, schema: str, table: str, keys: list[str]) -> None:
    conn.execute(sql.SQL("alter table {}.{} add primary key ({})").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, keys))))


def _copy_and_merge(load: _FileLoad, header, types: dict[str, str]) -> None:
    """COPY the rows (fast path, else checked), reject the file over max_bad_ratio, upsert with keys, record."""
    conn, schema, table, keys, columns = load.conn, load.schema, load.table, load.keys, header.columns
    copied, bad, load.quarantine, sha, method = _copy(conn, load.path, load.enc, header, schema, table, columns,
                                                      types, keys)
    load.entry.update(method=method, sha256=sha, good_rows=copied, rows_quarantined=bad,
                      bad_ratio=round(bad / (copied + bad), 6) if copied + bad else 0.0)
    if copied + bad and bad / (copied + bad) > load.max_bad_ratio:
        raise _Rejected()
    if keys:
        inserted, updated = _upsert(conn, schema, table, columns, keys)
        load.entry.update(rows_loaded=copied, rows_inserted=inserted, rows_updated=updated,
                          table_rows=_count(conn, schema, table))
    else:
        load.entry.update(rows_loaded=copied, rows_inserted=copied, rows_updated=0, table_rows=copied)
    _record_loaded(load, sha, bad)


def _record_loaded(load: _FileLoad, sha: str, bad: int) -> None:
    """A loaded file: finish its entry, record it in the manifest, replace its quarantine rows."""
    conn, schema, table = load.conn, load.schema, load.table
    load.finish("loaded", f"{bad} bad rows quarantined ({load.entry['bad_ratio']:.3%})" if bad else "")
    load_id = load.note("loaded")
    manifest.forget_quarantine(conn, schema, table, sha)
    if load.quarantine:
        manifest.copy_quarantine(conn, schema, load.quarantine.rows(table, load.path.name, sha), load_id)


class _Rejected(Exception):
    """Internal: roll back the file's transaction because of too many bad rows."""


# ---------------------------------------------------------------- catalog helpers


def _table_columns(conn, schema: str, table: str) -> dict[str, str] | None:
    rows = conn.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
        "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p') and a.attnum > 0 "
        "and not a.attisdropped order by a.attnum", [schema, table]).fetchall()
    return {r[0]: r[1] for r in rows} or None


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("select count(*) from {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table))).fetchone()[0]


def _types_for(path: Path, enc, header, table_spec, sample_rows: int, schema: str, table: str) -> dict[str, str]:
    if table_spec:
        unknown = [c for c in table_spec if c not in header.columns]
        if unknown:
            raise FileError(f"the spec for {table} names column(s) {', '.join(unknown)} that {path.name} "
                            f"does not have (columns: {', '.join(header.columns)})")
    inferred = {}
    if not table_spec or any(c not in table_spec for c in header.columns):
        inferred = infer.infer_types(header.columns, csvfile.sample(path, enc, header, sample_rows))
    spec = table_spec or {}
    return {c: infer.logical_to_pg(spec.get(c) or inferred[c]) for c in header.columns}


def _create(conn, schema: str, table: str, types: dict[str, str], keys: list[str] | None) -> None:
    resolved = infer.resolve_pg_types(conn, {f"column {table}.{c}": t for c, t in types.items()})
    cols = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(resolved[f"column {table}.{c}"]))
            for c in types]  # PostgreSQL's spelling of one resolved type: never the spec's text
    if keys:
        cols.append(sql.SQL("primary key ({})").format(sql.SQL(", ").join(map(sql.Identifier, keys))))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("create table {}.{} ({})").format(
                sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(cols)))
    except psycopg.errors.UndefinedObject as exc:
        raise FileError(f"cannot create {schema}.{table}: {exc.diag.message_primary} "
                        f"(check the column types in the spec)") from None


def _ensure_unique(conn, schema: str, table: str, keys: list[str]) -> None:
    """ON CONFLICT (keys) needs a unique index on exactly those columns; add one when missing."""
    found = conn.execute(
        "select 1 from pg_index i join pg_class c on c.oid = i.indrelid "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relname = %s "
        "and i.indisunique and i.indpred is null and "
        "(select array_agg(a.attname::text order by a.attname) from pg_attribute a "
        " where a.attrelid = c.oid and a.attnum = any(i.indkey)) = %s",
        [schema, table, sorted(keys)]).fetchone()
    if found:
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("create unique index {} on {}.{} ({})").format(
                sql.Identifier(f"{table}_stackbook_keys"[:63]), sql.Identifier(schema), sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, keys))))
    except psycopg.errors.UniqueViolation:
        raise FileError(f"{schema}.{table} already holds duplicate values of ({', '.join(keys)}), so they cannot "
                        f"be its keys: deduplicate the table or load without keys") from None


# ---------------------------------------------------------------- copying


def _dest(conn, schema: str, table: str, keys: list[str] | None) -> sql.Composable:
    """Where COPY writes: the emptied table (no keys) or a fresh staging table (keys)."""
    if not keys:
        conn.execute(sql.SQL("truncate {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
        return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    conn.execute(sql.SQL("drop table if exists pg_temp.{}").format(sql.Identifier(STAGE)))
    conn.execute(sql.SQL("create temp table {} (like {}.{} including defaults) on commit drop").format(
        sql.Identifier(STAGE), sql.Identifier(schema), sql.Identifier(table)))
    conn.execute(sql.SQL("alter table {} add column {} bigint generated always as identity").format(
        sql.Identifier(STAGE), sql.Identifier(SEQ)))
    return sql.SQL("pg_temp.{}").format(sql.Identifier(STAGE))


def _copy_stmt(dest, columns: list[str], pg_encoding: str) -> sql.Composed:
    return sql.SQL("copy {} ({}) from stdin (format csv, encoding {})").format(
        dest, sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Literal(pg_encoding))


def _copy(conn, path, enc, header, schema, table, columns, types, keys):
    """COPY the file's rows; returns (rows copied, rows bad, quarantine spool or None, sha256, method)."""
    try:
        with conn.transaction():
            dest = _dest(conn, schema, table, keys)
            copied, sha = _copy_fast(conn, path, header, dest, columns, enc)
        return copied, 0, None, sha, "copy"
    except DATA_ERRORS:
        pass  # the savepoint is rolled back: read the file again, checking every record
    rejects: dict[int, str] = {}  # record start line -> PostgreSQL's reason, for records the checks let through
    pending: tuple[int, str] | None = None  # (COPY stream line, reason) PostgreSQL rejected in the last pass
    for _ in range(MAX_PG_REJECTS + 1):
        spool = _Spool()
        try:
            with conn.transaction():
                dest = _dest(conn, schema, table, keys)
                copied, bad, sha = _copy_checked(conn, path, header, dest, columns, types, keys, enc, spool,
                                                 rejects, pending)
            return copied, bad, spool, sha, "checked"
        except _PgRejected as exc:
            spool.close()
            pending = (exc.stream_line, exc.reason)
    raise FileError(f"{path.name}: PostgreSQL rejected more than {MAX_PG_REJECTS} rows the type checks let through; "
                    f"declare the column types in a spec (last: {pending[1] if pending else '?'})")


def _copy_fast(conn, path: Path, header, dest, columns, enc) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as fh, conn.cursor() as cur:
        h.update(fh.read(header.end))
        with cur.copy(_copy_stmt(dest, columns, enc.postgres)) as cp:
            while block := fh.read(csvfile.BLOCK):
                h.update(block)
                cp.write(block)
        return cur.rowcount, h.hexdigest()


class _PgRejected(Exception):
    def __init__(self, stream_line: int, reason: str):
        super().__init__(reason)
        self.stream_line, self.reason = stream_line, reason


def _hashing(fh, h) -> Iterator[bytes]:
    for line in fh:
        h.update(line)
        yield line


_LINE_RE = re.compile(r"\bline (\d+)")


def _copy_checked(conn, path, header, dest, columns, types, keys, enc, spool: _Spool,
                  rejects: dict[int, str], pending: tuple[int, str] | None) -> tuple[int, int, str]:
    """Stream the records that pass the checks to COPY; quarantine the others.

    ``rejects``: file line -> reason of records PostgreSQL rejected in earlier passes; ``pending``: the COPY
    stream line PostgreSQL rejected in the previous pass. Passes number the stream identically up to the first
    rejected record, so the record covering ``pending`` is the one PostgreSQL refused.
    """
    ncols = len(columns)
    keyset = set(keys or ())
    checks = [(i, c, infer.fits(types[c]), c in keyset, types[c]) for i, c in enumerate(columns)]
    checks = [x for x in checks if x[2] is not None or x[3]]
    seen: list[set] = [set() for _ in checks]  # values known to pass, per check (bounded)
    h = hashlib.sha256()
    good = bad = 0
    stream_line = 0  # lines sent to COPY so far (PostgreSQL numbers the COPY stream's lines from 1)
    with open(path, "rb") as fh, conn.cursor() as cur:
        h.update(fh.read(header.end))
        try:
            with cur.copy(_copy_stmt(dest, columns, "UTF8")) as cp:
                batch: list[str] = []
                batch_len = 0
                for rec in csvfile.records(_hashing(fh, h), enc, header.lines + 1):
                    reason = rec.error or rejects.get(rec.line)
                    if reason is None:
                        reason = _check(rec.text, ncols, checks, seen)
                    if reason is None:
                        text = rec.text.rstrip("\r\n") + "\n"
                        n = text.count("\n")
                        if pending and stream_line < pending[0] <= stream_line + n:
                            reason = rejects[rec.line] = pending[1]
                            pending = None
                    if reason:
                        bad += 1
                        spool.add(rec.line, _shown(rec.raw, enc), reason)
                        continue
                    stream_line += n
                    good += 1
                    batch.append(text)
                    batch_len += len(text)
                    if batch_len >= WRITE_BATCH:
                        cp.write("".join(batch).encode("utf-8"))
                        batch, batch_len = [], 0
                if batch:
                    cp.write("".join(batch).encode("utf-8"))
                if pending:
                    raise FileError(f"{path.name}: PostgreSQL rejected line {pending[0]} of the data sent, which "
                                    f"could not be traced to a record ({pending[1]})")
        except DATA_ERRORS as exc:
            line = _error_line(exc)
            if line is None:
                raise FileError(f"{path.name}: PostgreSQL rejected the data and the line could not be traced "
                                f"({exc.diag.message_primary}; {exc.diag.context})") from None
            raise _PgRejected(line, f"rejected by PostgreSQL: {exc.diag.message_primary}") from None
        return good, bad, h.hexdigest()


def _error_line(exc) -> int | None:
    m = _LINE_RE.search(exc.diag.context or "")
    return int(m.group(1)) if m else None


def _check(text: str, ncols: int, checks, seen: list[set]) -> str | None:
    """Why a decoded record is bad, or None. ``seen`` caches values that passed (up to SEEN_MAX per column)."""
    if "\x00" in text:
        return "NUL byte in the line (PostgreSQL text cannot hold it)"
    try:
        fields = csvfile.split_line(text)
    except csv.Error as exc:
        return f"unreadable CSV: {exc}"
    if len(fields) != ncols:
        return f"expected {ncols} columns, found {len(fields)}"
    for n, (i, name, fits, is_key, pg_type) in enumerate(checks):
        v = fields[i]
        if v == "":
            if is_key:
                return f"key column {name} is empty"
            continue
        if fits is None:
            continue
        ok = seen[n]
        if v in ok:
            continue
        if not fits(v):
            shown = v if len(v) <= 60 else v[:57] + "..."
            return f"column {name}: {shown!r} is not a valid {pg_type}"
        if len(ok) < SEEN_MAX:
            ok.add(v)
    return None


def _shown(raw: bytes, enc) -> str:
    text = raw[:RAW_LINE_MAX].decode(enc.python, errors="backslashreplace").rstrip("\r\n")
    return text.replace("\x00", "\\x00")


class _Spool:
    """Quarantine rows on disk until the file's transaction knows what to do with them."""

    def __init__(self):
        self._fh = tempfile.TemporaryFile(mode="w+", encoding="utf-8", newline="")  # noqa: SIM115 (close())
        self._w = csv.writer(self._fh)
        self.count = 0

    def add(self, line: int, raw: str, reason: str) -> None:
        self._w.writerow((line, raw, reason))
        self.count += 1

    def __bool__(self) -> bool:
        return self.count > 0

    def rows(self, table: str, file_name: str, sha: str) -> Iterable[tuple]:
        self._fh.seek(0)
        for line, raw, reason in csv.reader(self._fh):
            yield table, file_name, sha, int(line), raw, reason

    def close(self) -> None:
        self._fh.close()


# ---------------------------------------------------------------- upsert


def _upsert(conn, schema: str, table: str, columns: list[str], keys: list[str]) -> tuple[int, int]:
    """Staging -> table; returns (inserted, updated). Unchanged rows are not rewritten."""
    ident = sql.Identifier
    cols = sql.SQL(", ").join(map(ident, columns))
    keycols = sql.SQL(", ").join(map(ident, keys))
    rest = [c for c in columns if c not in keys]
    if rest:
        action = sql.SQL("do update set {} where ({}) is distinct from ({})").format(
            sql.SQL(", ").join(sql.SQL("{} = excluded.{}").format(ident(c), ident(c)) for c in rest),
            sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in rest),
            sql.SQL(", ").join(sql.SQL("excluded.{}").format(ident(c)) for c in rest))
        if len(rest) == 1:  # a one-element row constructor needs the ROW keyword
            action = sql.SQL("do update set {c} = excluded.{c} where t.{c} is distinct from excluded.{c}").format(
                c=ident(rest[0]))
    else:
        action = sql.SQL("do nothing")
    stmt = sql.SQL(
        "with up as (insert into {s}.{t} as t ({cols}) "
        "select distinct on ({keys}) {cols} from pg_temp.{stage} order by {keys}, {seq} desc "
        "on conflict ({keys}) {action} returning (xmax = 0) as inserted) "
        "select count(*) filter (where inserted), count(*) filter (where not inserted) from up"
    ).format(s=ident(schema), t=ident(table), cols=cols, keys=keycols, stage=ident(STAGE), seq=ident(SEQ),
             action=action)
    inserted, updated = conn.execute(stmt).fetchone()
    return inserted, updated
