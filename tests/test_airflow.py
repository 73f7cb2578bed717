"""Airflow for real: generated DAGs import in Airflow 3 and `airflow dags test` runs one end to end.

Airflow lives in its own virtual environment (.venv-airflow, made by
infra/airflow/setup.sh from infra/airflow/requirements.lock); its tasks call
the project's .venv/bin/stackbook against the project-local PostgreSQL. The
metadata database is SQLite under the test session's state folder (airflow/).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from stackbook.core import project
from tests.conftest import ROOT, run_cli

AIRFLOW_VENV = ROOT / ".venv-airflow"
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
AIRFLOW_HOME = project.state_dir() / "airflow"
FIX = ROOT / "tests" / "fixtures" / "runbooks"
DAILY_RUNBOOKS = ("load_jaffle_shop", "validate_raw", "build_warehouse", "train_customer_model", "compliance_audit",
                  "score_customers", "check_model_drift")


@pytest.fixture(scope="module")
def airflow_ready():
    """.venv-airflow, created by infra/airflow/setup.sh when absent (`make test` runs it first)."""
    if not AIRFLOW.exists():
        proc = subprocess.run(["bash", str(ROOT / "infra" / "airflow" / "setup.sh")], capture_output=True, text=True,
                              timeout=1200, cwd=ROOT)
        if proc.returncode != 0 or not AIRFLOW.exists():
            pytest.fail(f".venv-airflow is absent and infra/airflow/setup.sh could not create it: "
                        f"{(proc.stderr or proc.stdout)[-500:]}")
    return AIRFLOW


def airflow_env(dags_folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update({
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "SCARF_ANALYTICS": "false",
        "DO_NOT_TRACK": "1",
        "STACKBOOK_PROJECT": str(ROOT),
    })
    env.update(extra)
    return env


def check_dags(folder: Path, **extra: str) -> dict:
    out = folder.parent / f"check-{uuid.uuid4().hex[:6]}.json"
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), str(ROOT / "infra" / "airflow" / "check_dags.py"),
                           str(folder), str(out)], capture_output=True, text=True, timeout=300,
                          env=airflow_env(folder, **extra))
    assert out.exists(), (proc.stdout + proc.stderr)[-3000:]
    doc = json.loads(out.read_text())
    assert proc.returncode == 0 and doc["import_errors"] == {}, (doc["import_errors"], proc.stderr[-3000:])
    return doc


def fixture_pipeline(folder: Path, marker: str) -> Path:
    """a -> b (flaky: fails its first attempt, retried by Airflow), c independent."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "stackbook": {"description": "Airflow fixture", "schedule": "15 4 * * *"},
        "tasks": [
            {"source": str(FIX / "pipe_step.ipynb"), "name": "a", "product": "a.ipynb",
             "params": {"label": "{{marker}}-a"}},
            {"source": str(FIX / "pipe_flaky.ipynb"), "name": "b", "upstream": ["a"], "product": "b.ipynb",
             "params": {"counter_file": str(folder / "b.count"), "succeed_on": 2}},
            {"source": str(FIX / "pipe_step.ipynb"), "name": "c", "product": "c.ipynb",
             "params": {"label": "{{marker}}-c"}},
        ],
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / "env.yaml").write_text(yaml.safe_dump({"marker": marker}))
    return folder / "pipeline.yaml"


def write_dag(spec_path: Path, out: Path, profile: str | None = None) -> Path:
    from stackbook.pipelines.spec import load_spec
    from stackbook.schedules import airflow, from_pipeline

    item = from_pipeline(load_spec(str(spec_path)))
    if profile:
        item.profile = profile
    return airflow.write(out, env="dev", items=[item])[0]


