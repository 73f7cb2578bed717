"""Loading a folder of CSV files into PostgreSQL with streaming COPY.

One table per file, named after the file stem. Per file, in one transaction:

1. **Skip** when the file's SHA-256 equals the one of the table's latest
   successful load (``<schema>._stackbook_loads``): a rerun adds nothing.
2. **Types** come from the existing table, else from the spec, else are
   inferred from the first ``sample_rows`` records; the table is created.
3. **Fast path**: the file's bytes go to ``COPY ... FROM STDIN`` in 1 MiB
   blocks, PostgreSQL checking encoding, column count and types. Without keys
   the table is emptied first (it mirrors its file); with keys the rows go to
   a temporary staging table.
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
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import psycopg
from psycopg import sql

from stackbook.core.errors import UsageError
from stackbook.ingest import csvfile, infer, manifest
from stackbook.ingest.report import LoadError, LoadReport

STAGE = "_stackbook_stage"
SEQ = "_stackbook_seq"
MAX_PG_REJECTS = 100  # PostgreSQL rejections the checks missed, per file, before giving up
RAW_LINE_MAX = 65536
WRITE_BATCH = 1 << 18  # characters of checked records sent to COPY at once
SEEN_MAX = 4096  # values remembered per column as valid, to skip checking repeats

#: PostgreSQL errors that mean "this data is bad", as opposed to "the database is unwell"
DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.NotNullViolation)


class SourceError(UsageError):
    """The source folder, its files or the keys given for them cannot be used."""


class FileError(LoadError):
    """One file could not be loaded at all (schema drift, missing key columns)."""


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


def load_folder(source_dir: str | Path, schema: str = "raw", keys: Mapping[str, Any] | None = None,
                encoding: str = "utf-8", max_bad_ratio: float = 0.001, spec=None, conn=None, *,
                pattern: str = "*.csv", sample_rows: int = infer.SAMPLE_ROWS, force: bool = False,
                check: bool = True) -> LoadReport:
    """Load every ``pattern`` file of ``source_dir`` into ``schema`` (see the module docstring).

    ``keys``: table -> key column(s). ``spec``: a dict or YAML/JSON file of column types (see
    :mod:`stackbook.ingest.infer`); relative paths, like ``source_dir``, are taken from the project root. ``conn``: a psycopg connection (default: ``stackbook.run.db.connect()``).
    ``force``: load files even when unchanged. Raises :class:`TooManyBadRows` or :class:`LoadError`
    (with ``.report``) after every file was handled when a file was rejected or failed; with
    ``check=False`` it returns the report instead and ``report.check()`` raises the same error later
    (so a runbook can record the figures first).
    """
    t0 = time.perf_counter()
    source = _resolve_source(source_dir)
    if not schema or not isinstance(schema, str):
        raise SourceError("schema must be a non-empty name")
    if not (0 <= float(max_bad_ratio) <= 1):
        raise SourceError(f"max_bad_ratio must be between 0 and 1, got {max_bad_ratio}")
    enc = csvfile.encoding(encoding)
    files = sorted(p for p in source.iterdir() if p.is_file() and p.match(pattern))
    if not files:
        raise SourceError(f"no files matching {pattern} in {source}")
    by_table: dict[str, Path] = {}
    for f in files:
        t = csvfile.table_name(f)
        if t in by_table:
            raise SourceError(f"{by_table[t].name} and {f.name} both map to table {t}: rename one")
        by_table[t] = f
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
        with conn.transaction():
            manifest.ensure(conn, schema)
        for table, path in by_table.items():
            entry = _load_file(conn, path, schema, table, key_map.get(table), enc, float(max_bad_ratio),
                               specs.get(table), sample_rows, force)
            report.tables.append(entry)
    finally:
        if own:
            conn.close()
    report.seconds = time.perf_counter() - t0
    if check:
        report.check()
    return report


# ---------------------------------------------------------------- one file


def _entry(table: str, path: Path) -> dict[str, Any]:
    return {"table": table, "file": path.name, "status": "", "method": None, "rows_loaded": 0,
            "rows_inserted": None, "rows_updated": None, "rows_quarantined": 0, "good_rows": 0,
            "bad_ratio": 0.0, "table_rows": None, "seconds": 0.0, "message": "", "line": None, "sha256": None}


def _load_file(conn, path: Path, schema: str, table: str, keys: list[str] | None, enc: csvfile.Encoding,
               max_bad_ratio: float, table_spec: dict[str, str] | None, sample_rows: int, force: bool) -> dict:
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc)
    entry = _entry(table, path)
    size = path.stat().st_size
    quarantine: _Spool | None = None

    def finish(status: str, message: str = "", **fields) -> dict:
        entry.update(fields, status=status, message=message, seconds=round(time.perf_counter() - t0, 3))
        return entry

    def note(status: str, load_conn=conn) -> int:
        return manifest.record(
            load_conn, schema, table_name=table, file_name=path.name, file_path=str(path), file_size=size,
            file_sha256=entry["sha256"], status=status, method=entry["method"], keys=keys,
            rows_loaded=entry["rows_loaded"], rows_inserted=entry["rows_inserted"],
            rows_updated=entry["rows_updated"], rows_quarantined=entry["rows_quarantined"],
            message=entry["message"] or None, started_at=started, seconds=entry["seconds"])

    try:
        header = csvfile.read_header(path, enc)
    except csvfile.HeaderError as exc:
        finish("failed", str(exc), line=1)
        with conn.transaction():
            note("failed")
        return entry
    if header is None:
        finish("empty", f"{path.name}, line 1: empty file, no header row; nothing loaded", line=1)
        with conn.transaction():
            note("empty")
        return entry

    try:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"stackbook.ingest:{schema}.{table}"])
            existing = _table_columns(conn, schema, table)
            prev = manifest.last_loaded(conn, schema, table)
            if not force and existing and prev and prev["file_size"] == size:
                entry["sha256"] = csvfile.sha256(path)
                if entry["sha256"] == prev["file_sha256"]:
                    finish("skipped", f"unchanged since {prev['finished_at']:%Y-%m-%d %H:%M:%S %Z}",
                           table_rows=_count(conn, schema, table))
                    note("skipped")
                    return entry
            columns = header.columns
            if keys:
                missing = [k for k in keys if k not in columns]
                if missing:
                    raise FileError(f"key column(s) {', '.join(missing)} not in the header of {path.name} "
                                    f"(columns: {', '.join(columns)})")
            if not csvfile.has_rows_after(path, header.end):
                if not existing and table_spec:
                    _create(conn, schema, table, {c: infer.logical_to_pg(table_spec.get(c, "text")) for c in columns},
                            keys)
                if entry["sha256"] is None:
                    entry["sha256"] = csvfile.sha256(path)
                finish("header_only", f"{path.name}, line {header.lines}: header only, no data rows; "
                       f"table {'left as it was' if existing else 'not created'}", line=header.lines,
                       table_rows=_count(conn, schema, table) if existing else None)
                note("header_only")
                return entry
            if existing:
                extra = [c for c in columns if c not in existing]
                if extra:
                    raise FileError(f"{path.name} has column(s) {', '.join(extra)} that table {schema}.{table} "
                                    f"lacks: add them (alter table) or drop the table to recreate it")
                types = {c: existing[c] for c in columns}
                if keys:
                    _ensure_unique(conn, schema, table, keys)
            else:
                types = _types_for(path, enc, header, table_spec, sample_rows, schema, table)
                _create(conn, schema, table, types, keys)

            copied, bad, quarantine, sha, method = _copy(conn, path, enc, header, schema, table, columns, types, keys)
            entry.update(method=method, sha256=sha, good_rows=copied, rows_quarantined=bad,
                         bad_ratio=round(bad / (copied + bad), 6) if copied + bad else 0.0)
            if copied + bad and bad / (copied + bad) > max_bad_ratio:
                raise _Rejected()
            if keys:
                inserted, updated = _upsert(conn, schema, table, columns, keys)
                entry.update(rows_loaded=copied, rows_inserted=inserted, rows_updated=updated,
                             table_rows=_count(conn, schema, table))
            else:
                entry.update(rows_loaded=copied, rows_inserted=copied, rows_updated=0, table_rows=copied)
            msg = (f"{bad} bad rows quarantined ({entry['bad_ratio']:.3%})" if bad else "")
            finish("loaded", msg)
            load_id = note("loaded")
            manifest.forget_quarantine(conn, schema, table, sha)
            if quarantine:
                manifest.copy_quarantine(conn, schema, quarantine.rows(table, path.name, sha), load_id)
        return entry
    except _Rejected:
        finish("rejected", f"{entry['rows_quarantined']} of {entry['good_rows'] + entry['rows_quarantined']} "
               f"rows bad ({entry['bad_ratio']:.2%}) > max_bad_ratio {max_bad_ratio:.2%}: nothing loaded, "
               f"bad rows in {schema}.{manifest.QUARANTINE}")
        with conn.transaction():
            load_id = note("rejected")
            manifest.forget_quarantine(conn, schema, table, entry["sha256"])
            if quarantine:
                manifest.copy_quarantine(conn, schema, quarantine.rows(table, path.name, entry["sha256"]), load_id)
        return entry
    except FileError as exc:
        finish("failed", str(exc))
        with conn.transaction():
            note("failed")
        return entry
    finally:
        if quarantine:
            quarantine.close()


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
    cols = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in types.items()]
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


def _copy_checked(conn, path, header, dest, columns, types, keys, enc, spool: "_Spool",
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
        self._fh = tempfile.TemporaryFile(mode="w+", encoding="utf-8", newline="")
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
