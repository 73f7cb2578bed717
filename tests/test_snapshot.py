"""Kernel snapshots (``stackbook.run.snapshot``): a real kernel's namespace taken, restored into a fresh one.

Values, a DataFrame, a function and a class defined in a cell come back; connections and sockets are left out
with their type; no form of a declared secret is in any file (the canary search of ``test_secrets``, also as
UTF-16 and UTF-32 bytes); files 0600, folders 0700; a dead or unresponsive kernel leaves no snapshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import time
import uuid
from contextlib import contextmanager

import nbformat
import pytest

from stackbook.core import project
from stackbook.core.errors import KernelCodeError, SnapshotError, UsageError
from stackbook.run import kernel, scrub, snapshot
from tests.test_secrets import search_forms


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-t" + uuid.uuid4().hex[:6]


def notebook(*sources: str):
    return nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})


@contextmanager
def running(nb, run_id: str, scrubber: scrub.Scrubber, env: dict | None = None, cells: bool = True):
    """A real kernel for NB, as the engine starts one; every cell of NB run in it (unless not CELLS)."""
    kern = kernel.Kernel(nb, connection_file=kernel.connection_file(run_id), run_id=run_id, scrubber=scrubber)
    with kern.running(env={**os.environ, **(env or {})}, cwd=str(project.root())):
        for index, cell in enumerate(nb.cells if cells else []):
            kern.execute_cell(cell, index)
        yield kern


@pytest.fixture()
def run_ids():
    made: list[str] = []

    def make() -> str:
        made.append(new_run_id())
        return made[-1]

    yield make
    for run_id in made:
        snapshot.remove(run_id)


CELLS = (
    "import os, socket\nimport pandas as pd\nn = 41\ndf = pd.DataFrame({'a': range(1000), 'b': ['x'] * 1000})",
    "def helper(a):\n    return a * 2\n\ndef f(a):\n    return helper(a) + n\n\n"
    "class Counter:\n    step = 3\n    def next(self, v):\n        return v + self.step + n\n\n"
    "counter = Counter()\nitems = {'k': [1, 2.5, 'three'], 'counter': counter, 'double': lambda v: v * 2}",
    "sock = socket.socket()\ngen = (i for i in range(3))",
)
CHECK = ("import json\nfrom stackbook.core.results import record\n"
         "record('check', [n, f(1), counter.next(0), isinstance(counter, Counter), int(df['a'].sum()), "
         "len(df), items['k'], type(items['counter']).__name__, items['double'](4)])")


def test_take_and_restore_bring_back_values_functions_and_classes(run_ids, database_url, tmp_path):
    run_id, later = run_ids(), run_ids()
    connect = f"import psycopg\nconn = psycopg.connect({database_url!r})"
    scrubber = scrub.Scrubber({})
    nb = notebook(*CELLS, connect, "x = 1")
    with running(nb, run_id, scrubber) as kern:
        manifest = snapshot.take(kern, run_id, scrubber)
        after = nbformat.v4.new_code_cell("y = 2")
        nb.cells.append(after)
        kern.execute_cell(after, len(nb.cells) - 1)
    assert [c.execution_count for c in nb.cells] == [1, 2, 3, 4, 5, 6]  # the hidden code took no count, no cell
    assert all(not c.outputs for c in nb.cells)  # and left no output
    assert set(manifest.saved) == {"n", "df", "helper", "f", "Counter", "counter", "items", "x"}
    assert manifest.saved.index("Counter") < manifest.saved.index("counter")  # definitions first
    assert manifest.left_out["sock"].startswith("not picklable: socket: ")
    assert manifest.left_out["gen"].startswith("not picklable: generator: ")
    assert manifest.left_out["conn"].startswith("not picklable: Connection: ")
    assert {"os", "socket", "pd", "psycopg"} <= set(manifest.modules) and "In" not in manifest.left_out
    assert manifest.size_bytes > 1000 and manifest.seconds >= 0
    assert snapshot.load_manifest(run_id) == manifest
    folder = snapshot.directory(run_id)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted([f"{n}.pkl" for n in manifest.saved] + ["manifest.json"])
    assert [p.name for p in folder.iterdir() if stat.S_IMODE(p.stat().st_mode) != 0o600] == []
    assert json.loads((folder / "manifest.json").read_text())["saved"] == manifest.saved

    results = tmp_path / "results.jsonl"
    check = notebook(CHECK)
    with running(check, later, scrubber, env={"STACKBOOK_RESULTS_FILE": str(results)}, cells=False) as kern:
        restored = snapshot.restore(kern, run_id)
        kern.execute_cell(check.cells[0], 0)
    assert restored.saved == manifest.saved and restored.left_out == manifest.left_out
    from stackbook.core.results import read_results_file

    assert read_results_file(str(results))["check"] == [41, 43, 44, True, 499500, 1000, [1, 2.5, "three"], "Counter", 8]


def test_no_form_of_a_secret_is_in_a_snapshot(run_ids):
    """The canary: the secret plain, base64, hex, URL-encoded, in Basic auth, in bytes, in a DataFrame, a numpy
    text array, a function's default and a nested list: each of those variables is left out, naming the
    secret; no file of the snapshot holds any form of it in UTF-8, UTF-16 or UTF-32; the others are kept."""
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    run_id = run_ids()
    cells = (
        "import base64, os, urllib.parse\nimport numpy as np\nimport pandas as pd\n"
        "s = os.environ['CANARY_SECRET']\nb64 = base64.b64encode(s.encode()).decode()\nhexed = s.encode().hex()\n"
        "basic = base64.b64encode(f'user:{s}'.encode())\nurl = urllib.parse.quote(s, safe='')\n"
        "raw = s.encode()\nframe = pd.DataFrame({'token': [s, 'x']})\ntexts = np.array([s, 'y'])\n"
        "nested = [{'a': ('x', s)}]\ndef connect(token=s):\n    return token\nclean = [1, 2, 3]",
    )
    scrubber = scrub.Scrubber({"CANARY_SECRET": secret})
    with running(notebook(*cells), run_id, scrubber, env={"CANARY_SECRET": secret}) as kern:
        manifest = snapshot.take(kern, run_id, scrubber)
    leaky = {"s", "b64", "hexed", "basic", "url", "raw", "frame", "texts", "nested", "connect"}
    assert {name: manifest.left_out.get(name) for name in leaky} == dict.fromkeys(
        leaky, "holds the value of secret CANARY_SECRET")
    assert manifest.saved == ["clean"]
    folder = snapshot.directory(run_id)
    forms = search_forms(secret)
    found = [(p.name, form, enc) for p in folder.rglob("*") for form in forms
             for enc in ("utf-8", "utf-16-le", "utf-32-le") if form.encode(enc) in p.read_bytes()]
    assert found == []
    assert base64.b64encode(secret.encode()).decode() not in json.dumps(manifest.to_json())


def test_without_scrubbing_the_search_finds_the_secret(run_ids):
    """Control: with the scrubber off (``STACKBOOK_UNSAFE_NO_SCRUB``), the variable is kept and the search above
    finds the secret in its file, so the canary search can fail."""
    secret = "canary/" + secrets.token_urlsafe(18)
    run_id = run_ids()
    scrubber = scrub.Scrubber({"CANARY_SECRET": secret}, enabled=False)
    with running(notebook("import os\ns = os.environ['CANARY_SECRET']"), run_id, scrubber,
                 env={"CANARY_SECRET": secret}) as kern:
        manifest = snapshot.take(kern, run_id, scrubber)
    assert manifest.saved == ["s"]
    assert secret.encode() in (snapshot.directory(run_id) / "s.pkl").read_bytes()


def test_a_dead_or_busy_kernel_leaves_no_snapshot_and_a_bad_file_is_reported(run_ids, capsys, monkeypatch):
    scrubber = scrub.Scrubber({})
    slow = ("import time\nclass Slow:\n    def __reduce__(self):\n        time.sleep(30)\n        return (int, ())\n"
            "slow = Slow()\nn = 5")
    busy, dead, good, fresh = run_ids(), run_ids(), run_ids(), run_ids()
    monkeypatch.setenv(snapshot.TIMEOUT_ENV, "1")
    with running(notebook(slow), busy, scrubber) as kern:
        started = time.monotonic()
        assert snapshot.take(kern, busy, scrubber) is None
        assert time.monotonic() - started < 10
    assert "kernel snapshot not taken: " in capsys.readouterr().err
    assert snapshot.load_manifest(busy) is None
    monkeypatch.delenv(snapshot.TIMEOUT_ENV)
    with running(notebook("n = 5\nm = 6"), dead, scrubber) as kern:
        assert snapshot.take(kern, good, scrubber).saved == ["n", "m"]
        kern.kill()  # a zombie until reaped: alive() may still say yes, the kernel client knows better
        assert snapshot.take(kern, dead, scrubber) is None
        with pytest.raises(KernelCodeError, match="not running"):
            kern.run_code("1", 5)
    assert re.search(r"kernel snapshot not taken: the kernel (is not running|died)\n", capsys.readouterr().err)
    assert not (project.state_dir() / "snapshots" / dead).exists()
    (snapshot.directory(good) / "m.pkl").write_bytes(b"not a pickle")
    with running(notebook(), fresh, scrubber) as kern:
        restored = snapshot.restore(kern, good)
        with pytest.raises(KernelCodeError, match="ZeroDivisionError: division by zero"):
            kern.run_code("1 / 0", 5)
        with pytest.raises(SnapshotError, match="--from-cell"):
            snapshot.restore(kern, dead)
    assert restored.saved == ["n"] and restored.left_out["m"].startswith("not restored: ")


def test_prune_removes_old_snapshots_only_and_ids_are_checked(run_ids):
    old, recent = run_ids(), run_ids()
    for run_id in (old, recent):
        folder = snapshot.directory(run_id)
        (folder / "manifest.json").write_text("{}")
    week_ago = time.time() - 8 * 86400
    for path in (snapshot.directory(old) / "manifest.json", snapshot.directory(old)):
        os.utime(path, (week_ago, week_ago))
    assert old in snapshot.prune() and recent not in snapshot.prune()
    assert not (project.state_dir() / "snapshots" / old).exists()
    assert snapshot.directory(recent).exists() and snapshot.load_manifest(recent) is None  # not a manifest
    assert recent in snapshot.prune(retention_days=0)
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(UsageError, match="is not a run id"):
            snapshot.directory(bad)
        assert snapshot.load_manifest(bad) is None
