"""Shared fixtures: the real project-local PostgreSQL and the real CLI.

Nothing is mocked: ``database_url`` starts the project-local cluster
(``stackbook up``) once per session, unless DATABASE_URL is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACKBOOK = str(Path(sys.executable).parent / "stackbook")

# Fixture notebooks fail, leak canaries or kill their kernel on purpose: the tests
# run them through stackbook; nbmake must not collect them as runbooks.
collect_ignore_glob = ["fixtures/*"]

from stackbook.core.privacy import telemetry_off  # noqa: E402

telemetry_off()


@pytest.fixture(scope="session")
def database_url() -> str:
    from stackbook.run import pgcluster

    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    info, _ = pgcluster.up()
    return info.url()


@pytest.fixture()
def db(database_url):
    """An autocommit psycopg connection to the stackbook database."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture()
def scratch_schema(db):
    """A throwaway schema, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    db.execute(f'create schema "{name}"')
    yield name
    db.execute(f'drop schema if exists "{name}" cascade')


class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CLIResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> CLIResult:
    """Run the real `stackbook` command."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([STACKBOOK, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=cwd or ROOT)
    return CLIResult(proc)


@pytest.fixture()
def cli(database_url):
    return run_cli
