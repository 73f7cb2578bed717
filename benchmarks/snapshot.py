"""Kernel snapshots (issue 11): ``snapshot.take`` and ``snapshot.restore`` of a namespace holding a 100 MB DataFrame.

A real kernel (``kernel.Kernel``, as a run starts one) holds a pandas DataFrame of ``--mb`` MB (float64 and
int64 columns) and a few small variables. Each repeat, alternating: ``take`` (dill, one file per variable, then
the runner's secret search of every file, three secrets of a run, every form, UTF-8/16/32) and, in a fresh
kernel, ``restore``; side by side the floor, the fastest plain way to do the same in the kernel: the C
``pickle.dump`` / ``pickle.load`` of the same DataFrame at protocol 5 to and from the same disk. Medians of
``--repeat`` runs, the size on disk, and the secret search's share. dill and pandas are imported in both
kernels before anything is timed (a first ``import dill`` in the kernel adds about 0.1 s to a real take). A
temporary state folder is used.

    .venv/bin/python benchmarks/snapshot.py [--mb 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

STATE = Path(tempfile.mkdtemp(prefix="stackbook-bench-snapshot-"))
os.environ["STACKBOOK_STATE_DIR"] = str(STATE)

import nbformat  # noqa: E402

from stackbook.run import kernel, scrub, snapshot  # noqa: E402

SECRETS = {"CANARY_SECRET": "canary/0123456789abcdefghij+@=", "DATABASE_PASSWORD": "pg-pass-4f9a1c2e7b",
           "AWS_SECRET_ACCESS_KEY": "aws/wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}


def frame_cell(mb: int) -> str:
    rows = mb * 1024 * 1024 // (5 * 8)
    return ("import numpy as np\nimport pandas as pd\nrng = np.random.default_rng(1)\n"
            f"df = pd.DataFrame({{c: rng.random({rows}) for c in 'abcd'}})\n"
            f"df['n'] = np.arange({rows}, dtype='int64')\n"
            "threshold = 0.5\nlabels = ['x', 'y', 'z']\nsize_mb = df.memory_usage().sum() / 2**20")


def notebook(*sources: str):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources],
                                    metadata={"kernelspec": {"name": "python3", "language": "python",
                                                             "display_name": "Python 3"}})


def started(nb, run_id: str, scrubber):
    return kernel.Kernel(nb, connection_file=kernel.connection_file(run_id), run_id=run_id, scrubber=scrubber)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one_round(i: int, mb: int, scrubber) -> dict[str, float]:
    """take, plain pickle.dump (floor), then in a fresh kernel restore and plain pickle.load (floor)."""
    run_id, fresh = f"20260101T000000-b{i:05d}", f"20260101T000001-b{i:05d}"
    floor_file = STATE / "floor.pkl"
    nb = notebook(frame_cell(mb))
    kern = started(nb, run_id, scrubber)
    with kern.running(env=dict(os.environ), cwd=str(STATE)):
        kern.execute_cell(nb.cells[0], 0)
        kern.run_code("import dill, pickle", 120)  # imported by both sides, so neither pays for it
        take_s, manifest = timed(lambda: snapshot.take(kern, run_id, scrubber))
        dump_s, _ = timed(lambda: kern.run_code(
            f"import pickle\nwith open({str(floor_file)!r}, 'wb') as fh:\n    pickle.dump(df, fh, protocol=5)", 600))
    scan_s = scan_time(snapshot.directory(run_id), scrubber)
    nb2 = notebook()
    kern2 = started(nb2, fresh, scrubber)
    with kern2.running(env=dict(os.environ), cwd=str(STATE)):
        kern2.run_code("import dill, pandas, pickle", 120)
        restore_s, restored = timed(lambda: snapshot.restore(kern2, run_id))
        load_s, _ = timed(lambda: kern2.run_code(
            f"import pickle\nwith open({str(floor_file)!r}, 'rb') as fh:\n    df2 = pickle.load(fh)", 600))
    assert restored.saved == manifest.saved and "df" in manifest.saved, manifest
    size = manifest.size_bytes
    floor_size = floor_file.stat().st_size
    snapshot.remove(run_id)
    floor_file.unlink()
    return {"take": take_s, "dump": dump_s, "restore": restore_s, "load": load_s, "scan": scan_s,
            "size_mb": size / 2**20, "floor_mb": floor_size / 2**20}


def scan_time(folder: Path, scrubber) -> float:
    """The runner's secret search alone, over the snapshot's files (a fresh scrubber: its byte forms built)."""
    fresh = scrub.Scrubber(SECRETS)
    t0 = time.perf_counter()
    for path in folder.glob("*.pkl"):
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            fresh.secrets_in(data)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="size of the DataFrame in MB")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (medians are reported)")
    args = ap.parse_args()
    scrubber = scrub.Scrubber(SECRETS)
    rounds = []
    try:
        for i in range(args.repeat):
            rounds.append(one_round(i, args.mb, scrubber))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), file=sys.stderr)
    finally:
        shutil.rmtree(STATE, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"DataFrame {args.mb} MB, {args.repeat} rounds, medians:")
    print(f"  take    {med['take']:.2f} s  (secret search {med['scan']:.2f} s)   "
          f"floor pickle.dump {med['dump']:.2f} s   ratio {med['take'] / med['dump']:.2f}")
    print(f"  restore {med['restore']:.2f} s   floor pickle.load {med['load']:.2f} s   "
          f"ratio {med['restore'] / med['load']:.2f}")
    print(f"  size on disk {med['size_mb']:.1f} MB (floor {med['floor_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
