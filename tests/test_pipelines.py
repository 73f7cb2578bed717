"""Pipelines: incremental skips, selective re-runs, failures, retries, parallel tasks.

Real kernels and the real ledger. Each test builds its own pipeline in a
temporary folder from the fixture runbooks under tests/fixtures/runbooks/, so
that editing a runbook there touches nothing shared.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli

FIX = ROOT / "tests" / "fixtures" / "runbooks"


def make_pipeline(folder: Path, tasks: list[dict], env: dict | None = None, copies: dict | None = None,
                  stackbook: dict | None = None) -> Path:
    """A pipeline.yaml in FOLDER; COPIES maps a notebook file name to the fixture it is copied from."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, fixture in (copies or {}).items():
        shutil.copy(FIX / f"{fixture}.ipynb", folder / name)
    spec = {"tasks": tasks}
    if stackbook:
        spec = {"stackbook": stackbook, **spec}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if env is not None:
        (folder / "env.yaml").write_text(yaml.safe_dump(env))
    return folder / "pipeline.yaml"


def ledger_rows(db, pipeline_run_id: str) -> dict[str, list[dict]]:
    from psycopg.rows import dict_row

    with db.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from stackbook.runs where pipeline_run_id = %s order by started_at, attempt",
                    (pipeline_run_id,))
        rows = cur.fetchall()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(Path(r["path"]).stem if r["path"] else r["runbook"], []).append(r)
    return out


def by_task(summary: dict) -> dict[str, dict]:
    return {t["name"]: t for t in summary["tasks"]}


def edit_code(path: Path, old: str, new: str) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and old in src:
            cell["source"] = src.replace(old, new)
            break
    else:
        raise AssertionError(f"{old!r} not found in {path}")
    path.write_text(json.dumps(nb, indent=1))


def test_incremental_skip_and_selective_rerun(tmp_path, db, database_url):
    """Second run skips all; editing one runbook re-runs it and its dependents only; parallel branches overlap."""
    from stackbook.pipelines import run

    out = tmp_path / "out"
    spec = make_pipeline(
        tmp_path / f"inc{uuid.uuid4().hex[:6]}",
        tasks=[
            {"source": "a.ipynb", "name": "a", "product": {"nb": "a.ipynb", "data": f"{out}/a.txt"},
             "params": {"label": "a", "out_file": f"{out}/a.txt", "rows": "{{rows}}"}},
            {"source": "b.ipynb", "name": "b", "upstream": ["a"], "product": "b.ipynb", "params": {"label": "b"}},
            {"source": "c.ipynb", "name": "c", "product": "c.ipynb", "params": {"label": "c", "rows": "{{c_rows}}"}},
        ],
        env={"rows": 4, "c_rows": 2},
        copies={"a.ipynb": "pipe_step", "b.ipynb": "pipe_step", "c.ipynb": "pipe_step"},
    )

    first = run(str(spec), env="dev", parallel=2)
    assert first["status"] == "succeeded", first
    assert first["ran"] == ["a", "c", "b"] or set(first["ran"]) == {"a", "b", "c"}
    assert (out / "a.txt").read_text() == "a 4\n"  # the placeholder came from env.yaml
    rows = ledger_rows(db, first["pipeline_run_id"])
    assert {k: [r["status"] for r in v] for k, v in rows.items()} == {"a": ["succeeded"], "b": ["succeeded"],
                                                                       "c": ["succeeded"]}
    a, b, c = rows["a"][0], rows["b"][0], rows["c"][0]
    assert b["started_at"] >= a["finished_at"], "b must wait for its upstream a"
    assert a["started_at"] < c["finished_at"] and c["started_at"] < a["finished_at"], "a and c should overlap"
    assert a["params"]["rows"] == 4 and c["params"]["rows"] == 2

    second = run(str(spec), env="dev", parallel=2)
    assert second["status"] == "succeeded"
    assert second["ran"] == [] and sorted(second["skipped"]) == ["a", "b", "c"]
    assert second["decided_by"] == "stackbook.pipelines.fastpath"  # proved up to date without ploomber
    for t in second["tasks"]:
        assert t["status"] == "skipped" and "up to date" in t["reason"]
    rows = ledger_rows(db, second["pipeline_run_id"])
    assert sorted(rows) == ["a", "b", "c"] and all(v[0]["status"] == "skipped" for v in rows.values())

    edit_code(spec.parent / "a.ipynb", 'stackbook.record("label", label)', 'stackbook.record("label", label)  # v2')
    third = run(str(spec), env="dev", parallel=2)
    t3 = by_task(third)
    assert third["status"] == "succeeded" and third["decided_by"] == "ploomber"
    assert t3["a"]["status"] == "succeeded" and t3["a"]["why"] == "runbook source or its inputs changed"
    assert t3["b"]["status"] == "succeeded" and "upstream" in t3["b"]["why"]
    assert t3["c"]["status"] == "skipped"

    (spec.parent / "env.yaml").write_text(yaml.safe_dump({"rows": 4, "c_rows": 3}))
    fourth = run(str(spec), env="dev", parallel=2)
    t4 = by_task(fourth)
    assert t4["c"]["status"] == "succeeded" and "parameters changed: rows" in t4["c"]["why"]
    assert t4["a"]["status"] == "skipped" and t4["b"]["status"] == "skipped"

    (out / "a.txt").unlink()  # a missing product makes its task (and what depends on it) run again
    fifth = run(str(spec), env="dev", parallel=2)
    assert sorted(fifth["ran"]) == ["a", "b"] and fifth["skipped"] == ["c"]

    forced = run(str(spec), env="dev", parallel=2, force=True)
    assert sorted(forced["ran"]) == ["a", "b", "c"] and forced["decided_by"] == "ploomber"
    assert {t["why"] for t in forced["tasks"]} == {"--force"}


