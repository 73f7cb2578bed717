"""Where the project and its local state live."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

STATE_DIRNAME = ".stackbook"


def _looks_like_root(path: Path) -> bool:
    return (path / "runbooks").is_dir() and (path / "pyproject.toml").is_file()


@lru_cache(maxsize=None)
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


def state_dir() -> Path:
    """Local state: database cluster, run store, caches. Git-ignored."""
    path = Path(os.environ.get("STACKBOOK_HOME") or root() / STATE_DIRNAME)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runbooks_dir() -> Path:
    return root() / "runbooks"


def environments_dir() -> Path:
    return root() / "infra" / "environments"


def run_store_root() -> str:
    """Base location of executed notebooks; a local folder or any papermill-style URL."""
    return os.environ.get("STACKBOOK_RUN_STORE") or str(state_dir() / "runs")
