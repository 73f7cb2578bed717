"""DR drill against its floor, and the dump format choice.

Floor: the bare backup/restore cycle a drill cannot do without: ``pg_dump -Fc``,
``CREATE DATABASE``, ``pg_restore``, ``DROP DATABASE``; no snapshot export, no
manifest, no checksums, no verification. stackbook: ``dr.run_drill`` (heartbeat,
snapshot-consistent dump and manifest, SHA-256, restore, count and checksum of
every table, drop). Alternating, medians of ``--repeat`` runs on a scratch
database of ``--rows`` rows. Also the dump alone: ``-Fc`` against ``-Fd -j 2``.

    .venv/bin/python benchmarks/dr_drill.py --rows 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from stackbook.dr import drill as dr
from stackbook.run import db, pgcluster


def make_source(rows: int) -> str:
    name = f"bench_dr_{uuid.uuid4().hex[:8]}"
    with db.connect("postgres") as conn:
        conn.execute(f'create database "{name}"')
    with db.connect(name) as conn:
        conn.execute("create schema app")
        for t in ("orders", "payments", "customers"):
            conn.execute(f"""create table app.{t} as select g as id, md5(g::text) as label, g * 1.5 as amount,
                             now() - make_interval(secs => g) as at from generate_series(1, {rows // 3}) g""")
    return name


def drop(name: str) -> None:
    with db.connect("postgres") as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def floor_cycle(source: str, tmp: Path) -> float:
    t0 = time.perf_counter()
    dump = tmp / "floor.pgdump"
    subprocess.run([pgcluster.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=dr._pg_env(source), check=True)
    target = f"{source}_floor"
    with db.connect("postgres") as conn:
        conn.execute(f'create database "{target}" template template0')
    subprocess.run([pgcluster.pg_tool("pg_restore"), "--exit-on-error", "--jobs=2", "-d", target, str(dump)],
                   env=dr._pg_env(target), check=True)
    drop(target)
    dump.unlink()
    return time.perf_counter() - t0


def drill_cycle(source: str) -> float:
    t0 = time.perf_counter()
    report = dr.run_drill(database=source, rto_target_s=3600, rpo_target_s=3600, keep_backups=1)
    assert report.passed, report.problems
    return time.perf_counter() - t0


def dump_only(source: str, tmp: Path, fmt: str) -> float:
    out = tmp / f"dump-{fmt}"
    args = [pgcluster.pg_tool("pg_dump"), "-f", str(out)] + (["-Fc"] if fmt == "custom" else ["-Fd", "-j", "2"])
    t0 = time.perf_counter()
    subprocess.run(args, env=dr._pg_env(source), check=True)
    took = time.perf_counter() - t0
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    source = make_source(args.rows)
    floor, drill, custom, directory = [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):
                floor.append(floor_cycle(source, Path(tmp)))
                drill.append(drill_cycle(source))
                custom.append(dump_only(source, Path(tmp), "custom"))
                directory.append(dump_only(source, Path(tmp), "directory"))
    finally:
        drop(source)
        for path in dr.backups_dir().glob(f"{source}-*"):
            shutil.rmtree(path, ignore_errors=True)
    med = statistics.median
    pair = sorted(d / f for d, f in zip(drill, floor))
    print(f"rows {args.rows}, repeat {args.repeat}")
    print(f"drill median {med(drill):.2f} s, floor median {med(floor):.2f} s, ratio of medians "
          f"{med(drill) / med(floor):.2f}, pairwise min/median/max {pair[0]:.2f}/{med(pair):.2f}/{pair[-1]:.2f}")
    print(f"dump only: -Fc median {med(custom):.2f} s, -Fd -j 2 median {med(directory):.2f} s, "
          f"ratio {med(directory) / med(custom):.2f}")


if __name__ == "__main__":
    main()
