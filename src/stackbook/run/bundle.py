"""Evidence bundles: one zip with a period's evidence, checked offline (``stackbook evidence export / verify``).

``export`` selects the runs of one environment from the evidence chain (their latest entries, optionally
started since / until a time and of some runbooks only: ``--control`` gives the runbooks mapped to a
control) and writes, atomically (a temporary file renamed: never a half bundle)::

    manifest.json                      what the bundle holds: format, selection, chain head, SHA-256 of every file
    ledger/runs.jsonl                  each run's ledger row as its chain entry holds it, with that entry's seq
    ledger/approvals.jsonl             the approvals those runs consumed (stackbook.approvals rows)
    ledger/attestations.jsonl          the attestations of their manual steps (stackbook.attestations rows)
    chain/segment.jsonl                every chain entry from the first one of the selection to the head:
                                       seq, kind, ref, prev_hash, hash and the exact body that was hashed
    chain/head.json                    the head: seq and hash, to compare with a head published elsewhere
    notebooks/<env>/<runbook>/<id>.ipynb   the executed notebooks, bytes as the run store holds them
    reports/<id>.audit.json            the JSON report a compliance audit run wrote
    reports/<id>.dr.json               what a DR drill run measured (its recorded results)

The bundle's digest is the SHA-256 of ``manifest.json``: the auditor compares it with the one export printed.

``verify`` needs nothing but the file (no database): every file against the manifest (edited, added or
removed: named), the segment's links (``hash = sha256(prev_hash + body)``, seq without gaps), each ledger
row against its chain entry, field by field, each executed notebook against the entry's ``notebook_sha256``,
the approvals and attestations against their entries, and, with ``head``, that the segment ends at or
contains a head published earlier. What a forger who rewrites the whole bundle consistently can do is what a
superuser can do to the chain: a head published outside both catches it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stackbook.core import notebooks
from stackbook.core.errors import UsageError
from stackbook.run import chain, evidence, runstore

FORMAT = "stackbook-evidence-bundle/1"
MANIFEST = "manifest.json"
RUNS, APPROVALS, ATTESTATIONS = "ledger/runs.jsonl", "ledger/approvals.jsonl", "ledger/attestations.jsonl"
SEGMENT, HEAD = "chain/segment.jsonl", "chain/head.json"
AUDIT_RUNBOOK, DR_RUNBOOK = "compliance_audit", "dr_drill"


def parse_time(value: str | None, option: str, *, end_of_day: bool = False) -> datetime | None:
    """``--since`` / ``--until`` VALUE as a UTC time; a date alone is its midnight (``end_of_day``: the next
    midnight, so ``--until 2026-12-01`` includes that day). A value that is not a date is exit 2."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a date: use YYYY-MM-DD or an ISO 8601 time") from None
    if end_of_day and len(value.strip()) == 10:
        when += timedelta(days=1)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _canon(value: Any) -> bytes:
    return (chain.canonical_json(value) + "\n").encode("utf-8")


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(_canon(r) for r in rows)


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: chain._json_value(v) for k, v in row.items()}


# ---------------------------------------------------------------- export


@dataclass
class Exported:
    """What ``export`` wrote: the file, its contents, the chain head it covers and the bundle's digest."""

    path: Path
    files: int = 0
    size: int = 0
    runs: int = 0
    head_seq: int = 0
    head: str = chain.GENESIS
    digest: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "files": self.files, "bytes": self.size, "runs": self.runs,
                "chain_head": {"seq": self.head_seq, "hash": self.head}, "bundle_sha256": self.digest,
                "warnings": self.warnings}


_SELECT_SQL = """
select distinct on (ref) seq, ref, body from stackbook.chain
 where kind = 'run' and entry->>'env' = %(env)s
   and (%(since)s::timestamptz is null or (entry->>'started_at')::timestamptz >= %(since)s::timestamptz)
   and (%(until)s::timestamptz is null or (entry->>'started_at')::timestamptz < %(until)s::timestamptz)
   and (%(names)s::text[] is null or entry->>'runbook' = any(%(names)s::text[]))
 order by ref, seq desc
"""


