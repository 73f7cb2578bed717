"""What the book's evidence page costs on a large chain: 100,000 entries (issue 12, section 6).

The book shows the chain's state at build time (``stackbook.book.evidence.read_chain``). Walking the
whole chain (every entry's SHA-256 recomputed in PostgreSQL, its link and seq: ``stackbook verify``
without notebooks, rows or approvals) is the floor; the book walks once and keeps the result while the
chain's contents are the same (a signature of every row version: count, and md5 over ctid and xmin),
so a rebuild pays the signature and the comparison of the last day's rows only. In a scratch database
(dropped after), synthetic finished runs and their chain (``evidence_chain.synthetic_runs``):

- floor: ``evidence.verify(conn, since=<far future>, notebooks_too=False)``, the walk alone;
- cold: ``read_chain`` with no cached walk (what the first build after a new run pays: the walk and more);
- warm: ``read_chain`` again, nothing changed (every rebuild, every ``--watch`` pass).

Medians of ``--repeat`` rounds; ratio = warm / floor (goal: well under 1: a rebuild does not redo the walk).

    .venv/bin/python benchmarks/book_chain.py [--entries 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psycopg  # noqa: E402
from evidence_chain import drop, scratch_database, synthetic_runs  # noqa: E402

from stackbook.book import evidence as book_evidence  # noqa: E402
from stackbook.run import evidence, ledger  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    name, url = scratch_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
            os.environ["STACKBOOK_STATE_DIR"] = tmp  # the walk's cache file: not in the developer's .stackbook
            cache = Path(tmp) / "book" / "chain_walk.json"
            ledger.ensure_schema(conn)
            synthetic_runs(conn, args.entries, 0, Path(tmp))
            with conn.transaction():  # each entry appended when its run finished, as the runner does (COPY: now)
                conn.execute("alter table stackbook.chain disable trigger chain_append_only")
                conn.execute("update stackbook.chain set at = (entry->>'finished_at')::timestamptz")
                conn.execute("alter table stackbook.chain enable trigger chain_append_only")
            conn.execute("analyze")
            now = datetime.now(UTC)
            far = datetime(9999, 1, 1, tzinfo=UTC)
            floor, cold, warm = [], [], []
            for _ in range(args.repeat):
                floor.append(timed(lambda: evidence.verify(conn, since=far, notebooks_too=False)))
                book_evidence._WALK_CACHE.clear()
                cache.unlink(missing_ok=True)
                cold.append(timed(lambda: book_evidence.read_chain(conn, "prod", now)))
                warm.append(timed(lambda: book_evidence.read_chain(conn, "prod", now)))
            state = book_evidence.read_chain(conn, "prod", now)
    finally:
        drop(name)
    f, c, w = statistics.median(floor), statistics.median(cold), statistics.median(warm)
    print(f"entries {state.entries}, intact {state.ok}; walk (floor) {f:.3f} s, read_chain cold {c:.3f} s, "
          f"warm {w:.3f} s; warm / floor {w / f:.3f}")


if __name__ == "__main__":
    main()
