"""Repairing a pipeline run (`stackbook pipeline run NAME --repair ID`) and resuming retries.

Real kernels and the real ledger; the fixture notebooks under tests/fixtures/repair/ append a line to a
counts file each time a cell does its work, so the tests can tell what ran again and what did not.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import yaml

from tests.conftest import ROOT

REPAIR = ROOT / "tests" / "fixtures" / "repair"


def pipeline(folder: Path, tasks: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return folder / "pipeline.yaml"


def counts(path: Path) -> Counter:
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def rows_of(db, pipeline_run_id: str) -> list[tuple]:
    return db.execute("select params->>'label', attempt, status, id, resumed_from from stackbook.runs "
                      "where pipeline_run_id = %s order by started_at", (pipeline_run_id,)).fetchall()


def by_task(summary: dict) -> dict[str, dict]:
    return {t["name"]: t for t in summary["tasks"]}


def abcd(tmp_path: Path, b_notebook: str = "flagged") -> tuple[Path, Path, Path]:
    """a -> b -> c, and d on its own; a, c and d run the same notebook (told apart by their parameters)."""
    tally, flag = tmp_path / "counts.txt", tmp_path / "b.flag"
    flag.write_text("fail\n")
    counted = str(REPAIR / "counted.ipynb")
    spec = pipeline(tmp_path / f"abcd{uuid.uuid4().hex[:6]}", [
        {"source": counted, "name": "a", "product": "a.ipynb", "params": {"label": "a", "counts": str(tally)}},
        {"source": str(REPAIR / f"{b_notebook}.ipynb"), "name": "b", "upstream": ["a"], "product": "b.ipynb",
         "params": {"label": "b", "counts": str(tally), "flag": str(flag)}},
        {"source": counted, "name": "c", "upstream": ["b"], "product": "c.ipynb",
         "params": {"label": "c", "counts": str(tally)}},
        {"source": counted, "name": "d", "product": "d.ipynb", "params": {"label": "d", "counts": str(tally)}},
    ])
    return spec, tally, flag


def test_repair_reruns_exactly_the_failed_and_upstream_failed_tasks(tmp_path, cli, db):
    spec, tally, flag = abcd(tmp_path)
    first = cli("pipeline", "run", str(spec), "--json", "--parallel", "2")
    assert first.code == 1, first
    t1 = by_task(first.json())
    assert [t1[n]["status"] for n in "abcd"] == ["succeeded", "failed", "upstream_failed", "succeeded"]
    prid = first.json()["pipeline_run_id"]
    assert counts(tally) == {"a": 1, "b before": 1, "d": 1}

    flag.unlink()  # what made b fail is fixed
    res = cli("pipeline", "run", str(spec), "--repair", prid, "--json")
    assert res.code == 0, res
    summary = res.json()
    t = by_task(summary)
    assert summary["pipeline_run_id"] == prid and summary["status"] == "succeeded"
    assert summary["kept"] == ["a", "d"] and sorted(summary["rerun"]) == ["b", "c"] and summary["resumed"] == []
    assert sorted(summary["ran"]) == ["b", "c"]
    for name in "ad":  # kept: their runs are the ones of the first run, not run again
        assert t[name]["repair"] == "kept" and t[name]["run_id"] == t1[name]["run_id"]
        assert t[name]["status"] == "succeeded"
    for name in "bc":
        assert t[name]["repair"] == "rerun" and t[name]["status"] == "succeeded" and t[name]["attempts"] == 2
    assert counts(tally) == {"a": 1, "d": 1, "b before": 2, "b after": 1, "c": 1}
    # the repair is the next attempt of the same pipeline run: every row under one id
    rows = rows_of(db, prid)
    assert [(label, attempt, status) for label, attempt, status, *_ in rows if label in "bc"] == [
        ("b", 1, "failed"), ("c", 1, "upstream_failed"), ("b", 2, "succeeded"), ("c", 2, "succeeded")]
    assert sorted((label, status) for label, _, status, *_ in rows if label in "ad") == [
        ("a", "succeeded"), ("d", "succeeded")]
    # the ploomber products of the repaired tasks were written: a plain rerun skips everything
    again = cli("pipeline", "run", str(spec), "--json")
    assert again.code == 0 and sorted(again.json()["skipped"]) == ["a", "b", "c", "d"], again

    nothing = cli("pipeline", "run", str(spec), "--repair", prid)
    assert nothing.code == 2 and "nothing to repair" in nothing.err and "Traceback" not in nothing.err, nothing


def test_bad_repair_ids_exit_2_and_run_nothing(tmp_path, cli, db):
    spec, tally, _ = abcd(tmp_path)
    unknown = cli("pipeline", "run", str(spec), "--repair", "pnosuchrun")
    assert unknown.code == 2 and "no pipeline run with that id" in unknown.err, unknown
    assert "nothing was executed" in unknown.err and "Traceback" not in unknown.err

    fails = ROOT / "tests" / "fixtures" / "runbooks" / "pipe_fail.ipynb"
    other = pipeline(tmp_path / "other", [{"source": str(fails), "name": "x", "product": "x.ipynb"}])
    failed = cli("pipeline", "run", str(other), "--json")
    assert failed.code == 1, failed
    other_id = failed.json()["pipeline_run_id"]
    wrong = cli("pipeline", "run", str(spec), "--repair", other_id, "--json")
    assert wrong.code == 2 and "no task for: pipe_fail" in wrong.err and "another pipeline" in wrong.err, wrong
    assert wrong.json()["kind"] == "UsageError"
    forced = cli("pipeline", "run", str(other), "--repair", other_id, "--force")
    assert forced.code == 2 and "--force" in forced.err, forced
    elsewhere = cli("pipeline", "run", str(other), "--repair", other_id, "-e", "prod")
    assert elsewhere.code == 2 and "-e dev" in elsewhere.err, elsewhere
    assert counts(tally) == {}  # none of the bad repairs ran anything


def test_repair_resumes_a_resumable_runbook_where_it_stopped(tmp_path, cli, db):
    """b says `resumable: true`: the repair continues b's failed run (the cell before the failure is not run
    again, its value is used after it) and c, which never ran, runs."""
    spec, tally, flag = abcd(tmp_path, "flagged_resumable")
    first = cli("pipeline", "run", str(spec), "--json")
    assert first.code == 1, first
    failed_b = by_task(first.json())["b"]["run_id"]
    flag.unlink()
    res = cli("pipeline", "run", str(spec), "--repair", first.json()["pipeline_run_id"], "--json")
    assert res.code == 0, res
    t = by_task(res.json())
    assert res.json()["resumed"] == ["b"] and res.json()["rerun"] == ["c"], res.json()
    assert t["b"]["repair"] == "resumed" and t["b"]["resumed_from"] == failed_b and "resumed" in t["b"]["note"]
    assert counts(tally) == {"a": 1, "d": 1, "b before": 1, "b after": 1, "c": 1}
    row = db.execute("select resumed_from, attempt, results->>'value' from stackbook.runs where id = %s",
                     (t["b"]["run_id"],)).fetchone()
    assert row == (failed_b, 2, "7")


def _dag_tasks(source: str) -> dict[str, list[str]]:
    """task id -> the `stackbook` arguments of each task in a generated DAG file."""
    import ast

    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "stackbook_task" and len(n.args) == 2]
    return {ast.literal_eval(c.args[0]): ast.literal_eval(c.args[1]) for c in calls}


def _as_airflow_renders(args: list[str], dag_run: str, try_number: int) -> list[str]:
    return [a.replace("{env}", "dev").replace("{{ run_id }}", dag_run).replace("{{ ti.try_number }}", str(try_number))
            for a in args]


def test_airflow_retry_of_a_resumable_runbook_resumes_the_failed_try(tmp_path, cli, db):
    """The generated DAG's command for a `resumable: true` runbook, run as Airflow runs it on try 1 and try 2:
    try 2 continues try 1's failed run; a runbook that is not resumable gets no such flag."""
    from stackbook.pipelines.spec import load_spec
    from stackbook.schedules import airflow, from_pipeline

    spec, tally, flag = abcd(tmp_path, "flagged_resumable")
    tasks = _dag_tasks(airflow.dag_source(from_pipeline(load_spec(str(spec))), env="dev"))
    assert "--resume-retries" in tasks["b"] and "--resume-retries" not in tasks["a"]
    dag_run = f"airflow:test:manual__{uuid.uuid4().hex[:8]}"
    try1 = cli(*_as_airflow_renders(tasks["b"], dag_run, 1), "--json")
    assert try1.code == 1, try1
    flag.unlink()
    try2 = cli(*_as_airflow_renders(tasks["b"], dag_run, 2), "--json")
    assert try2.code == 0, try2
    rec = try2.json()
    assert rec["attempt"] == 2 and rec["resumed_from"] == try1.json()["id"] and "resumed run" in try2.err
    assert counts(tally) == {"b before": 1, "b after": 1}
    # a try whose previous try left no row (the worker died first) runs from the start, saying so
    fresh = cli(*_as_airflow_renders(tasks["b"], f"{dag_run}-2", 3), "--json")
    assert fresh.code == 0 and fresh.json()["resumed_from"] is None and "ran from the start" in fresh.err, fresh


