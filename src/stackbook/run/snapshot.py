"""Kernel snapshots: a failed, timed-out, cancelled or waiting run's user namespace, kept for ``stackbook resume``.

``take`` runs hidden code in the run's kernel (``Kernel.run_code``: no cell, no output, no execution count)
that writes each variable of the user namespace to its own file under ``directory(run_id)``
(``<state dir>/snapshots/<run_id>/<name>.pkl``, files 0600, folders 0700), and reports what it could not
pickle (a database connection, a client, a socket, a generator: "not picklable: <type>: <error>"). IPython's
own names, names starting with ``_`` and modules are not kept: modules, connections and clients come back
through the runbook's ``setup`` cells. Functions and classes defined in cells are kept by value (dill) and
restored first, with the kernel's namespace as their globals; any other value is written by the C pickler when
it can be (fast for large arrays and DataFrames; what a cell defined, it refers to by name), else by dill.
Each variable is pickled alone: two variables that shared an object share copies of it once restored.

Then the runner, not the kernel, reads every file and deletes the ones holding a declared secret (or the
value of a credential-looking variable the run scrubs) in any form ``scrub.forms`` knows, listing them as
"holds the value of secret NAME": those come back through the setup cells too. The manifest
(``manifest.json``, ``Manifest``) names what was kept and left out, never a value.

Snapshots are working state, not evidence: only under the local state folder, never in the run store, the
ledger or the book; ``remove`` drops one when the resumed run succeeds, ``prune`` those older than
``STACKBOOK_SNAPSHOT_RETENTION_DAYS`` (default 7). ``restore`` loads one into a fresh kernel; a variable that
fails to load is reported in the returned manifest's ``left_out``, not raised. Only Python kernels are
snapshotted; the kernel needs dill (in stackbook's own environment it is there).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import KernelCodeError, SnapshotError, UsageError
from stackbook.run import scrub

TIMEOUT_ENV = "STACKBOOK_SNAPSHOT_TIMEOUT"
SNAPSHOT_TIMEOUT_S = 120.0  # default of STACKBOOK_SNAPSHOT_TIMEOUT: how long the kernel has to write or load one
RETENTION_ENV = "STACKBOOK_SNAPSHOT_RETENTION_DAYS"
RETENTION_DAYS = 7.0
MANIFEST = "manifest.json"
REPORT = ".kernel-report.json"  # what the kernel's hidden code reports back; removed once read
SUFFIX = ".pkl"
REASON_MAX = 300  # characters of a left-out variable's reason
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

#: runs in the kernel: every variable of the user namespace to DIRECTORY/<name>.pkl, the report to REPORT
_TAKE = r'''
def _stackbook_snapshot_take(directory, report):
    import json, os, pickle, types
    import dill
    ip = get_ipython()
    hidden = ip.user_ns_hidden
    definitions, values, left_out, modules = [], [], {}, []
    old = os.umask(0o077)
    try:
        for name, value in list(ip.user_ns.items()):
            if name.startswith("_") or (name in hidden and hidden[name] is value):
                continue
            if isinstance(value, types.ModuleType):
                modules.append(name)
                continue
            if not name.isidentifier():
                left_out[name] = "not an identifier"
                continue
            kind = isinstance(value, (type, types.FunctionType))
            path = os.path.join(directory, name + ".pkl")
            error = None
            # definitions by value; anything else by the C pickler (fast; what a cell defined, by name), else dill
            for how in (("dill-value",) if kind else ("pickle", "dill-name", "dill-value")):
                try:
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                        if how == "pickle":
                            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
                        else:
                            dill.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL, byref=how == "dill-name",
                                      recurse=False)
                    error = None
                    break
                except Exception as exc:
                    error = exc
            if error is None:
                (definitions if kind else values).append(name)
            else:
                if os.path.exists(path):
                    os.unlink(path)
                left_out[name] = f"not picklable: {type(value).__name__}: {type(error).__name__}: {error}"
        with open(os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump({"saved": definitions + values, "left_out": left_out, "modules": modules}, fh)
    finally:
        os.umask(old)
try:
    _stackbook_snapshot_take(%(directory)r, %(report)r)
finally:
    del _stackbook_snapshot_take
'''

#: runs in the kernel: every NAMES' file loaded into the user namespace, in order; failures to REPORT
_RESTORE = r'''
def _stackbook_snapshot_restore(directory, names, report):
    import json, os
    import dill
    ns = get_ipython().user_ns
    failed = {}
    for name in names:
        try:
            with open(os.path.join(directory, name + ".pkl"), "rb") as fh:
                ns[name] = dill.load(fh)
        except Exception as exc:
            failed[name] = f"not restored: {type(exc).__name__}: {exc}"
    old = os.umask(0o077)
    try:
        with open(os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump({"failed": failed}, fh)
    finally:
        os.umask(old)
try:
    _stackbook_snapshot_restore(%(directory)r, %(names)r, %(report)r)
finally:
    del _stackbook_snapshot_restore
'''


@dataclass
class Manifest:
    """What a snapshot holds: the variables ``restore`` brings back, those left out and why; never a value."""

    run_id: str
    taken_at: str  # ISO UTC
    saved: list[str]  # variable names restored by restore(), definitions (functions, classes) first
    left_out: dict[str, str]  # name -> why: "not picklable: <TypeName>: <error>" / "holds the value of secret X"
    size_bytes: int
    seconds: float
    modules: list[str] = field(default_factory=list)  # modules in the namespace: the setup cells import them

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> Manifest:
        return cls(run_id=doc["run_id"], taken_at=doc["taken_at"], saved=list(doc["saved"]),
                   left_out=dict(doc["left_out"]), size_bytes=int(doc["size_bytes"]), seconds=float(doc["seconds"]),
                   modules=list(doc.get("modules", [])))


def root() -> Path:
    """``<state dir>/snapshots`` (0700)."""
    path = project.state_dir() / "snapshots"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def directory(run_id: str) -> Path:
    """``<state dir>/snapshots/<run_id>``, created 0700; a RUN_ID that is no run id is a UsageError (exit 2)."""
    if not _RUN_ID.fullmatch(run_id or ""):
        raise UsageError(f"{run_id!r} is not a run id (letters, digits, '-', '_' and '.'): give the id "
                         "`stackbook runs` shows (nothing was executed)")
    path = root() / run_id
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV) or SNAPSHOT_TIMEOUT_S)
    except ValueError:
        return SNAPSHOT_TIMEOUT_S


def _not_taken(run_id: str, why: str) -> None:
    print(f"stackbook: run {run_id}: kernel snapshot not taken: {why}", file=sys.stderr, flush=True)


def _is_python(kern) -> bool:
    spec = getattr(kern.client.km, "kernel_spec", None)
    return (getattr(spec, "language", None) or "python").lower() == "python"


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    finally:
        path.unlink(missing_ok=True)


def _secrets_in_file(path: Path, scrubber: scrub.Scrubber) -> set[str]:
    """Names of the secrets the file at PATH holds, in any form (``Scrubber.secrets_in``), read as a map."""
    if not scrubber or path.stat().st_size == 0:
        return set()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return scrubber.secrets_in(data)


def _keep_clean(folder: Path, saved: list[str], left_out: dict[str, str], scrubber: scrub.Scrubber) -> list[str]:
    """SAVED less the variables whose file (or name) holds a secret: those files deleted, named in LEFT_OUT."""
    kept = []
    for name in saved:
        path = folder / f"{name}{SUFFIX}"
        found = _secrets_in_file(path, scrubber) | (scrubber.secrets_in(name.encode()) if scrubber else set())
        if found:
            path.unlink(missing_ok=True)
            left_out[scrubber.text(name)] = f"holds the value of secret {', '.join(sorted(found))}"
        else:
            os.chmod(path, 0o600)
            kept.append(name)
    return kept


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    fd = os.open(folder / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest.to_json(), fh, indent=1, sort_keys=True)
    os.chmod(folder / MANIFEST, 0o600)


def take(kern, run_id: str, scrubber: scrub.Scrubber) -> Manifest | None:
    """Snapshot the user namespace of KERN (a running ``kernel.Kernel``) for run RUN_ID; its manifest.

    Never raises for what the namespace holds: None, with one line on stderr, when the kernel is dead, is not
    Python, lacks dill or does not answer within ``STACKBOOK_SNAPSHOT_TIMEOUT`` seconds (nothing is kept then).
    """
    started = time.monotonic()
    if not kern.alive():
        _not_taken(run_id, "the kernel is not running")
        return None
    if not _is_python(kern):
        _not_taken(run_id, "only Python kernels are snapshotted")
        return None
    remove(run_id)
    try:
        return _take(kern, run_id, scrubber, started)
    except (KernelCodeError, OSError, ValueError, KeyError) as exc:
        remove(run_id)
        _not_taken(run_id, scrubber.text(str(exc)))
        return None


def _take(kern, run_id: str, scrubber: scrub.Scrubber, started: float) -> Manifest:
    folder = directory(run_id)
    report = folder / REPORT
    kern.run_code(_TAKE % {"directory": str(folder), "report": str(report)}, _timeout())
    found = _read_report(report)
    left_out = {scrubber.text(k): scrubber.text(v)[:REASON_MAX] for k, v in found["left_out"].items()}
    saved = _keep_clean(folder, found["saved"], left_out, scrubber)
    size = sum((folder / f"{name}{SUFFIX}").stat().st_size for name in saved)
    manifest = Manifest(run_id=run_id, taken_at=datetime.now(UTC).isoformat(timespec="seconds"), saved=saved,
                        left_out=left_out, size_bytes=size, seconds=round(time.monotonic() - started, 3),
                        modules=sorted(found.get("modules", [])))
    _write_manifest(folder, manifest)
    return manifest


def load_manifest(run_id: str) -> Manifest | None:
    """The manifest of run RUN_ID's snapshot; None when it has none (never taken, removed, pruned, unreadable)."""
    if not _RUN_ID.fullmatch(run_id or ""):
        return None
    path = project.state_dir() / "snapshots" / run_id / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def restore(kern, run_id: str) -> Manifest:
    """Load run RUN_ID's snapshot into KERN (a fresh running kernel); the manifest, with what failed to load
    moved from ``saved`` to ``left_out``. ``SnapshotError`` when there is no snapshot or the kernel fails."""
    manifest = load_manifest(run_id)
    if manifest is None:
        raise SnapshotError(f"run {run_id} has no kernel snapshot (the kernel died, the runner was killed, or it "
                            "was removed or expired): resume with --from-cell N to run the setup cells and go on "
                            "at cell N")
    folder = directory(run_id)
    report = folder / ".restore-report.json"
    source = _RESTORE % {"directory": str(folder), "names": list(manifest.saved), "report": str(report)}
    try:
        kern.run_code(source, _timeout())
        failed: dict[str, Any] = _read_report(report)["failed"]
    except (KernelCodeError, OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"the kernel snapshot of run {run_id} could not be restored: {kern.scrubber.text(str(exc))}"
                            "; resume with --from-cell N to run the setup cells instead") from None
    manifest.saved = [name for name in manifest.saved if name not in failed]
    manifest.left_out = {**manifest.left_out, **{k: kern.scrubber.text(str(v))[:REASON_MAX] for k, v in failed.items()}}
    return manifest


def remove(run_id: str) -> None:
    """Delete run RUN_ID's snapshot, if any."""
    if _RUN_ID.fullmatch(run_id or ""):
        shutil.rmtree(project.state_dir() / "snapshots" / run_id, ignore_errors=True)


def _retention_days() -> float:
    try:
        return float(os.environ.get(RETENTION_ENV) or RETENTION_DAYS)
    except ValueError:
        return RETENTION_DAYS


def _last_change(folder: Path) -> float:
    """When FOLDER or anything in it last changed (its newest mtime)."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])


def prune(retention_days: float | None = None) -> list[str]:
    """Remove the snapshots older than RETENTION_DAYS (default ``STACKBOOK_SNAPSHOT_RETENTION_DAYS``, else 7),
    by the newest mtime in their folder; the run ids removed."""
    days = _retention_days() if retention_days is None else retention_days
    base = project.state_dir() / "snapshots"
    if not base.is_dir():
        return []
    cutoff = time.time() - days * 86400
    removed = []
    for folder in sorted(base.iterdir()):
        try:
            old = folder.is_dir() and _last_change(folder) < cutoff
        except OSError:  # removed meanwhile
            continue
        if old:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
