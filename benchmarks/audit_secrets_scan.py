"""The audit's secrets scan (SEC-001, SEC-002) against `git grep` / `grep -r` with the same patterns.

stackbook side: ``secrets_scan.scan_repository`` over the tracked files (git ls-files, read, notebooks
parsed as JSON, every pattern, entropy filter, known secret values in all their encoded forms) and
``scan_run_store`` over the executed notebooks of an environment. Floor: ``git grep -I -n -P`` over
the tracked files and ``grep -r -n -P`` over the run store with the same regular expressions and no
filtering, each a fresh process. Alternating runs; medians and the ratio stackbook / floor.

    .venv/bin/python benchmarks/audit_secrets_scan.py [--repeat 7] [--env dev]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def floor_patterns() -> list[str]:
    from stackbook.audit import secrets_scan as s

    pats = [p.pattern.replace("(?i)", "") for _, p, _, _ in s.PATTERNS]
    return [p.replace("(?P<", "(?<").replace("(?P=q)", "\\k<q>") for p in pats]


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--env", default="dev")
    args = ap.parse_args()

    from stackbook.audit import secrets_scan as s
    from stackbook.core.project import run_store_root

    known = s.known_secrets(args.env)
    store = Path(run_store_root()) / args.env
    pats = floor_patterns()
    grep_args = ["-e", "(?J)" + "|".join(f"(?:{p})" for p in pats)]  # grep -P takes a single pattern

    def ours_repo() -> int:
        return len(s.scan_repository(ROOT, s.Detector(known), s.read_allowlist(ROOT)).hits)

    def floor_repo() -> int:
        out = subprocess.run(["git", "-C", str(ROOT), "grep", "-I", "-n", "-i", "-P", *grep_args],
                             capture_output=True, text=True)
        if out.returncode > 1:
            raise SystemExit(f"git grep failed: {out.stderr}")
        return len(out.stdout.splitlines())

    def ours_store() -> int:
        return len(s.scan_run_store(store, s.Detector(known)).hits)

    def floor_store() -> int:
        out = subprocess.run(["grep", "-r", "-n", "-i", "-P", "--include=*.ipynb", *grep_args, str(store)],
                             capture_output=True, text=True)
        if out.returncode > 1:
            raise SystemExit(f"grep failed: {out.stderr}")
        return len(out.stdout.splitlines())

    files = len(s.tracked_files(ROOT))
    notebooks = len(list(store.rglob("*.ipynb"))) if store.is_dir() else 0
    result = {"tracked_files": files, "run_store_notebooks": notebooks, "repeat": args.repeat}
    for label, ours, floor in (("repository", ours_repo, floor_repo), ("run_store", ours_store, floor_store)):
        ours(), floor()  # warm the page cache
        a, b, hits_a, hits_b = [], [], 0, 0
        for _ in range(args.repeat):
            t, hits_a = timed(ours)
            a.append(t)
            t, hits_b = timed(floor)
            b.append(t)
        ratios = sorted(x / y for x, y in zip(a, b))
        result[label] = {
            "stackbook_median_s": round(statistics.median(a), 3),
            "floor_median_s": round(statistics.median(b), 3),
            "ratio_of_medians": round(statistics.median(a) / statistics.median(b), 2),
            "pairwise_ratio_min_median_max": [round(ratios[0], 2), round(statistics.median(ratios), 2),
                                              round(ratios[-1], 2)],
            "stackbook_hits": hits_a,
            "floor_matching_lines": hits_b,
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
