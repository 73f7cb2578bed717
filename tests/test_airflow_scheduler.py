"""Airflow's own scheduler runs the generated DAGs: `stackbook schedule airflow-local up`, not `dags test`.

One local Airflow for the module (API server, scheduler, DAG processor, LocalExecutor from
.venv-airflow; metadata database `airflow_test` on the project-local PostgreSQL, AIRFLOW_HOME under
the test session's state folder), started by the documented command and stopped at the end even
when a test fails. Its DAGs folder holds the generated daily DAG (test profile: small data), a
fixture pipeline whose step `b` fails its first try on purpose, and a one-task DAG that sleeps
(stopped by `down` while it runs). DAG runs are triggered through Airflow's REST API, as the UI
does; `--manual` keeps the scheduler from adding scheduled runs of its own.

Marked `slow`: a few minutes on two cores (the daily DAG's seven `stackbook run` tasks dominate);
`make test` runs it once.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import yaml

from stackbook.schedules.airflow_local import MARK
from tests.conftest import ROOT, run_cli
from tests.test_airflow import FIX, airflow_ready, fixture_pipeline, write_dag  # noqa: F401 (airflow_ready: a fixture)

pytestmark = pytest.mark.slow

DAILY = "stackbook_pipeline_daily"
RETRY = "stackbook_pipeline_afretry"
SLEEP = "stackbook_pipeline_afsleep"
RUN_TIMEOUT_S = 1800  # both DAG runs together; the daily one takes 2 to 5 minutes here


class AirflowAPI:
    """Airflow's REST API (v2) as the admin user of the simple auth manager."""

    def __init__(self, url: str, password_file: str):
        self.url = url
        password = json.loads(Path(password_file).read_text())["admin"]
        token = self._call("POST", "/auth/token", {"username": "admin", "password": password})
        self.token = token["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for _ in range(1 if method == "POST" else 4):  # a GET is asked again: one API worker on a busy machine
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return json.loads(resp.read())
            except TimeoutError:
                continue
        pytest.fail(f"Airflow's API did not answer {method} {path} within 60 s")

    def get(self, path: str):
        return self._call("GET", "/api/v2" + path, token=self.token)

    def post(self, path: str, body: dict):
        return self._call("POST", "/api/v2" + path, body, token=self.token)

    def trigger(self, dag_id: str) -> str:
        """A manual DAG run, as the UI's Trigger button makes it; returns its run id."""
        return self.post(f"/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def tries(self, dag_id: str, run_id: str) -> dict[str, dict]:
        doc = self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: ti for ti in doc["task_instances"]}


def sleep_pipeline(folder: Path, seconds: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"stackbook": {"description": "Airflow fixture: one long task", "schedule": "45 4 * * *"},
            "tasks": [{"source": str(FIX / "pipe_sleep.ipynb"), "name": "nap", "product": "nap.ipynb",
                       "params": {"seconds": seconds}}]}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "pipeline.yaml"


def airflow_processes(home: str) -> list[psutil.Process]:
    """Every live process carrying the local Airflow's mark, or in a process group or below a process that does."""
    marked, groups = [], set()
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK) == home:
                marked.append(proc)
                groups.add(os.getpgid(proc.pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    found = {p.pid: p for p in marked}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    for proc in list(found.values()):
        try:
            found.update({c.pid: c for c in proc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class LocalAirflow:
    def __init__(self, status: dict, work: Path, marker: str):
        self.status = status
        self.work = work
        self.marker = marker
        self.api = AirflowAPI(status["url"], status["password_file"])


@pytest.fixture(scope="module")
def local_airflow(airflow_ready, database_url, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("airflow-local")
    dags = work / "dags"
    write_dag(ROOT / "pipelines" / "daily" / "pipeline.yaml", dags, profile="test")
    marker = f"sched-{uuid.uuid4().hex[:8]}"
    write_dag(fixture_pipeline(work / "afretry", marker), dags)
    write_dag(sleep_pipeline(work / "afsleep", 240), dags)
    try:
        up = run_cli("schedule", "airflow-local", "up", "--dags", str(dags), "--manual", "--json", timeout=1800)
        assert up.code == 0, up
        yield LocalAirflow(up.json(), work, marker)
    finally:
        down = run_cli("schedule", "airflow-local", "down", timeout=300)
        assert down.code == 0, down


def wait_for(api: AirflowAPI, runs: dict[str, str], timeout: float) -> dict[str, dict]:
    """Poll until every (dag_id -> run_id) has finished; the final DAG run documents."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while len(done) < len(runs):
        for dag_id, run_id in runs.items():
            doc = api.run(dag_id, run_id)
            if doc["state"] in ("success", "failed"):
                done[dag_id] = doc
        if time.monotonic() > deadline:
            states = {d: {t: ti["state"] for t, ti in api.tries(d, r).items()} for d, r in runs.items()}
            pytest.fail(f"DAG runs not finished after {timeout} s: {states}")
        time.sleep(2)
    return done


@pytest.fixture(scope="module")
def dag_runs(local_airflow):
    """The daily DAG and the retry fixture, triggered together through the REST API, run to the end."""
    api = local_airflow.api
    runs = {DAILY: api.trigger(DAILY), RETRY: api.trigger(RETRY)}
    finished = wait_for(api, runs, RUN_TIMEOUT_S)
    return {dag_id: (finished[dag_id], api.tries(dag_id, run_id)) for dag_id, run_id in runs.items()}


def explain(run: dict, tries: dict[str, dict]) -> str:
    """A failed DAG run, for the assertion message: each task's state and try, the end of a failed task's log."""
    lines = [f"DAG run {run['dag_id']} {run['dag_run_id']}: {run['state']}"]
    for task_id, ti in tries.items():
        lines.append(f"  {task_id}: {ti['state']} (try {ti['try_number']})")
    home = Path(os.environ["STACKBOOK_STATE_DIR"]) / "airflow-local" / "logs" / f"dag_id={run['dag_id']}"
    for task_id, ti in tries.items():
        if ti["state"] == "failed":
            log = home / f"run_id={run['dag_run_id']}" / f"task_id={task_id}" / f"attempt={ti['try_number']}.log"
            events = [json.loads(line).get("event", "") for line in log.read_text().splitlines()[-12:]]
            lines += [f"  {task_id} log ({log}):", *(f"    {e}"[:400] for e in events)]
    return "\n".join(lines)


def ledger(db, dag_id: str, run_id: str) -> list[tuple]:
    return db.execute("select runbook, status, attempt, params from stackbook.runs where pipeline_run_id = %s "
                      "order by started_at", (f"airflow:{dag_id}:{run_id}",)).fetchall()


def test_up_with_a_missing_dags_folder_is_a_clear_error_and_starts_nothing(airflow_ready, database_url,  # noqa: F811
                                                                           tmp_path):
    from stackbook.schedules import airflow_local

    missing = tmp_path / "no-dags"
    res = run_cli("schedule", "airflow-local", "up", "--dags", str(missing), "--manual")
    assert res.code == 2, res
    assert f"DAGs folder {missing} does not exist" in res.err and "stackbook schedule airflow --out" in res.err
    assert airflow_local.processes() == [] and not airflow_local.status().running


def test_the_ui_and_the_api_show_the_generated_dags(local_airflow):
    status = local_airflow.status
    assert status["running"] and status["url"].startswith("http://127.0.0.1:") and status["database"] == "airflow_test"
    assert Path(status["home"]) == Path(os.environ["STACKBOOK_STATE_DIR"]) / "airflow-local"
    with urllib.request.urlopen(status["url"] + "/", timeout=30) as resp:  # the UI's single page
        assert resp.status == 200 and "<html" in resp.read().decode().lower()
    api = local_airflow.api
    dags = {d["dag_id"]: d for d in api.get("/dags?tags=stackbook&limit=100")["dags"]}
    assert {DAILY, RETRY, SLEEP} <= set(dags), sorted(dags)
    assert not dags[DAILY]["is_paused"] and dags[DAILY]["timetable_summary"] == "0 6 * * *"
    assert api.get("/importErrors")["total_entries"] == 0
    health = api.get("/monitor/health")
    assert {health[p]["status"] for p in ("metadatabase", "scheduler", "dag_processor")} == {"healthy"}
    # the three components, in one process group, each with its pidfile and log
    pids = {c["name"]: c["pid"] for c in status["components"]}
    assert set(pids) == {"api-server", "scheduler", "dag-processor"}
    assert len({os.getpgid(pid) for pid in pids.values()}) == 1
    assert all(Path(c["log"]).stat().st_size > 0 for c in status["components"])


def test_a_triggered_daily_run_records_the_dag_run_and_each_try_in_the_ledger(dag_runs, db):
    from stackbook.pipelines.spec import load_spec

    run, tries = dag_runs[DAILY]
    assert run["state"] == "success" and run["run_type"] == "manual", explain(run, tries)
    spec = load_spec(str(ROOT / "pipelines" / "daily" / "pipeline.yaml"))
    assert set(tries) == {t.name for t in spec.tasks}
    rows = ledger(db, DAILY, run["dag_run_id"])
    expected = sorted((spec.task(task_id).source, ti["try_number"]) for task_id, ti in tries.items())
    assert sorted((r[0], r[2]) for r in rows) == expected, rows  # one row per try, with Airflow's try number
    assert {r[1] for r in rows} == {"succeeded"}
    listed = run_cli("runs", "--pipeline-run", f"airflow:{DAILY}:{run['dag_run_id']}", "--json")
    assert listed.code == 0 and len(listed.json()) == len(rows), listed


def test_a_task_that_fails_once_is_retried_by_airflow_and_succeeds_on_its_second_try(dag_runs, db, local_airflow):
    run, tries = dag_runs[RETRY]
    assert run["state"] == "success", explain(run, tries)
    assert {t: ti["try_number"] for t, ti in tries.items()} == {"a": 1, "b": 2, "c": 1}
    rows = ledger(db, RETRY, run["dag_run_id"])
    assert [(r[1], r[2]) for r in rows if r[0] == "pipe_flaky"] == [("failed", 1), ("succeeded", 2)], rows
    marker = local_airflow.marker
    assert {r[3]["label"] for r in rows if r[0] == "pipe_step"} == {f"{marker}-a", f"{marker}-c"}


def test_down_stops_every_process_a_running_task_included(local_airflow, db):
    """Last in this module: `down` while a task runs; then no process of the local Airflow is left."""
    api, home = local_airflow.api, local_airflow.status["home"]
    run_id = api.trigger(SLEEP)
    deadline = time.monotonic() + 300
    while [r[1] for r in ledger(db, SLEEP, run_id)] != ["running"]:  # the task's `stackbook run` is under way
        assert time.monotonic() < deadline, api.tries(SLEEP, run_id)
        time.sleep(1)
    before = airflow_processes(home)
    names = " ".join(" ".join(p.cmdline()) for p in before)
    assert "scheduler" in names and "dag-processor" in names and "stackbook run" in names, names
    down = run_cli("schedule", "airflow-local", "down", "--json", timeout=300)
    assert down.code == 0, down
    assert {p.pid for p in before} <= set(down.json()["stopped"])
    assert [p for p in before if alive(p)] == [] and airflow_processes(home) == []
    status = run_cli("schedule", "airflow-local", "status", "--json").json()
    assert not status["running"] and not any(c["alive"] for c in status["components"])
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(local_airflow.status["url"] + "/api/v2/monitor/health", timeout=5)
    # the task stopped mid-run: its ledger row says so (cancelled by SIGTERM), nothing is left `running`
    rows = run_cli("runs", "--pipeline-run", f"airflow:{SLEEP}:{run_id}", "--json")
    assert rows.code == 0 and [r["status"] for r in rows.json()] in (["cancelled"], ["failed"]), rows