def set_metadata(path: Path, **values) -> None:
    nb = json.loads(path.read_text())
    nb["metadata"]["stackbook"].update(values)
    path.write_text(json.dumps(nb, indent=1))


def test_changed_input_file_and_expired_product_rerun(tmp_path, db, database_url):
    """A file named in metadata `inputs` is part of the fingerprint; a product older than freshness_hours expires."""
    from stackbook.core import project
    from stackbook.pipelines import run

    inputs = project.state_dir() / "tmp" / f"inputs-{uuid.uuid4().hex[:8]}"
    inputs.mkdir(parents=True)
    try:
        (inputs / "model.sql").write_text("select 1\n")
        folder = tmp_path / f"inp{uuid.uuid4().hex[:6]}"
        spec = make_pipeline(folder, tasks=[
            {"source": "reads.ipynb", "name": "reads", "product": "reads.ipynb", "params": {"label": "reads"}},
            {"source": "after.ipynb", "name": "after", "upstream": ["reads"], "product": "after.ipynb"},
            {"source": "daily.ipynb", "name": "daily", "product": "daily.ipynb", "params": {"label": "daily"}},
        ], copies={"reads.ipynb": "pipe_step", "after.ipynb": "pipe_step", "daily.ipynb": "pipe_step"})
        set_metadata(folder / "reads.ipynb", inputs=[str(inputs.relative_to(project.root()) / "*.sql")])
        set_metadata(folder / "daily.ipynb", freshness_hours=1)

        assert sorted(run(str(spec), env="dev")["ran"]) == ["after", "daily", "reads"]
        unchanged = run(str(spec), env="dev")
        assert unchanged["ran"] == [] and unchanged["decided_by"] == "stackbook.pipelines.fastpath"

        (inputs / "model.sql").write_text("select 2\n")
        changed = by_task(run(str(spec), env="dev"))
        assert changed["reads"]["status"] == "succeeded"
        assert changed["reads"]["why"] == "runbook source or its inputs changed"
        assert changed["after"]["status"] == "succeeded" and changed["daily"]["status"] == "skipped"

        meta_file = products_of(folder, "daily")
        meta = json.loads(meta_file.read_text())
        meta["timestamp"] -= 2 * 3600  # built two hours ago; its freshness window is one hour
        meta_file.write_text(json.dumps(meta))
        expired = by_task(run(str(spec), env="dev"))
        assert expired["daily"]["status"] == "succeeded" and "freshness_hours" in expired["daily"]["why"]
        assert expired["reads"]["status"] == "skipped" and expired["after"]["status"] == "skipped"
    finally:
        shutil.rmtree(inputs, ignore_errors=True)


def products_of(folder: Path, task: str) -> Path:
    """The ploomber metadata file of a task's notebook product."""
    from stackbook.core import project

    found = [p for p in project.state_dir().glob(f"pipelines/*/dev/.{task}.ipynb.metadata")
             if folder.name in str(p)]
    assert len(found) == 1, found
    return found[0]