def test_dag_integrity_every_generated_file(airflow_ready, tmp_path):
    """Every generated DAG imports in Airflow 3, with the schedules, dependencies, retries and timeouts of the specs."""
    from stackbook.core import catalog
    from stackbook.schedules import airflow, scheduled

    items = scheduled()
    files = airflow.write(tmp_path, env="dev", items=items)
    write_dag(fixture_pipeline(tmp_path / "spec", "integrity"), tmp_path)
    doc = check_dags(tmp_path)
    dags = doc["dags"]
    assert set(dags) == {airflow.dag_id(i) for i in items} | {"stackbook_pipeline_spec"}
    assert len(files) == len(items)
    for item in items:
        dag = dags[airflow.dag_id(item)]
        assert dag["schedule"] == item.schedule and dag["catchup"] is False and dag["max_active_runs"] == 1
        if item.kind == "pipeline":
            spec = item.source
            assert set(dag["tasks"]) == {t.name for t in spec.tasks}
            for t in spec.tasks:
                assert dag["tasks"][t.name]["upstream"] == sorted(t.upstream)
        else:
            meta = catalog.load(item.name).metadata
            (task,) = dag["tasks"].values()
            assert task["operator"] == "BashOperator"
            assert task["retries"] == meta["retries"]
            assert task["timeout_s"] == (meta["timeout"] + airflow.TIMEOUT_GRACE_S if meta["timeout"] else None)
            assert f"stackbook run {item.name} -e dev" in task["command"]
    fixture = dags["stackbook_pipeline_spec"]["tasks"]
    assert fixture["b"]["upstream"] == ["a"] and fixture["c"]["upstream"] == []
    assert fixture["b"]["retries"] == 2 and fixture["b"]["retry_delay_s"] == 0.2 and fixture["b"]["exponential_backoff"]
    assert fixture["a"]["timeout_s"] == 120 + airflow.TIMEOUT_GRACE_S

    # the documented switch: every task in a pod of the platform image
    pods = check_dags(tmp_path, STACKBOOK_AIRFLOW_EXECUTOR="kubernetes")["dags"]
    for dag in pods.values():
        for task in dag["tasks"].values():
            assert task["operator"] == "KubernetesPodOperator"
            assert task["image"] == airflow.DEFAULT_IMAGE and task["command"][0] in ("run", "pipeline")
    assert pods["stackbook_pipeline_spec"]["tasks"]["b"]["upstream"] == ["a"]
    # the pods KubernetesPodOperator would create: valid, and compliant with the audit's Kubernetes rules
    from stackbook.audit.kubernetes import check_all
    from stackbook.k8s.validate import validate_manifests

    specs = [t["pod"] for dag in pods.values() for t in dag["tasks"].values()]
    assert specs and validate_manifests(specs) == []
    assert [f for f in check_all(specs) if f.status != "pass"] == []
    assert {p["spec"]["securityContext"]["runAsUser"] for p in specs} == {10001}


def dags_test(dag_file: Path, dag_id: str, cwd: Path, db) -> list[tuple]:
    """`airflow dags test DAG_ID` on one generated file; the ledger rows its tasks wrote (oldest first)."""
    assert dag_file.exists()
    started = db.execute("select now()").fetchone()[0]
    env = airflow_env(dag_file.parent)
    # the SQLite metadata database, migrated once per Airflow lock (a new Airflow version migrates it again)
    lock_hash = hashlib.sha256((ROOT / "infra" / "airflow" / "requirements.lock").read_bytes()).hexdigest()
    stamp = AIRFLOW_HOME / ".migrated"
    if not (AIRFLOW_HOME / "airflow.db").exists() or not stamp.exists() or stamp.read_text() != lock_hash:
        AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
        mig = subprocess.run([str(AIRFLOW), "db", "migrate"], capture_output=True, text=True, env=env, timeout=600)
        assert mig.returncode == 0, mig.stderr[-3000:]
        stamp.write_text(lock_hash)
    proc = subprocess.run([str(AIRFLOW), "dags", "test", dag_id], capture_output=True, text=True, env=env,
                          timeout=1200, cwd=cwd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = db.execute("select runbook, status, attempt, params, pipeline_run_id from stackbook.runs "
                      "where started_at >= %s and env = 'dev' and pipeline_run_id like %s order by started_at",
                      (started, f"airflow:{dag_id}:%")).fetchall()
    assert len({r[4] for r in rows}) == 1, rows  # every task's ledger row carries the one DAG run's id
    return rows


def test_airflow_dags_test_runs_the_daily_pipeline(airflow_ready, tmp_path, db):
    """The generated daily DAG (test profile: small data) end to end: every task a `stackbook run` in the ledger."""
    dag_file = write_dag(ROOT / "pipelines" / "daily" / "pipeline.yaml", tmp_path / "dags", profile="test")
    rows = dags_test(dag_file, "stackbook_pipeline_daily", tmp_path, db)
    assert {r[0] for r in rows if r[1] == "succeeded"} == set(DAILY_RUNBOOKS), rows
    listed = run_cli("runs", "--pipeline-run", rows[0][4], "--json")
    assert listed.code == 0 and {r["runbook"] for r in listed.json()} == set(DAILY_RUNBOOKS), listed


def test_airflow_retries_a_failed_task_each_try_in_the_ledger(airflow_ready, tmp_path, db):
    """A task that fails its first try: Airflow retries it, the ledger has both tries with Airflow's try number."""
    marker = f"af-{uuid.uuid4().hex[:8]}"
    dag_file = write_dag(fixture_pipeline(tmp_path / "afpipe", marker), tmp_path / "dags")
    rows = dags_test(dag_file, "stackbook_pipeline_afpipe", tmp_path, db)
    labels = {r[3].get("label") for r in rows if r[0] == "pipe_step"}
    assert labels == {f"{marker}-a", f"{marker}-c"}
    flaky = [(r[1], r[2]) for r in rows if r[0] == "pipe_flaky"]
    assert flaky == [("failed", 1), ("succeeded", 2)], rows
