"""Where the project and its local state live.

Two folders, both git-ignored, both under ``<root>/.stackbook`` by default:

- the *home* (``home_dir()``, ``$STACKBOOK_HOME``): the project-local PostgreSQL cluster (``pg/``) and what is
  cluster-wide with it, the passwords of the provisioned roles (``credentials/``);
- the *state* folder (``state_dir()``, ``$STACKBOOK_STATE_DIR``, default: the home): what runs leave behind,
  the run store, lab results, audit reports, dbt targets, MLflow artifacts, pipeline products, book sources,
  caches.

They are separate so that one cluster can serve two sets of runs: the test suite points
``STACKBOOK_STATE_DIR`` (and ``STACKBOOK_DATABASE``, see ``stackbook.run.pgcluster``) elsewhere and
never writes into a developer's runs, ledger or book.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

STATE_DIRNAME = ".stackbook"


def _looks_like_root(path: Path) -> bool:
    return (path / "runbooks").is_dir() and (path / "pyproject.toml").is_file()


@cache
def root() -> Path:
    """The project root: $STACKBOOK_PROJECT, else the nearest parent of the working
    directory holding ``runbooks/`` and ``pyproject.toml``, else the checkout this
    package was installed from."""
    env = os.environ.get("STACKBOOK_PROJECT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if _looks_like_root(candidate):
            return candidate
    source_checkout = Path(__file__).resolve().parents[2]
    if _looks_like_root(source_checkout):
        return source_checkout
    return here


def home_dir() -> Path:
    """The cluster's home: $STACKBOOK_HOME, else ``<root>/.stackbook``; created 0700 (``stackbook up`` keeps it
    so, or 0710 for the cluster's OS user to traverse: ``stackbook.run.pgcluster``)."""
    path = Path(os.environ.get("STACKBOOK_HOME") or root() / STATE_DIRNAME)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """What runs leave behind (run store, tmp, lab, audit, dbt, MLflow artifacts, book sources, caches):
    $STACKBOOK_STATE_DIR, else the home folder; created 0700: it holds the executed notebooks, for their owner alone."""
    explicit = os.environ.get("STACKBOOK_STATE_DIR")
    if not explicit:
        return home_dir()
    path = Path(explicit)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def runbooks_dir() -> Path:
    return root() / "runbooks"


def environments_dir() -> Path:
    return root() / "infra" / "environments"


def run_store_root() -> str:
    """Base location of executed notebooks; a local folder or any papermill-style URL."""
    return os.environ.get("STACKBOOK_RUN_STORE") or str(state_dir() / "runs")


_git_commit: str | None | bool = False  # False: not asked yet


def git_commit() -> str | None:
    """HEAD of the project's git checkout (asked once per process); None outside a checkout or without git."""
    global _git_commit
    if _git_commit is False:
        import subprocess

        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root(), capture_output=True, text=True, timeout=5)
            _git_commit = out.stdout.strip() or None if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _git_commit = None
    return _git_commit
