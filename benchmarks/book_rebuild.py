"""Book rebuild benchmark: a cold build against a rebuild after one runbook changed.

Both sides run here, alternating, on a copy of the project (runbooks, book/,
_config.yml, _toc.yml, environments) in a temporary folder that shares this
project's database and run store, so nothing in the checkout is touched:

- cold: empty source tree and output folder, then ``generate`` + ``build``
  (what a fresh checkout or ``stackbook book --all`` pays);
- rebuild: one runbook's purpose text edited, then ``generate`` + ``build``
  (what ``stackbook book`` pays after someone edits a runbook);
- watch: the same edit again, then ``generate`` + ``build_in_process`` in this
  process, which built before (what ``stackbook book --watch`` pays per change).

The ledger is read once and the same evidence used in every round (runs that
other work records meanwhile would otherwise change pages between rounds).

Goal: the rebuild's median at most 30% of the cold build's median.

    .venv/bin/python benchmarks/book_rebuild.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["pyproject.toml", "_config.yml", "_toc.yml", "book", "runbooks", "infra/environments"]


def make_copy(dest: Path) -> None:
    for rel in COPY:
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        elif src.exists():
            shutil.copy2(src, dst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--env", default="dev")
    ap.add_argument("--runbook", default="platform_check", help="the runbook whose text is edited")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sb-book-bench-"))
    make_copy(tmp)
    os.environ["STACKBOOK_PROJECT"] = str(tmp)
    os.environ.setdefault("STACKBOOK_HOME", str(ROOT / ".stackbook"))  # the database and the run store
    from datetime import datetime

    from stackbook.book import build, evidence, generate
    from stackbook.core import catalog
    from stackbook.run import db

    target = catalog.find(args.runbook)
    now = datetime.now(UTC)
    with db.connect() as conn:  # read once: other work recording runs meanwhile must not change the pages
        ledger = evidence.read(conn, args.env, [p.stem for p in catalog.paths()], now)
    src, out = tmp / "src", tmp / "out"
    cold, warm, watched, reread = [], [], [], []

    def once(in_process: bool = False) -> tuple[float, build.BuildResult]:
        t0 = time.perf_counter()
        gen = generate.generate(args.env, src, ledger=ledger, now=now)
        t1 = time.perf_counter()
        res = build.build_in_process(gen.src, out) if in_process else build.build(gen.src, out)
        res.generate_s = t1 - t0
        return time.perf_counter() - t0, res

    def edit(label: str) -> None:
        nb = json.loads(target.read_text())
        first_md = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
        first_md["source"] = "".join(first_md["source"]).rstrip("\n") + f"\n\nEdited for benchmark {label}.\n"
        target.write_text(json.dumps(nb, indent=1) + "\n")

    try:
        once()  # warm the OS file cache and the ledger connection path; not counted
        once(in_process=True)  # what a watching process did before its first change; not counted
        for i in range(args.repeat):
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            seconds, res = once()
            cold.append(seconds)
            edit(f"round {i}")
            seconds, res = once()
            warm.append(seconds)
            reread.append(res.read)
            edit(f"round {i}, watched")
            seconds, wres = once(in_process=True)
            watched.append(seconds)
            print(f"round {i + 1}: cold {cold[-1]:.2f} s, rebuild {warm[-1]:.2f} s (generate {res.generate_s:.2f} s, "
                  f"jupyter-book {res.seconds:.2f} s), re-read {res.read}, wrote {res.wrote}; watch rebuild "
                  f"{watched[-1]:.2f} s, wrote {wres.wrote}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c, w, wa = statistics.median(cold), statistics.median(warm), statistics.median(watched)
    print(json.dumps({"cold_median_s": round(c, 2), "rebuild_median_s": round(w, 2), "ratio": round(w / c, 3),
                      "watch_rebuild_median_s": round(wa, 2), "watch_ratio": round(wa / c, 3),
                      "cold_s": [round(x, 2) for x in cold], "rebuild_s": [round(x, 2) for x in warm],
                      "watch_rebuild_s": [round(x, 2) for x in watched], "pages_reread": reread[-1]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