def test_failing_task_stops_dependents_independent_branch_goes_on(tmp_path, cli, db):
    spec = make_pipeline(
        tmp_path / "failing",
        tasks=[
            {"source": str(FIX / "pipe_fail.ipynb"), "name": "breaks", "product": "breaks.ipynb"},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "after", "upstream": ["breaks"], "product": "after.ipynb"},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "after_after", "upstream": ["after"],
             "product": "after_after.ipynb"},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "aside", "product": "aside.ipynb",
             "params": {"label": "aside"}},
        ],
    )
    res = cli("pipeline", "run", str(spec), "--json", "--parallel", "2")
    assert res.code == 1, res
    summary = res.json()
    assert summary["status"] == "failed" and summary["failed"] == ["breaks"]
    assert "breaks" in res.err and "did not succeed" in res.err
    t = by_task(summary)
    assert t["breaks"]["status"] == "failed" and t["breaks"]["error"]["ename"] == "AssertionError"
    assert t["after"]["status"] == "upstream_failed" and "breaks" in t["after"]["reason"]
    assert t["after_after"]["status"] == "upstream_failed"
    assert t["aside"]["status"] == "succeeded"
    listed = cli("runs", "--pipeline-run", summary["pipeline_run_id"], "--json").json()
    assert sorted(r["status"] for r in listed) == ["failed", "succeeded", "upstream_failed", "upstream_failed"]
    # a failed task is not up to date: the next run tries it again, and skips the branch that succeeded
    again = cli("pipeline", "run", str(spec), "--json")
    assert again.code == 1
    t2 = by_task(again.json())
    assert t2["breaks"]["status"] == "failed" and t2["aside"]["status"] == "skipped"


def test_retries_each_attempt_in_the_ledger(tmp_path, db, database_url):
    from stackbook.pipelines import run

    spec = make_pipeline(
        tmp_path / "retries",
        tasks=[
            {"source": str(FIX / "pipe_flaky.ipynb"), "name": "recovers", "product": "recovers.ipynb",
             "params": {"counter_file": str(tmp_path / "recovers.count"), "succeed_on": 2}},
            {"source": str(FIX / "pipe_flaky.ipynb"), "name": "gives_up", "product": "gives_up.ipynb",
             "params": {"counter_file": str(tmp_path / "gives_up.count"), "succeed_on": 99}},
        ],
    )
    events = []
    summary = run(str(spec), env="dev", parallel=2, on_event=lambda kind, d: events.append((kind, d)))
    t = by_task(summary)
    assert summary["status"] == "failed" and summary["failed"] == ["gives_up"]
    assert t["recovers"]["status"] == "succeeded" and t["recovers"]["attempts"] == 2
    assert t["gives_up"]["status"] == "failed" and t["gives_up"]["attempts"] == 3  # retries: 2 in its metadata
    rows = ledger_rows(db, summary["pipeline_run_id"])
    assert [(r["attempt"], r["status"]) for r in rows["pipe_flaky"] if r["params"]["succeed_on"] == 2] == \
        [(1, "failed"), (2, "succeeded")]
    assert [(r["attempt"], r["status"]) for r in rows["pipe_flaky"] if r["params"]["succeed_on"] == 99] == \
        [(1, "failed"), (2, "failed"), (3, "failed")]
    retries = [d for kind, d in events if kind == "retry" and d["task"] == "gives_up"]
    assert [d["delay_s"] for d in retries] == [0.2, 0.4]  # retry_delay_s 0.2, doubled each time


def test_bad_parameter_refuses_before_anything_runs(tmp_path, cli, db):
    marker = uuid.uuid4().hex
    spec = make_pipeline(
        tmp_path / "badparam",
        tasks=[
            {"source": str(FIX / "pipe_step.ipynb"), "name": "fine", "product": "fine.ipynb",
             "params": {"label": marker}},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "wrong", "product": "wrong.ipynb",
             "params": {"rows": "many"}},
        ],
    )
    res = cli("pipeline", "run", str(spec), "--json")
    assert res.code == 2, res
    assert res.json()["kind"] == "ParameterError"
    assert "task 'wrong'" in res.err and "rows" in res.err and "nothing was executed" in res.err
    # nothing ran, not even the task that was fine
    assert db.execute("select count(*) from stackbook.runs where params->>'label' = %s", (marker,)).fetchone()[0] == 0


@pytest.mark.parametrize("bad, message", [
    ({"tasks": [{"source": "x.ipynb"}]}, "needs a `product:`"),
    ({"tasks": [{"source": "x.ipynb", "product": "x.ipynb", "upstream": ["nope"]}]}, "unknown upstream nope"),
    ({"tasks": [{"source": "a.ipynb", "name": "a", "product": "a.ipynb", "upstream": ["b"]},
                {"source": "b.ipynb", "name": "b", "product": "b.ipynb", "upstream": ["a"]}]}, "cycle"),
    ({"stackbook": {"schedule": "every day"}, "tasks": [{"source": "x.ipynb", "product": "x.ipynb"}]},
     "not a valid cron expression"),
])
def test_malformed_specs_exit_2(tmp_path, bad, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(bad))
    res = run_cli("pipeline", "show", str(folder / "pipeline.yaml"))
    assert res.code == 2 and message in res.err, res


