"""Column types: inference from a sample, spec files, and per-value checks.

Six logical types, narrowest first: ``boolean``, ``integer``, ``numeric``,
``date``, ``timestamp`` (``timestamptz`` when a sampled value carries a UTC
offset) and ``text``. A column gets the narrowest type every non-empty sampled
value fits; an all-empty column is ``text``. Integers with a leading zero
(``007``, zip codes, account numbers) stay ``text`` so the zeros survive.

``fits(pg_type)`` returns a fast, conservative check for one value (``None``
for a type it does not know: PostgreSQL itself is then the judge). The loader
quarantines a value the check rejects, so the checks follow PostgreSQL 15's
input syntax for the common formats.

A spec (a dict or a YAML/JSON file) overrides inference::

    tables:
      raw_orders:
        columns: {id: text, ordered_at: timestamp, subtotal: integer}

(``{raw_orders: {id: text, ...}}`` is accepted too). A type is a logical name
above or any PostgreSQL type (``uuid``, ``varchar(20)``, ``int4``).

A spec's type never reaches ``CREATE TABLE`` as written: ``resolve_pg_type`` has
the target database resolve it as one type name (``to_regtype``, the text as a
bound parameter, modifiers through the type's own modifier function) and the
DDL gets PostgreSQL's canonical spelling (``int4`` -> ``integer``,
``varchar(20)`` -> ``character varying(20)``). Anything else, such as
``bigint, extra text default current_user``, is a SpecError naming the column.

The value patterns are ASCII (``re.ASCII``): PostgreSQL's input functions take
ASCII digits only, so ``١٢٣`` is text here too.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from stackbook.core.errors import SpecError  # noqa: F401 (re-exported)
from stackbook.core.files import load_yaml

LOGICAL_TYPES = ("boolean", "integer", "numeric", "date", "timestamp", "timestamptz", "text")

#: logical type -> PostgreSQL column type used when a table is created
PG_TYPES = {
    "boolean": "boolean",
    "integer": "bigint",
    "numeric": "numeric",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "text": "text",
}

SAMPLE_ROWS = 1000

_INT = re.compile(r"\s*[+-]?\d+\s*\Z", re.ASCII)
_NUM = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*\Z", re.ASCII)
_NUM_SPECIAL = {"nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf"}
_DATE = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})\s*\Z", re.ASCII)
_TS = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*\Z", re.ASCII
)
_MODIFIERS = re.compile(r"\(\s*(\d{1,9})\s*(?:,\s*(\d{1,9})\s*)?\)", re.ASCII)  # varchar(20), numeric(10, 2)
MAX_INT_DIGITS = 19  # a bigint has at most 19 digits (after a sign and leading zeros)
_TS_SPECIAL = {"infinity", "-infinity", "+infinity", "epoch"}
_BOOL_TRUE = ("true", "yes", "on", "1")
_BOOL_FALSE = ("false", "no", "off", "0")


#: every spelling PostgreSQL's boolean input takes (after trimming, case-insensitive): unique prefixes
#: of true/yes/on/1 and false/no/off/0 ("o" is ambiguous between on and off)
_BOOL_WORDS = frozenset(w[:n] for w in _BOOL_TRUE + _BOOL_FALSE for n in range(1, len(w) + 1)) - {"o"}


def _is_bool(v: str) -> bool:
    return v.strip().lower() in _BOOL_WORDS


def _is_sample_bool(v: str) -> bool:
    """Booleans for inference: whole words only (``1``/``0`` are integers, ``t``/``f`` allowed)."""
    return v.strip().lower() in {"true", "false", "t", "f", "yes", "no"}


def _int_range(bits: int) -> Callable[[str], bool]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    short = len(str(hi)) - 1  # this many plain digits always fit

    def check(v: str) -> bool:
        if len(v) <= short and v.isdigit() and v.isascii():
            return True
        if not _INT.match(v) or len(v.strip().lstrip("+-").lstrip("0")) > MAX_INT_DIGITS:
            return False  # also keeps int() off strings past Python's 4,300-digit limit
        return lo <= int(v) <= hi

    return check


def _is_numeric(v: str) -> bool:
    return bool(_NUM.match(v)) or v.strip().lower() in _NUM_SPECIAL


def _is_date(v: str) -> bool:
    m = _DATE.match(v)
    if not m:
        return v.strip().lower() in _TS_SPECIAL
    try:
        _dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _ts_match(v: str):
    m = _TS.match(v)
    if not m:
        return None
    try:
        _dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4] or 0), int(m[5] or 0), int(m[6] or 0))
    except ValueError:
        return None
    return m


def _is_timestamp(v: str) -> bool:
    return _ts_match(v) is not None or v.strip().lower() in _TS_SPECIAL


_CHECKS: dict[str, Callable[[str], bool]] = {
    "boolean": _is_bool,
    "bool": _is_bool,
    "integer": _int_range(64),
    "bigint": _int_range(64),
    "int8": _int_range(64),
    "int": _int_range(32),
    "int4": _int_range(32),
    "smallint": _int_range(16),
    "int2": _int_range(16),
    "numeric": _is_numeric,
    "decimal": _is_numeric,
    "double precision": _is_numeric,
    "float8": _is_numeric,
    "real": _is_numeric,
    "float4": _is_numeric,
    "date": _is_date,
    "timestamp": _is_timestamp,
    "timestamp without time zone": _is_timestamp,
    "timestamptz": _is_timestamp,
    "timestamp with time zone": _is_timestamp,
    "text": lambda v: True,
    "character varying": lambda v: True,
    "varchar": lambda v: True,
}


def fits(pg_type: str) -> Callable[[str], bool] | None:
    """A check for one non-empty value of ``pg_type``, or None when PostgreSQL must judge."""
    key = pg_type.strip().lower()
    if key in _CHECKS:
        return _CHECKS[key]
    if key.startswith("numeric(") or key.startswith("decimal("):
        return _is_numeric
    return None


def logical_to_pg(type_name: str) -> str:
    """The column type to create for a logical or PostgreSQL type name."""
    t = type_name.strip()
    return PG_TYPES.get(t.lower(), t)


def classify(value: str) -> str:
    """The narrowest logical type of one non-empty value."""
    v = value.strip()
    if _is_sample_bool(v):
        return "boolean"
    if _INT.match(v):
        if len(v.lstrip("+-")) > 1 and v.lstrip("+-").startswith("0"):
            return "text"
        return "integer" if _int_range(64)(v) else "numeric"
    if _NUM.match(v):
        return "numeric"
    if _DATE.match(v):
        return "date" if _is_date(v) else "text"
    m = _ts_match(v)
    if m:
        return "timestamptz" if m[8] else "timestamp"
    return "text"


def _widen(a: str | None, b: str) -> str:
    """The narrowest type holding values of types a and b."""
    if a is None or a == b:
        return b
    pair = {a, b}
    if pair <= {"integer", "numeric"}:
        return "numeric"
    if pair <= {"date", "timestamp", "timestamptz"}:
        return "timestamptz" if "timestamptz" in pair else "timestamp"
    return "text"


def infer_types(columns: list[str], rows: Iterable[list[str]]) -> dict[str, str]:
    """Logical type per column from sample rows (rows of the wrong length are ignored)."""
    found: list[str | None] = [None] * len(columns)
    for row in rows:
        if len(row) != len(columns):
            continue
        for i, value in enumerate(row):
            if found[i] == "text" or value == "" or value.strip() == "":
                continue
            found[i] = _widen(found[i], classify(value))
    return {c: (t or "text") for c, t in zip(columns, found)}


def load_spec(spec: str | Path | Mapping | None) -> dict[str, dict[str, str]]:
    """A spec as ``{table: {column: type}}``; ``None`` or ``""`` gives ``{}``."""
    if spec is None or spec == "" or spec == {}:
        return {}
    where = "spec"
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        where = str(path)
        if not path.is_file():
            raise SpecError(f"spec file {path} does not exist: pass the path of a YAML or JSON file, or no spec")
        spec = load_yaml(path, what="spec file", error=SpecError, default={})
    if not isinstance(spec, Mapping):
        raise SpecError(f"{where}: expected a mapping of table -> columns, got {type(spec).__name__}")
    tables = spec.get("tables", spec) if "tables" in spec else spec
    if not isinstance(tables, Mapping):
        raise SpecError(f"{where}: `tables:` must be a mapping of table -> columns, got {type(tables).__name__}")
    out: dict[str, dict[str, str]] = {}
    for table, body in tables.items():
        cols = body.get("columns", body) if isinstance(body, Mapping) else None
        if not isinstance(cols, Mapping) or not cols:
            raise SpecError(f"{where}: table {table!r} needs a mapping of column -> type "
                            f"(e.g. {{id: integer, name: text}})")
        for col, typ in cols.items():
            if not isinstance(typ, str) or not typ.strip() or ";" in typ:
                raise SpecError(f"{where}: column {table}.{col} has type {typ!r}; use one of "
                                f"{', '.join(LOGICAL_TYPES)} or a PostgreSQL type name")
        out[str(table)] = {str(c): str(t) for c, t in cols.items()}
    return out


def _type_hint() -> str:
    return f"use one of {', '.join(LOGICAL_TYPES)} or one PostgreSQL type name such as uuid or varchar(20)"


def resolve_pg_type(conn, type_name: str, where: str) -> str:
    """PostgreSQL's canonical spelling of one type (a logical name is mapped first); SpecError naming WHERE else.

    ``to_regtype`` resolves the name (bound as a parameter, in a savepoint: a syntax error such as
    ``bigint, x text`` must not abort the caller's transaction); a modifier like ``(20)`` goes
    through the type's modifier-input function, and ``format_type`` spells the result.
    """
    import psycopg
    from psycopg import sql

    name = logical_to_pg(type_name)
    try:
        with conn.transaction():
            row = conn.execute("select t.oid, t.typtype, p.pronamespace::regnamespace::text, p.proname "
                               "from pg_type t left join pg_proc p on p.oid = t.typmodin "
                               "where t.oid = to_regtype(%s)", [name]).fetchone()
    except psycopg.Error as exc:
        raise SpecError(f"{where}: type {type_name!r} is not one PostgreSQL type name "
                        f"({exc.diag.message_primary}); {_type_hint()}") from None
    if row is None or row[1] == "p":  # unknown, or a pseudo-type (record, trigger) no column can have
        raise SpecError(f"{where}: type {type_name!r} is not a type PostgreSQL knows as a column type; {_type_hint()}")
    oid, _, schema, modifier_in = row
    mods = _MODIFIERS.findall(name)
    if not mods:
        return conn.execute("select format_type(%s, NULL)", [oid]).fetchone()[0]
    if len(mods) > 1 or modifier_in is None:
        raise SpecError(f"{where}: type {type_name!r} takes no such modifier; {_type_hint()}")
    args = "{" + ",".join(m for m in mods[0] if m) + "}"
    try:
        with conn.transaction():
            typmod = conn.execute(sql.SQL("select {}(%s::cstring[])").format(sql.Identifier(schema, modifier_in)),
                                  [args]).fetchone()[0]
    except psycopg.Error as exc:
        raise SpecError(f"{where}: type {type_name!r}: {exc.diag.message_primary}") from None
    return conn.execute("select format_type(%s, %s)", [oid, typmod]).fetchone()[0]


def resolve_pg_types(conn, named: Mapping[str, str]) -> dict[str, str]:
    """``resolve_pg_type`` for many at once: ``{where: type name}`` -> ``{where: PostgreSQL's spelling}``.

    Names without a modifier go to PostgreSQL together, in one query; the others, and any that query leaves
    unresolved, go through ``resolve_pg_type`` once per distinct name (so an error names a column as it does).
    """
    import psycopg

    wanted = {where: logical_to_pg(t) for where, t in named.items()}
    plain = sorted({n for n in wanted.values() if not _MODIFIERS.search(n)})
    known: dict[str, str] = {}
    if plain:
        try:
            with conn.transaction():
                known = dict(conn.execute("select n, format_type(t.oid, NULL) from unnest(%s::text[]) n "
                                          "join pg_type t on t.oid = to_regtype(n) where t.typtype <> 'p'",
                                          [plain]).fetchall())
        except psycopg.Error:
            known = {}  # a name to_regtype cannot parse: each goes on its own below, and fails naming its column
    out: dict[str, str] = {}
    for where, name in wanted.items():
        if name not in known:
            known[name] = resolve_pg_type(conn, named[where], where)
        out[where] = known[name]
    return out


def check_spec(conn, specs: Mapping[str, Mapping[str, str]]) -> None:
    """Every type of a loaded spec resolves (``resolve_pg_types``): a bad one fails before any file is loaded."""
    resolve_pg_types(conn, {f"spec: column {table}.{column}": type_name
                            for table, columns in specs.items() for column, type_name in columns.items()})