def _select(conn, env: str, since, until, runbooks) -> list[tuple[int, str, dict]]:
    names = sorted(runbooks) if runbooks is not None else None
    rows = conn.execute(_SELECT_SQL, {"env": env, "since": since, "until": until, "names": names}).fetchall()
    return sorted(((seq, ref, json.loads(body)) for seq, ref, body in rows), key=lambda r: r[0])


def _dict_rows(conn, sql: str, args: tuple) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _ledger_lines(conn, selected: list[tuple[int, str, dict]]) -> tuple[list[dict], dict[str, dict]]:
    """Each selected run's row now, as its chain entry holds it (the entry's keys); and the rows by id."""
    rows = {r["id"]: r for r in _dict_rows(conn, f"select {', '.join(chain.ROW_COLUMNS)} from stackbook.runs "
                                                 "where id = any(%s)", ([ref for _, ref, _ in selected],))}
    lines = []
    for seq, ref, entry in selected:
        row = rows.get(ref)
        now = chain.run_entry(row) if row else None
        lines.append({"seq": seq, "id": ref, "row": {k: now.get(k) for k in entry} if now else None})
    return lines, rows


def _add_notebooks(files: dict[str, bytes], selected, out: Exported) -> None:
    for _, ref, entry in selected:
        location = entry.get("output")
        if not location or not entry.get("notebook_sha256"):
            continue
        try:
            data = evidence.read_notebook_bytes(location, entry.get("env"))
        except UsageError as exc:
            out.warnings.append(f"run {ref}: executed notebook {location} not readable: {exc}")
            continue
        if data is None:
            out.warnings.append(f"run {ref}: executed notebook {location} is gone from the run store")
            continue
        files[notebook_name(entry)] = data


def notebook_name(entry: dict[str, Any]) -> str:
    """Where a run's executed notebook sits in the bundle."""
    return f"notebooks/{entry.get('env')}/{entry.get('runbook')}/{entry.get('id')}.ipynb"


def _audit_report(entry: dict[str, Any]) -> bytes | None:
    """The JSON report an audit run wrote: beside its notebook in the run store, else its ``report_path``."""
    location = entry.get("output") or ""
    if location.endswith(".ipynb"):
        try:
            return runstore.read_bytes(location[: -len(".ipynb")] + ".audit.json",
                                       runstore.env_endpoint(entry.get("env")) if location.startswith("s3://")
                                       else None)
        except (OSError, UsageError):  # gone (FileNotFoundError), or a store that refuses: try the local copy
            pass
    path = (entry.get("results") or {}).get("report_path")
    try:
        return Path(path).read_bytes() if path else None
    except OSError:
        return None


def _add_reports(files: dict[str, bytes], selected, out: Exported) -> None:
    for _, ref, entry in selected:
        if entry.get("runbook") == AUDIT_RUNBOOK and entry.get("status") == "succeeded":
            report = _audit_report(entry)
            if report is None:
                out.warnings.append(f"run {ref}: its audit report is no longer in the run store or on disk")
            else:
                files[f"reports/{ref}.audit.json"] = report
        elif entry.get("runbook") == DR_RUNBOOK and entry.get("results"):
            files[f"reports/{ref}.dr.json"] = json.dumps(
                {"run_id": ref, "status": entry.get("status"), "results": entry["results"]}, indent=1,
                sort_keys=True).encode("utf-8") + b"\n"


def _add_ledger(conn, files: dict[str, bytes], selected) -> list[str]:
    """The runs, their approvals and attestations; returns every chain ref of the selection."""
    lines, rows = _ledger_lines(conn, selected)
    files[RUNS] = _jsonl(lines)
    approval_ids = sorted({r["approval_id"] for r in rows.values() if r.get("approval_id")})
    approvals = _dict_rows(conn, "select * from stackbook.approvals where id = any(%s) order by created_at, id",
                           (approval_ids,))
    attestations = _dict_rows(conn, "select * from stackbook.attestations where run_id = any(%s) order by at, id",
                              (list(rows),))
    files[APPROVALS] = _jsonl([_row_json(a) for a in approvals])
    files[ATTESTATIONS] = _jsonl([_row_json(a) for a in attestations])
    return [ref for _, ref, _ in selected] + approval_ids + [a["id"] for a in attestations]


