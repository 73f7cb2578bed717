"""Shared fixtures and helpers: the real project-local PostgreSQL and the real CLI.

Nothing is mocked: ``database_url`` starts the project-local cluster
(``stackbook up``) once per session, unless DATABASE_URL is set; tests that
need no database do not ask for it and run without one.

The test session never writes into the developer's runs. At import, before any
test module, this file points every process the tests start (CLI calls,
kernels, nbmake's runbooks, Airflow tasks) at a database and a state folder of
their own: ``STACKBOOK_DATABASE=stackbook_test`` (MLflow follows as
``mlflow_test``, in the same cluster) and ``STACKBOOK_STATE_DIR=<home>/test``
(run store, tmp, lab, audit, dbt targets, MLflow artifacts, pipeline products,
book sources). The folder is kept between sessions, as the test database is,
so that the experiments MLflow records there keep pointing at their
artifacts. ``make test`` checks the outcome: ``tests/check_untouched.py``
before and after pytest. With DATABASE_URL set, that database is used as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stackbook.core import project
from stackbook.core.privacy import telemetry_off

ROOT = Path(__file__).resolve().parents[1]
STACKBOOK = str(Path(sys.executable).parent / "stackbook")
FIX = ROOT / "tests" / "fixtures" / "foundation"
TEST_DATABASE = "stackbook_test"

os.environ["STACKBOOK_DATABASE"] = TEST_DATABASE
os.environ["STACKBOOK_STATE_DIR"] = str(project.home_dir() / "test")
for _name in ("STACKBOOK_RUN_STORE", "MLFLOW_TRACKING_URI"):  # a developer's own would receive the tests' runs
    os.environ.pop(_name, None)
telemetry_off()

# Fixture notebooks fail, leak canaries or kill their kernel on purpose: the tests
# run them through stackbook; nbmake must not collect them as runbooks.
collect_ignore_glob = ["fixtures/*"]


def nb(name: str) -> str:
    """Path of a fixture notebook under tests/fixtures/foundation."""
    return str(FIX / f"{name}.ipynb")


def ledger_count(db, runbook: str) -> int:
    """Ledger rows of ``runbook`` (0 before the ledger exists)."""
    db.execute("create schema if not exists stackbook")
    exists = db.execute("select to_regclass('stackbook.runs') is not null").fetchone()[0]
    if not exists:
        return 0
    return db.execute("select count(*) from stackbook.runs where runbook = %s", (runbook,)).fetchone()[0]


@pytest.fixture(scope="session")
def database_url() -> str:
    from stackbook.run import pgcluster

    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    pgcluster.up()  # creates the test databases when the cluster lacks them
    return pgcluster.database_url()


@pytest.fixture()
def db(database_url):
    """An autocommit psycopg connection to the test session's stackbook database."""
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


def wait_for(predicate, timeout: float = 60.0, step: float = 0.2):
    """Poll PREDICATE until it returns something truthy (returned), or fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


@pytest.fixture(scope="module")
def names(database_url):
    """(MLflow tests) A throwaway experiment and registered model, deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    experiment, model = f"t_{tag}_exp", f"t_{tag}_model"
    yield experiment, model
    delete_mlflow_names(experiment, model)


def delete_mlflow_names(experiment: str, model: str) -> None:
    """Remove a test's registered model, experiment and artifacts from the test tracking store."""
    import shutil

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from stackbook.train import model as train

    train.configure()
    client = MlflowClient()
    try:
        client.delete_registered_model(model)
    except MlflowException:
        pass  # never registered: the test failed before
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        client.delete_experiment(found.experiment_id)
    shutil.rmtree(train.artifacts_root() / experiment, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"  # Debian's (`make system-deps`), never `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_missing() -> bool:
    return not Path(CHROMIUM).exists() and not shutil.which("chromium")


@contextmanager
def chromium() -> Iterator:
    """Headless Chromium driven by Playwright, closed on the way out; the test is skipped where it is missing."""
    if chromium_missing():
        pytest.skip("Chromium is not installed: run `make system-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
