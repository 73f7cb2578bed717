"""Reading CSV files a piece at a time: header, sample, records with line numbers, checksums.

Nothing here holds a whole file: blocks are ``BLOCK`` bytes, records are read
one at a time, and the sample is the first ``SAMPLE_ROWS`` records.

Line numbers are physical lines, 1 being the header; a record whose quoted
field spans lines is numbered by its first line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stackbook.core.errors import EncodingNotSupported, HeaderError  # noqa: F401 (re-exported)

BLOCK = 1 << 20
MAX_RECORD_LINES = 10_000  # a quoted field longer than this many lines is taken as an unterminated quote
MAX_RECORD_BYTES = 16 << 20

#: Python codec name -> PostgreSQL encoding name for COPY ... (ENCODING ...)
PG_ENCODINGS = {
    "utf-8": "UTF8",
    "utf-8-sig": "UTF8",
    "iso8859-1": "LATIN1",
    "latin-1": "LATIN1",
    "iso8859-2": "LATIN2",
    "iso8859-15": "LATIN9",
    "cp1250": "WIN1250",
    "cp1251": "WIN1251",
    "cp1252": "WIN1252",
    "koi8-r": "KOI8R",
    "euc_jp": "EUC_JP",
    "shift_jis": "SJIS",
    "gbk": "GBK",
    "big5": "BIG5",
}


@dataclass(frozen=True)
class Encoding:
    python: str  # codec name for Python decoding
    postgres: str  # name for COPY's ENCODING option


def encoding(name: str) -> Encoding:
    """Resolve an encoding name ("utf-8", "latin-1", "cp1252", ...) for both Python and PostgreSQL."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise EncodingNotSupported(f"unknown encoding {name!r}: use e.g. utf-8, latin-1 or cp1252") from None
    if codec == "utf-8" and name.lower().replace("_", "-") in ("utf-8-sig", "utf8-sig"):
        codec = "utf-8-sig"
    pg = PG_ENCODINGS.get(codec)
    if pg is None:
        raise EncodingNotSupported(
            f"encoding {name!r} ({codec}) cannot be loaded with COPY: convert the files to UTF-8 or use one of "
            + ", ".join(sorted(PG_ENCODINGS)))
    return Encoding("utf-8" if codec == "utf-8-sig" else codec, pg)


_IDENT_BAD = re.compile(r"[^a-z0-9_]+")


def column_name(raw: str, n: int) -> str:
    """A header cell as a column name: lower case, runs of other characters as ``_``."""
    name = _IDENT_BAD.sub("_", raw.strip().lower()).strip("_")
    if not name:
        name = f"column_{n}"
    if name[0].isdigit():
        name = f"c_{name}"
    return name[:63]


def table_name(path: Path) -> str:
    """A file's table: its stem, cleaned like a column name."""
    return column_name(path.stem, 0)


def split_line(text: str) -> list[str]:
    """Fields of one complete CSV record (its line terminator may be present)."""
    text = text.rstrip("\r\n")
    if '"' not in text:
        return text.split(",")
    return next(csv.reader((text,)))


def complete(text: str) -> bool:
    """True when the text holds whole records (an even number of double quotes)."""
    return text.count('"') % 2 == 0


@dataclass
class Record:
    line: int  # physical line of the record's start
    text: str | None  # decoded record, line terminator included; None when bytes did not decode
    raw: bytes
    error: str | None = None  # why this record is bad before any field is looked at


def records(fh: Iterable[bytes], enc: Encoding, start_line: int = 1) -> Iterator[Record]:
    """Records from an iterable of raw lines, e.g. a binary file at some position (blank lines are skipped)."""
    line_no = start_line - 1
    pending: list[bytes] = []
    pending_text: list[str] = []
    pending_start = 0
    pending_bytes = 0
    for raw in fh:
        line_no += 1
        try:
            text = raw.decode(enc.python)
        except UnicodeDecodeError as exc:
            bad = raw[exc.start:exc.start + 4]
            if pending:
                yield Record(pending_start, None, b"".join(pending) + raw,
                             f"bytes not valid {enc.python} on line {line_no}, "
                             f"byte {exc.start + 1}: {bad!r}")
                pending, pending_text, pending_bytes = [], [], 0
            else:
                yield Record(line_no, None, raw, f"bytes not valid {enc.python} at byte {exc.start + 1}: {bad!r}")
            continue
        if not pending:
            if not text.strip():
                continue
            if complete(text):
                yield Record(line_no, text, raw)
                continue
            pending_start = line_no
        pending.append(raw)
        pending_text.append(text)
        pending_bytes += len(raw)
        joined = "".join(pending_text)
        if complete(joined):
            yield Record(pending_start, joined, b"".join(pending))
            pending, pending_text, pending_bytes = [], [], 0
        elif len(pending) >= MAX_RECORD_LINES or pending_bytes >= MAX_RECORD_BYTES:
            yield Record(pending_start, None, b"".join(pending)[:4096],
                         f"unterminated quoted field (more than {len(pending)} lines)")
            pending, pending_text, pending_bytes = [], [], 0
    if pending:
        yield Record(pending_start, None, b"".join(pending)[:4096], "unterminated quoted field at end of file")


@dataclass
class Header:
    columns: list[str]  # cleaned column names
    raw: list[str]  # header cells as written
    end: int  # byte offset just past the header record
    lines: int  # physical lines the header takes (normally 1)


def read_header(path: Path, enc: Encoding) -> Header | None:
    """The header record, or None for an empty (or blank) file."""
    with open(path, "rb") as fh:
        offset = 0
        line_no = 0
        parts: list[bytes] = []
        while True:
            raw = fh.readline()
            if not raw:
                if parts:
                    raise HeaderError(f"{path.name}: the header (line 1) has an unterminated quoted field")
                return None
            offset += len(raw)
            line_no += 1
            if not parts and not raw.strip():
                continue
            parts.append(raw)
            try:
                text = b"".join(parts).decode(enc.python)
            except UnicodeDecodeError as exc:
                raise HeaderError(f"{path.name}: the header (line {line_no}) is not valid {enc.python} "
                                  f"at byte {exc.start + 1}; pass the file's encoding") from None
            if complete(text) or len(parts) >= MAX_RECORD_LINES:
                break
    if text.startswith("\ufeff"):
        text = text[1:]
    cells = split_line(text)
    names: list[str] = []
    seen: dict[str, int] = {}
    for n, cell in enumerate(cells, 1):
        name = column_name(cell, n)
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 1)
        names.append(name)
    return Header(names, cells, offset, line_no)


def has_rows_after(path: Path, offset: int) -> bool:
    """True when anything but whitespace follows ``offset`` (reads at most until the first such byte)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            block = fh.read(65536)
            if not block:
                return False
            if block.strip():
                return True


def sample(path: Path, enc: Encoding, header: Header, n: int) -> list[list[str]]:
    """The first ``n`` readable records after the header, as lists of fields."""
    rows: list[list[str]] = []
    with open(path, "rb") as fh:
        fh.seek(header.end)
        for rec in records(fh, enc, header.lines + 1):
            if rec.text is None:
                continue
            try:
                rows.append(split_line(rec.text))
            except csv.Error:
                continue
            if len(rows) >= n:
                break
    return rows


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest()
