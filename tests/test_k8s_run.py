"""`stackbook run --on kubernetes` without a cluster: the Job it would create, and the clear refusal."""

from __future__ import annotations

import pytest

from stackbook.core.errors import ParameterError, UsageError


def test_job_manifest_is_valid_and_compliant():
    from stackbook.audit.kubernetes import check_all
    from stackbook.k8s import backend as k8s_run
    from stackbook.k8s.validate import validate_manifests
    from stackbook.run.engine import RunOptions

    job = k8s_run.job_manifest("platform_check", RunOptions(env="prod", cli_params=["min_runbooks=2"]),
                               token="abc123", run_store="s3://runs/prod")
    assert job["kind"] == "Job" and job["metadata"]["name"] == "run-platform-check-abc123"
    assert job["metadata"]["namespace"] == "stackbook-prod"
    assert validate_manifests([job]) == []
    assert [f for f in check_all([job]) if f.status != "pass"] == []
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:4] == ["run", "platform_check", "-e", "prod"] and container["args"][-1] == "--json"
    assert "min_runbooks=2" in container["args"]
    assert {"name": "STACKBOOK_RUN_STORE", "value": "s3://runs/prod"} in container["env"]
    assert any(e["name"] == "DATABASE_URL" and "secretKeyRef" in e["valueFrom"] for e in container["env"])
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0


def test_no_cluster_configured_is_a_usage_error(monkeypatch, tmp_path):
    from stackbook.k8s import backend as k8s_run
    from stackbook.run.engine import RunOptions

    with pytest.raises(UsageError) as err:
        k8s_run.run("platform_check", RunOptions(env="dev"))
    assert err.value.exit_code == 2
    assert "kube_context is null" in str(err.value) and "kubectl config get-contexts" in str(err.value)

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(UsageError) as err:
        k8s_run.run("platform_check", RunOptions(env="staging"))
    assert "no kubeconfig" in str(err.value) and "'staging'" in str(err.value)

    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n"
                      "- name: elsewhere\n  context: {cluster: x, user: y}\ncurrent-context: elsewhere\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(UsageError) as err:
        k8s_run.run("platform_check", RunOptions(env="staging"))
    assert "'staging' is not a context of the kubeconfig" in str(err.value)


def test_bad_parameter_refused_before_any_cluster():
    from stackbook.k8s import backend as k8s_run
    from stackbook.run.engine import RunOptions

    with pytest.raises(ParameterError):
        k8s_run.run("platform_check", RunOptions(env="dev", cli_params=["min_runbooks=many"]))


def test_only_catalogue_runbooks_run_on_kubernetes():
    from stackbook.k8s import backend as k8s_run
    from stackbook.run.engine import RunOptions
    from tests.conftest import ROOT

    with pytest.raises(UsageError) as err:
        k8s_run.job_manifest(str(ROOT / "tests/fixtures/runbooks/pipe_step.ipynb"), RunOptions(env="prod"))
    assert "only catalogue runbooks" in str(err.value)


def test_record_read_from_pod_log():
    from stackbook.k8s.backend import _record_from_logs

    lines = ["stackbook: run 1-abc started", "{", '  "id": "1-abc",', '  "status": "failed"', "}",
             "stackbook: runbook 'x' failed"]
    assert _record_from_logs(lines) == {"id": "1-abc", "status": "failed"}
    assert _record_from_logs(["no record"]) is None


def test_cli_on_kubernetes_without_cluster_exits_2_and_runs_nothing(cli):
    """The CLI switch reaches the Kubernetes path: dev names no cluster, so exit 2 saying how to set one."""
    before = cli("runs", "--runbook", "platform_check", "--limit", "1000", "--json").json()
    res = cli("run", "platform_check", "-e", "dev", "--on", "kubernetes", "--json")
    assert res.code == 2, res
    doc = res.json()
    assert doc["kind"] == "UsageError" and doc["exit_code"] == 2
    assert "kube_context" in doc["error"] and "infra/environments/dev.yml" in doc["error"]
    after = cli("runs", "--runbook", "platform_check", "--limit", "1000", "--json").json()
    assert len(after) == len(before)


def test_a_job_that_printed_no_record_gets_a_failed_row_and_a_printed_one_is_read_back(db):
    """No Job goes unrecorded: without a record in the pod's log, a `failed` row says why."""
    import uuid

    from stackbook.k8s.backend import _read_back
    from stackbook.run import ledger

    name = f"k8s_readback_{uuid.uuid4().hex[:6]}"
    rec = _read_back(None, name, "dev", "Kubernetes job ns/run-x failed without a run record (see its pod events)")
    try:
        assert rec.status == "failed" and "without a run record" in rec.reason and rec.finished_at is not None
        printed = {"id": rec.id, "runbook": name, "status": "running"}  # stale: the ledger's row wins
        assert _read_back(printed, name, "dev", "unused") == ledger.get_run(db, rec.id)
        assert ledger.list_runs(db, runbook=name) == [rec]
    finally:
        db.execute("delete from stackbook.runs where runbook = %s", (name,))
