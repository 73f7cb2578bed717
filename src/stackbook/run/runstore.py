"""The run store: where executed notebooks are written.

Local by default (``.stackbook/runs/<env>/<runbook>/<run_id>.ipynb``); any
papermill-supported URL (``s3://``, ``gs://``, ``abfs://`` ...) when the
environment file's ``run_store`` or ``$STACKBOOK_RUN_STORE`` names one, in
which case papermill's I/O handlers do the writing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stackbook.core import project


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def base(env_run_store: str | None = None) -> str:
    return os.environ.get("STACKBOOK_RUN_STORE") or env_run_store or project.run_store_root()


def location(env: str, runbook: str, run_id: str, env_run_store: str | None = None) -> str:
    root = base(env_run_store).rstrip("/")
    return f"{root}/{env}/{runbook}/{run_id}.ipynb"


def write_text(loc: str, text: str) -> None:
    if is_remote(loc):
        from papermill.iorw import papermill_io  # heavy: only for remote stores

        papermill_io.write(text, loc)
        return
    path = Path(loc.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_notebook(loc: str) -> dict:
    if is_remote(loc):
        from papermill.iorw import papermill_io

        return json.loads(papermill_io.read(loc))
    return json.loads(Path(loc.removeprefix("file://")).read_text(encoding="utf-8"))
