"""Schedules: crontab lines that cron can read, CronJobs valid and compliant, Airflow files that compile."""

from __future__ import annotations

import ast
import re
import shlex

import pytest
import yaml
from croniter import croniter

from tests.conftest import ROOT, run_cli


def test_crontab_lines_parse_as_cron():
    res = run_cli("schedule", "crontab", "-e", "dev")
    assert res.code == 0, res
    from stackbook.schedules.crontab import schedule_lines

    lines = schedule_lines(res.out)
    assert lines, res.out
    kinds = set()
    for line in lines:
        fields = line.split()
        expr = " ".join(fields[:5])
        assert croniter.is_valid(expr), line
        croniter(expr).get_next()  # and it yields a next run
        command = " ".join(fields[5:])
        assert command.startswith(f"cd {shlex.quote(str(ROOT))} && ")
        assert ".venv/bin/stackbook " in command and " -e dev " in command
        assert re.search(r">> \S*\.stackbook/logs/\S+\.log 2>&1$", command), command
        kinds.add(shlex.split(command.split(".venv/bin/stackbook ", 1)[1])[0])
    assert kinds == {"pipeline", "run", "check"}  # the daily pipeline, the scheduled runbooks, stackbook check
    assert ".venv/bin/stackbook check -e dev >> .stackbook/logs/check.log 2>&1" in res.out
    assert "pipeline run daily -e dev" in res.out
    assert "DO_NOT_TRACK=1" in res.out and "PLOOMBER_STATS_ENABLED=false" in res.out
    bad = run_cli("schedule", "crontab", "-e", "nowhere")
    assert bad.code == 2 and "unknown environment 'nowhere'" in bad.err


def test_schedule_list_matches_metadata():
    res = run_cli("schedule", "list", "--json")
    assert res.code == 0, res
    items = {(i["kind"], i["name"]): i for i in res.json()}
    assert items[("pipeline", "daily")]["schedule"] == "0 6 * * *"
    from stackbook.core import catalog

    scheduled = {rb.name for rb in catalog.all_runbooks() if rb.metadata.get("schedule")}
    assert {n for k, n in items if k == "runbook"} == scheduled


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_cronjobs_valid_and_compliant(tmp_path, env):
    res = run_cli("schedule", "kubernetes", "-e", env, "--out", str(tmp_path))
    assert res.code == 0, res
    docs = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("*.yaml"))]
    assert docs and all(d["kind"] == "CronJob" for d in docs)
    from stackbook.audit.kubernetes import check_all
    from stackbook.k8s.validate import validate_manifests

    assert validate_manifests(docs) == []
    failing = [f for f in check_all(docs) if f.status != "pass"]
    assert failing == [], failing
    by_name = {d["metadata"]["name"]: d for d in docs}
    check = by_name["stackbook-check"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert check["args"] == ["check", "-e", "$(STACKBOOK_ENV)"]
    daily = by_name["pipeline-daily"]
    assert daily["spec"]["schedule"] == "0 6 * * *"
    pod = daily["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["pipeline", "run", "daily"] and "$(STACKBOOK_ENV)" in container["args"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert re.match(r"^[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})$", container["image"])
    assert not container["image"].endswith(":latest")
    assert {d["metadata"]["namespace"] for d in docs} == {f"stackbook-{env}"}
    # stdout form: the same CronJobs as one YAML stream
    stream = run_cli("schedule", "kubernetes", "-e", env)
    assert sorted(d["metadata"]["name"] for d in yaml.safe_load_all(stream.out)) == sorted(by_name)


def test_cronjob_that_breaks_the_rules_is_refused():
    from stackbook.schedules import ScheduleError
    from stackbook.schedules import kubernetes as k8s_mod

    cronjobs = k8s_mod.manifests("dev")
    pod = cronjobs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["containers"][0]["image"] = "ghcr.io/stackbook/stackbook:latest"
    with pytest.raises(ScheduleError) as err:
        k8s_mod.check(cronjobs)
    assert cronjobs[0]["metadata"]["name"] in str(err.value) and "problem" in str(err.value)


def test_airflow_files_compile_with_dependencies(tmp_path):
    res = run_cli("schedule", "airflow", "-e", "dev", "--out", str(tmp_path), "--json")
    assert res.code == 0, res
    files = {p.rsplit("/", 1)[1] for p in res.json()}
    assert "stackbook_pipeline_daily.py" in files
    source = (tmp_path / "stackbook_pipeline_daily.py").read_text()
    tree = ast.parse(source)
    assert "from airflow.sdk import DAG" in source and "STACKBOOK_AIRFLOW_EXECUTOR" in source
    edges = {(n.value.left.id, n.value.right.id) for n in ast.walk(tree)
             if isinstance(n, ast.Expr) and isinstance(n.value, ast.BinOp) and isinstance(n.value.op, ast.RShift)}
    assert edges == {("load_jaffle_shop", "validate_raw"), ("validate_raw", "build_warehouse"),
                     ("build_warehouse", "train_customer_model"), ("build_warehouse", "compliance_audit"),
                     ("train_customer_model", "score_customers"), ("score_customers", "check_model_drift")}
    assert "'-p', 'years=1'" in source  # the pipeline's parameters, expanded from env.yaml


def test_platform_image_installs_from_the_lock_and_runs_as_the_manifests_uid():
    """infra/docker/Dockerfile, checked offline (no Docker engine here)."""
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert [ln for ln in lines if ln.startswith("FROM")] == ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}"]
    runs = " ".join(ln for ln in lines if ln.startswith("RUN"))
    assert "COPY requirements.lock ./" in lines
    assert "uv pip sync --no-cache requirements.lock" in runs
    assert "uv pip install --no-cache --no-deps ." in runs  # the project itself, nothing unlocked
    installs = re.findall(r"pip install[^&]*", runs)
    assert all("--no-deps" in i or '"uv==${UV_VERSION}"' in i for i in installs), installs
    make_uv = re.search(r"uv==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"ARG UV_VERSION={make_uv}" in lines
    uid = int(re.search(r"^ARG STACKBOOK_UID=(\d+)$", text, re.M).group(1))
    assert f"USER {uid}:{uid}" in lines and '--uid "${STACKBOOK_UID}"' in runs
    assert uid != 0
    assert re.search(r'^ENTRYPOINT \[.*"stackbook"\]$', text, re.M)

    # every manifest stackbook generates runs as that UID
    from stackbook.k8s import backend as k8s_run
    from stackbook.run.engine import RunOptions
    from stackbook.schedules import airflow as airflow_mod
    from stackbook.schedules import kubernetes as k8s_mod

    pods = [cj["spec"]["jobTemplate"]["spec"]["template"]["spec"] for cj in k8s_mod.manifests("prod")]
    pods.append(k8s_run.job_manifest("platform_check", RunOptions(env="prod"), run_store="s3://x/y")
                ["spec"]["template"]["spec"])
    assert {p["securityContext"]["runAsUser"] for p in pods} == {uid}
    assert f"RUN_AS_USER = {uid}" in airflow_mod.TEMPLATE
    images = {p["containers"][0]["image"] for p in pods}
    assert images == {airflow_mod.DEFAULT_IMAGE}