def test_list_and_show_the_daily_pipeline():
    listed = run_cli("pipeline", "list", "--json")
    assert listed.code == 0, listed
    daily = {p["name"]: p for p in listed.json()}["daily"]
    assert daily["tasks"] == ["load_jaffle_shop", "validate_raw", "build_warehouse", "train_customer_model",
                              "score_customers", "check_model_drift", "compliance_audit"]
    assert daily["schedule"] == "0 6 * * *"
    shown = run_cli("pipeline", "show", "daily", "--json").json()
    assert shown["order"][:3] == ["load_jaffle_shop", "validate_raw", "build_warehouse"]
    assert "test" in shown["profiles"]
    ups = {t["name"]: t["upstream"] for t in shown["tasks"]}
    assert ups["train_customer_model"] == ["build_warehouse"] and ups["compliance_audit"] == ["build_warehouse"]
    assert ups["build_warehouse"] == ["validate_raw"] and ups["check_model_drift"] == ["score_customers"]
    missing = run_cli("pipeline", "show", "nope")
    assert missing.code == 2 and "no pipeline named 'nope'" in missing.err and "daily" in missing.err


def test_ploomber_stays_off_other_paths():
    code = ("import sys; import stackbook.cli, stackbook.run.engine, stackbook.pipelines, stackbook.cli.pipeline, "
            "stackbook.pipelines.spec, stackbook.pipelines.fastpath, stackbook.pipelines.execute, stackbook.schedules, "
            "stackbook.cli.schedule, stackbook.schedules.crontab, stackbook.schedules.airflow, "
            "stackbook.schedules.kubernetes, stackbook.run.metrics, stackbook.k8s.backend; "
            "assert 'ploomber' not in sys.modules, 'ploomber imported'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_interrupted_pipeline_records_cancelled_and_exits_130(tmp_path, db, database_url):
    import signal
    import time

    from tests.conftest import STACKBOOK

    spec = make_pipeline(
        tmp_path / "interrupted",
        tasks=[
            {"source": str(ROOT / "tests" / "fixtures" / "foundation" / "sleeps.ipynb"), "name": "slow",
             "product": "slow.ipynb", "params": {"seconds": 120}},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "after", "upstream": ["slow"], "product": "after.ipynb"},
        ],
    )
    proc = subprocess.Popen([STACKBOOK, "pipeline", "run", str(spec), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "started run" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "slow: started run" in line, line
        time.sleep(3)  # inside the sleeping cell
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    run_id = line.split("started run ")[1].split(":")[0]
    pipeline_run = db.execute("select pipeline_run_id from stackbook.runs where id = %s", (run_id,)).fetchone()[0]
    rows = dict(db.execute("select runbook, status from stackbook.runs where pipeline_run_id = %s",
                           (pipeline_run,)).fetchall())
    assert rows == {"sleeps": "cancelled", "pipe_step": "cancelled"}


def test_a_pipeline_refused_by_an_exclusive_lock_records_the_task_and_exits_3(tmp_path, db, database_url):
    """Two pipeline runs of one exclusive runbook: the second is refused, its task has a `refused` row, exit 3."""
    import time

    from tests.conftest import STACKBOOK

    exclusive = str(ROOT / "tests" / "fixtures" / "foundation" / "exclusive.ipynb")
    specs = [make_pipeline(tmp_path / f"holder{i}", tasks=[
        {"source": exclusive, "name": "hold", "product": "hold.ipynb", "params": {"seconds": 30 if i == 0 else 0}},
        {"source": str(FIX / "pipe_step.ipynb"), "name": "after", "upstream": ["hold"], "product": "after.ipynb"},
    ]) for i in (0, 1)]
    first = subprocess.Popen([STACKBOOK, "pipeline", "run", str(specs[0]), "--force", "--json"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.monotonic() + 120
        while "hold: started run" not in line and time.monotonic() < deadline:
            line = first.stderr.readline()
        assert "hold: started run" in line, line
        holder = line.split("started run ")[1].split(":")[0]
        second = run_cli("pipeline", "run", str(specs[1]), "--force", "--json")
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert second.code == 3, second
    summary = second.json()
    assert summary["status"] == "refused" and summary["refused"] == ["hold"] and summary["failed"] == []
    assert "refused" in second.err and "hold" in second.err and "Traceback" not in second.err
    t = by_task(summary)
    assert t["hold"]["status"] == "refused" and holder in t["hold"]["reason"]
    assert t["after"]["status"] == "upstream_failed"
    rows = ledger_rows(db, summary["pipeline_run_id"])
    assert [(r["status"], r["id"]) for r in rows["exclusive"]] == [("refused", t["hold"]["run_id"])]
    assert holder in rows["exclusive"][0]["reason"] and rows["exclusive"][0]["finished_at"] is not None
    assert [r["status"] for r in rows["pipe_step"]] == ["upstream_failed"]
    listed = run_cli("runs", "--pipeline-run", summary["pipeline_run_id"], "--status", "refused", "--json").json()
    assert [r["id"] for r in listed] == [t["hold"]["run_id"]]
