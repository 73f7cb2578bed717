"""Proof that the test suite leaves a developer's own data alone (`make test` runs this around pytest).

``snapshot FILE`` records, for the checkout's own database and state folder (what a
developer's ``stackbook`` commands use, not the ``stackbook_test`` database and
``.stackbook/test`` folder that tests/conftest.py gives the test session): every ledger
row of ``stackbook.runs`` (id, env, status, finish time), the MLflow experiments, runs and
registered models, and every file (size, modification time) of the run store, the book
sources, ``_build``, MLflow artifacts, audit reports, lab results, pipeline products and
dbt targets. ``compare FILE`` records the same again and exits 1 naming what changed.

With DATABASE_URL set the tests use that database as it is, so only the files are compared.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from stackbook.core import project
from stackbook.core.errors import StackbookError

STATE_FOLDERS = ("runs", "book", "mlflow", "audit", "lab", "pipelines", "dbt")
SHOWN = 15  # differences listed per kind


def _files() -> dict[str, list[int]]:
    folders = [project.state_dir() / name for name in STATE_FOLDERS] + [project.root() / "_build"]
    store = project.run_store_root()
    if "://" not in store:
        folders.append(Path(store))
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                found[str(path)] = [st.st_size, st.st_mtime_ns]
    return found


def _rows(dbname: str, sql: str) -> list[str] | None:
    """The rows of ``sql`` in the developer's database ``dbname`` as strings; None when its table is absent."""
    import psycopg

    from stackbook.run import pgcluster

    with psycopg.connect(pgcluster.database_url(dbname), autocommit=True, connect_timeout=10) as conn:
        try:
            return sorted(json.dumps(row, default=str) for row in conn.execute(sql))
        except psycopg.errors.UndefinedTable:
            return None


def _databases() -> dict[str, list[str] | None]:
    if os.environ.get("DATABASE_URL"):
        return {}
    os.environ.pop("STACKBOOK_DATABASE", None)  # the developer's databases, whatever this shell says
    return {
        "stackbook.runs": _rows("stackbook", "select id, env, status, finished_at from stackbook.runs"),
        "mlflow experiments": _rows("mlflow", "select experiment_id, name, lifecycle_stage from experiments"),
        "mlflow runs": _rows("mlflow", "select run_uuid, status, end_time from runs"),
        "mlflow registered models": _rows("mlflow", "select name, last_updated_time from registered_models"),
    }


def snapshot() -> dict:
    return {"files": _files(), "databases": _databases()}


def differences(before: dict, after: dict) -> list[str]:
    """What changed between two snapshots, one line each (at most SHOWN per kind)."""
    lines = []
    old, new = before["files"], after["files"]
    for kind, paths in (("removed", old.keys() - new.keys()), ("added", new.keys() - old.keys()),
                        ("modified", {p for p in old.keys() & new.keys() if old[p] != new[p]})):
        lines += [f"file {kind}: {p}" for p in sorted(paths)[:SHOWN]]
    for name in sorted(before["databases"].keys() | after["databases"].keys()):
        was, now = before["databases"].get(name), after["databases"].get(name)
        if was != now:
            was, now = set(was or []), set(now or [])
            lines += [f"{name}: row removed or changed: {row}" for row in sorted(was - now)[:SHOWN]]
            lines += [f"{name}: row added or changed: {row}" for row in sorted(now - was)[:SHOWN]]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("snapshot", "compare"):
        print("usage: python tests/check_untouched.py snapshot|compare FILE", file=sys.stderr)
        return 2
    command, file = argv
    try:
        now = snapshot()
    except StackbookError as exc:
        print(f"check_untouched: {exc}", file=sys.stderr)
        return 2
    if command == "snapshot":
        Path(file).write_text(json.dumps(now))
        return 0
    changed = differences(json.loads(Path(file).read_text()), now)
    if changed:
        print("check_untouched: the tests changed the developer's own data (they must use the test database and "
              "state folder that tests/conftest.py sets):\n  " + "\n  ".join(changed), file=sys.stderr)
        return 1
    print(f"check_untouched: ledger, MLflow, run store and book untouched ({len(now['files'])} files compared)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