def _add_segment(conn, files: dict[str, bytes], refs: list[str], out: Exported) -> int:
    first = conn.execute("select min(seq) from stackbook.chain where ref = any(%s)", (refs,)).fetchone()[0]
    segment = [{"seq": seq, "kind": kind, "ref": ref, "prev_hash": prev, "hash": digest, "body": body}
               for seq, kind, ref, prev, digest, body in conn.execute(
                   "select seq, kind, ref, prev_hash, hash, body from stackbook.chain where seq >= %s order by seq",
                   (first,))]
    files[SEGMENT] = _jsonl(segment)
    out.head_seq, out.head = segment[-1]["seq"], segment[-1]["hash"]
    files[HEAD] = _canon({"seq": out.head_seq, "hash": out.head})
    return first


def export(conn, env: str, path: Path | str, *, since: datetime | None = None, until: datetime | None = None,
           runbooks: set[str] | None = None, selection: dict[str, Any] | None = None) -> Exported:
    """The evidence of ENV's runs (started in [SINCE, UNTIL), of RUNBOOKS only when given) written to PATH.
    Nothing selected is exit 2 with nothing written. SELECTION (the options given) goes into the manifest."""
    from stackbook.core.files import atomic_write_bytes

    out = Exported(path=Path(path))
    selected = _select(conn, env, since, until, runbooks)
    if not selected:
        window = "".join([f" since {since.isoformat()}" if since else "", f" until {until.isoformat()}" if until
                          else "", f" of runbooks {', '.join(sorted(runbooks)) or '(none)'}" if runbooks is not None
                          else ""])
        raise UsageError(f"no run of environment {env!r}{window} is in the evidence chain: nothing to export, "
                         "nothing was written (widen --since/--until, or check -e and --control)")
    files: dict[str, bytes] = {}
    refs = _add_ledger(conn, files, selected)
    first = _add_segment(conn, files, refs, out)
    _add_notebooks(files, selected, out)
    _add_reports(files, selected, out)
    manifest = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "env": env,
                "selection": selection or {}, "runs": len(selected),
                "chain": {"first_seq": first, "head_seq": out.head_seq, "head": out.head},
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                          for name, data in sorted(files.items())},
                "warnings": out.warnings}
    files[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            zf.writestr(name, files[name])
    data = buffer.getvalue()
    atomic_write_bytes(out.path, data)
    out.files, out.size, out.runs = len(files), len(data), len(selected)
    out.digest = hashlib.sha256(files[MANIFEST]).hexdigest()
    return out


# ---------------------------------------------------------------- verify (offline)


@dataclass
class Checked:
    """What ``verify`` found in a bundle: its digest, what it holds, and every problem (empty: it holds)."""

    path: Path
    digest: str = ""
    files: int = 0
    runs: int = 0
    entries: int = 0
    head_seq: int = 0
    head: str = chain.GENESIS
    published_head: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": str(self.path), "bundle_sha256": self.digest, "files": self.files,
                "runs": self.runs, "chain_entries": self.entries,
                "chain_head": {"seq": self.head_seq, "hash": self.head}, "published_head": self.published_head,
                "problems": self.problems}