def test_a_task_waiting_at_a_manual_step_holds_its_dependents_until_attested_then_repair(tmp_path, cli, db):
    """m stops at a manual step: the pipeline ends `waiting` (exit 4, as `stackbook run`), n does not run and no
    retry starts; a repair is refused until someone attests; after `attest`, the repair keeps m and runs n."""
    tally = tmp_path / "counts.txt"
    spec = pipeline(tmp_path / f"manual{uuid.uuid4().hex[:6]}", [
        {"source": str(REPAIR / "manual_step.ipynb"), "name": "m", "product": "m.ipynb",
         "params": {"label": "m", "counts": str(tally)}},
        {"source": str(REPAIR / "counted.ipynb"), "name": "n", "upstream": ["m"], "product": "n.ipynb",
         "params": {"label": "n", "counts": str(tally)}},
    ])
    first = cli("pipeline", "run", str(spec), "--json")
    assert first.code == 4, first  # a task waits for a person: exit 4, its dependents did not run
    summary = first.json()
    t = by_task(summary)
    assert summary["status"] == "waiting" and summary["waiting"] == ["m"] and summary["failed"] == []
    assert t["m"]["status"] == "waiting" and t["m"]["attempts"] == 1 and t["n"]["status"] == "upstream_failed"
    assert "attest" in first.err
    early = cli("pipeline", "run", str(spec), "--repair", summary["pipeline_run_id"])
    assert early.code == 2 and "waits for a person" in early.err and f"attest {t['m']['run_id']}" in early.err, early
    attested = cli("attest", t["m"]["run_id"], "--by", "tester")
    assert attested.code == 0, attested
    res = cli("pipeline", "run", str(spec), "--repair", summary["pipeline_run_id"], "--json")
    assert res.code == 0, res
    assert res.json()["kept"] == ["m"] and res.json()["rerun"] == ["n"] and res.json()["status"] == "succeeded"
    assert counts(tally) == {"m before": 1, "m after": 1, "n": 1}


def test_a_pipeline_retry_of_a_resumable_runbook_resumes_the_failed_attempt(tmp_path, db):
    """retries: 1 and resumable: true: attempt 2 continues attempt 1 at its failed cell (the cell before it ran once)."""
    from stackbook.pipelines import run

    tally = tmp_path / "counts.txt"
    spec = pipeline(tmp_path / f"flaky{uuid.uuid4().hex[:6]}", [
        {"source": str(REPAIR / "flaky_resumable.ipynb"), "name": "r", "product": "r.ipynb",
         "params": {"counts": str(tally), "tries": str(tmp_path / "tries.txt")}}])
    summary = run(str(spec), env="dev")
    t = by_task(summary)["r"]
    assert summary["status"] == "succeeded" and t["attempts"] == 2 and t["repair"] is None
    assert t["resumed_from"] == t["run_ids"][0] and t["run_id"] == t["run_ids"][1]
    assert counts(tally) == {"r before": 1, "r after": 1}
    assert db.execute("select results->>'value' from stackbook.runs where id = %s", (t["run_id"],)).fetchone() == ("42",)
