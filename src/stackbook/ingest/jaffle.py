"""The Jaffle Shop data: dbt Labs' generator ``jafgen`` run into a cache, and the tables' keys.

``generate(years)`` runs jafgen's simulation for ``years`` in a scratch folder
and moves its CSV files to ``.stackbook/cache/jaffle/<years>y/``; a later call
with the same ``years`` reuses them (jafgen takes about a minute per simulated
year). jafgen on its own draws unseeded random numbers and UUIDs, so two runs
give two different shops, which loaded by key would pile up in ``raw``; it is
therefore run through :mod:`stackbook.ingest.jafgen_seeded`, which seeds every
source of randomness: the same ``years`` and ``seed`` give the same files on
every machine. jafgen writes ``raw_customers``, ``raw_orders``,
``raw_items``, ``raw_products``, ``raw_stores``, ``raw_supplies`` and
``raw_tweets`` (one CSV each).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stackbook.core import project
from stackbook.core.errors import GeneratorError, UsageError

#: table -> key columns of every file jafgen writes (supplies: one row per supply and product)
KEYS: dict[str, list[str]] = {
    "raw_customers": ["id"],
    "raw_orders": ["id"],
    "raw_items": ["id"],
    "raw_products": ["sku"],
    "raw_stores": ["id"],
    "raw_supplies": ["id", "sku"],
    "raw_tweets": ["id"],
}

DONE = ".complete"


def cache_dir(years: int, seed: int = 0) -> Path:
    return project.state_dir() / "cache" / "jaffle" / (f"{years}y" if seed == 0 else f"{years}y-seed{seed}")


def _check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("jafgen") is None:
        raise GeneratorError("jafgen is not installed: it comes with the project's locked dependencies "
                             "(`make setup`, or `pip install jafgen`)")


def generate(years: int = 1, *, seed: int = 0, timeout: float = 1800) -> Path:
    """The folder of Jaffle Shop CSV files for ``years`` simulated years (generated once, then cached)."""
    if isinstance(years, bool) or not isinstance(years, int) or years < 1:
        raise UsageError(f"years must be a whole number of at least 1, got {years!r}")
    target = cache_dir(years, seed)
    if (target / DONE).exists():
        return target
    _check_installed()
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DO_NOT_TRACK": "1", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as scratch:
        proc = subprocess.run([sys.executable, "-m", "stackbook.ingest.jafgen_seeded", str(years), str(seed)],
                              cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        out = Path(scratch) / "jaffle-data"
        files = sorted(out.glob("*.csv")) if out.is_dir() else []
        if proc.returncode != 0 or not files:
            tail = (proc.stderr or proc.stdout or "")[-1500:]
            raise GeneratorError(f"jafgen ({years} years, seed {seed}) failed (exit {proc.returncode}) and wrote "
                                 f"{len(files)} CSV files: {tail}")
        (out / DONE).write_text(f"jafgen years={years} seed={seed}: " + " ".join(f.name for f in files) + "\n")
        if target.exists():  # a partial folder from an interrupted run
            shutil.rmtree(target)
        os.replace(out, target)
    return target