def _open(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every file of the bundle and its manifest; exit 2 when it is not a bundle at all."""
    try:
        with zipfile.ZipFile(path) as zf:
            files = {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: give the path of a bundle `stackbook evidence export` "
                         "wrote") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an evidence bundle (a .zip file)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise UsageError(f"{path} is not a readable zip file ({exc}): not an evidence bundle; nothing was "
                         "checked") from None
    try:
        manifest = json.loads(files[MANIFEST])
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no files listed")
    except KeyError:
        raise UsageError(f"{path} has no {MANIFEST}: not a stackbook evidence bundle; nothing was checked") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {MANIFEST} is not a bundle manifest ({exc}); nothing was checked") from None
    return files, manifest


def _check_files(files: dict[str, bytes], manifest: dict[str, Any], checked: Checked) -> None:
    listed = manifest["files"]
    for name in sorted(listed):
        want = (listed[name] or {}).get("sha256") if isinstance(listed[name], dict) else None
        if name not in files:
            checked.problems.append(f"file {name} removed: the manifest lists it, the bundle does not hold it")
        elif hashlib.sha256(files[name]).hexdigest() != want:
            checked.problems.append(f"file {name} edited: its sha256 is {hashlib.sha256(files[name]).hexdigest()[:12]}"
                                    f"..., the manifest says {str(want)[:12]}...")
    for name in sorted(set(files) - set(listed) - {MANIFEST}):
        checked.problems.append(f"file {name} added: it is not in the manifest")


def _lines(files: dict[str, bytes], name: str, checked: Checked) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(files.get(name, b"").splitlines(), 1):
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("not an object")
            out.append(item)
        except (ValueError, UnicodeDecodeError) as exc:
            checked.problems.append(f"{name} line {number} is not a JSON object ({str(exc)[:60]})")
    return out


def _check_segment(files: dict[str, bytes], checked: Checked) -> dict[int, dict[str, Any]]:
    """The segment's links; returns its entries by seq with their bodies parsed (``entry``)."""
    by_seq: dict[int, dict[str, Any]] = {}
    before = None
    for item in _lines(files, SEGMENT, checked):
        seq, body, prev = item.get("seq"), item.get("body"), item.get("prev_hash")
        if not isinstance(seq, int) or not isinstance(body, str) or not isinstance(prev, str):
            checked.problems.append(f"{SEGMENT}: an entry without seq, prev_hash and body: {notebooks.shown(item)}")
            continue
        if before is not None and seq != before["seq"] + 1:
            checked.problems.append(f"chain entry {seq}: entries {before['seq'] + 1} to {seq - 1} missing from the "
                                    f"segment (after entry {before['seq']})")
        if before is not None and prev != before.get("hash"):
            checked.problems.append(f"chain entry {seq}: does not link to entry {before['seq']} (its prev_hash is "
                                    "not that entry's hash)")
        if seq == 1 and prev != chain.GENESIS:
            checked.problems.append("chain entry 1: its prev_hash is not the genesis hash")
        if chain.sha256_text(prev + body) != item.get("hash"):
            checked.problems.append(f"chain entry {seq} (ref {item.get('ref')}): its hash does not match its body: "
                                    "the entry was edited")
        try:
            item["entry"] = json.loads(body)
        except ValueError:
            item["entry"] = {}
        by_seq[seq] = before = item
    checked.entries = len(by_seq)
    return by_seq


def _check_head(files: dict[str, bytes], manifest: dict[str, Any], by_seq: dict[int, dict], checked: Checked) -> None:
    last = by_seq[max(by_seq)] if by_seq else None
    try:
        head = json.loads(files.get(HEAD, b"{}"))
    except ValueError:
        head = {}
    checked.head_seq, checked.head = (last["seq"], last.get("hash")) if last else (0, chain.GENESIS)
    said = manifest.get("chain") or {}
    for what, value in ((HEAD, head), (MANIFEST, {"seq": said.get("head_seq"), "hash": said.get("head")})):
        if last and (value.get("seq"), value.get("hash")) != (last["seq"], last.get("hash")):
            checked.problems.append(f"{what} says the head is entry {value.get('seq')} {str(value.get('hash'))[:12]}"
                                    f"..., the segment ends at entry {last['seq']} {str(last.get('hash'))[:12]}...")
    published = checked.published_head
    if published and not any(item.get("hash") == published for item in by_seq.values()):
        checked.problems.append(f"the published head {published[:12]}... is not in the bundle's chain segment "
                                f"(entries {min(by_seq, default=0)} to {max(by_seq, default=0)}): the chain was "
                                "rewritten or cut, or the head is older than the segment")


def _same(a: Any, b: Any) -> bool:
    """Equal values; two ISO times are equal when they are the same instant (a row and its entry may differ in
    the time zone they are written in)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):
        try:
            return datetime.fromisoformat(a) == datetime.fromisoformat(b)
        except ValueError:
            return False
    return False


def _check_runs(files: dict[str, bytes], by_seq: dict[int, dict], checked: Checked) -> None:
    for line in _lines(files, RUNS, checked):
        seq, run_id = line.get("seq"), line.get("id")
        item = by_seq.get(seq)
        if item is None or item.get("ref") != run_id or item["entry"].get("kind") != "run":
            checked.problems.append(f"run {run_id}: its chain entry {seq} is not in the segment")
            continue
        checked.runs += 1
        entry, row = item["entry"], line.get("row")
        if row is None:
            checked.problems.append(f"run {run_id} (entry {seq}): its ledger row was gone at export")
        else:
            for key in [k for k in entry if not _same(row.get(k), entry.get(k))]:
                checked.problems.append(f"run {run_id} (entry {seq}): field {key} differs: the ledger row says "
                                        f"{notebooks.shown(row.get(key))}, the chain "
                                        f"{notebooks.shown(entry.get(key))}")
        expected = entry.get("notebook_sha256")
        name = notebook_name(entry)
        if expected and name not in files:
            checked.problems.append(f"run {run_id} (entry {seq}): its executed notebook {name} is not in the bundle")
        elif expected and hashlib.sha256(files[name]).hexdigest() != expected:
            checked.problems.append(f"run {run_id} (entry {seq}): executed notebook {name} has sha256 "
                                    f"{hashlib.sha256(files[name]).hexdigest()[:12]}..., the chain records "
                                    f"{expected[:12]}...")


def _check_acts(files: dict[str, bytes], by_seq: dict[int, dict], checked: Checked) -> None:
    """Approvals and attestations against their chain entries (the fields an entry holds)."""
    entries = {(item["entry"].get("kind"), item.get("ref")): item for item in by_seq.values()}
    for name, kind in ((APPROVALS, "approval"), (ATTESTATIONS, "attestation")):
        for row in _lines(files, name, checked):
            item = entries.get((kind, row.get("id")))
            if item is None:
                checked.problems.append(f"{kind} {row.get('id')}: no chain entry of it in the segment")
                continue
            for key in [k for k in item["entry"] if k in row and not _same(row[k], item["entry"][k])]:
                checked.problems.append(f"{kind} {row.get('id')} (entry {item['seq']}): field {key} differs: the "
                                        f"row says {notebooks.shown(row[key])}, the chain "
                                        f"{notebooks.shown(item['entry'][key])}")


def verify(path: Path | str, *, published_head: str | None = None) -> Checked:
    """The bundle at PATH checked offline (no database); ``Checked.problems`` names everything that does not hold.
    Not a zip, or no manifest: UsageError (exit 2)."""
    if published_head is not None and not chain.HASH_RE.fullmatch(published_head):
        raise UsageError(f"--head {notebooks.shown(published_head)} is not a chain hash (64 hex digits, as "
                         "`stackbook verify` prints it)")
    checked = Checked(path=Path(path), published_head=published_head)
    files, manifest = _open(checked.path)
    checked.digest, checked.files = hashlib.sha256(files[MANIFEST]).hexdigest(), len(files)
    if manifest.get("format") != FORMAT:
        checked.problems.append(f"{MANIFEST}: format {notebooks.shown(manifest.get('format'))}, not {FORMAT}")
    _check_files(files, manifest, checked)
    by_seq = _check_segment(files, checked)
    _check_head(files, manifest, by_seq, checked)
    _check_runs(files, by_seq, checked)
    _check_acts(files, by_seq, checked)
    return checked
