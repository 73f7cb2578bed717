"""Kubernetes provisioning: render, offline validation, the K8S audit rules, plan and apply.

No cluster exists here, so the apply path is exercised up to the API server: a
context that is not configured, and a configured context whose server refuses
connections (a closed local port).
"""

from __future__ import annotations

import copy
import io
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from stackbook.audit import RULES
from stackbook.audit import kubernetes as k8s_rules
from stackbook.core import environments
from stackbook.core.notebooks import Runbook
from stackbook.k8s import KubernetesError, ManifestError, apply, render, resource_id, validate

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"
ENVS = ("dev", "staging", "prod")
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))
GOOD = sorted((FIXTURES / "good").glob("*.yaml"))
K8S_RULES = sorted(r.id for r in RULES.values() if r.area == "kubernetes")


def runbook(name: str, **meta) -> Runbook:
    return Runbook(name=name, path=Path(f"/nowhere/{name}.ipynb"), area="test", title=name, metadata=meta)


SCHEDULED = [runbook("load_jaffle_shop", schedule="0 6 * * *", timeout=600, secrets=["JAFFLE_API_KEY"]),
             runbook("dr_drill", schedule="@weekly"),
             runbook("adhoc_thing", schedule=None)]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {env: render.render(env, SCHEDULED) for env in ENVS}


def by_id(manifests: list[dict]) -> dict[str, dict]:
    return {resource_id(m): m for m in manifests}


@pytest.fixture()
def no_kubeconfig(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dead_kubeconfig(tmp_path) -> Path:
    """A kubeconfig whose `staging` context points at a local port nothing listens on."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "staging",
        "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "someone", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "staging", "context": {"cluster": "dead", "user": "someone"}}],
    }))
    return path


# ----------------------------------------------------------------------------- render

@pytest.mark.parametrize("env", ENVS)
def test_every_overlay_renders_and_validates(env, rendered):
    manifests = rendered[env]
    assert validate.validate_manifests(manifests) == []
    ids = by_id(manifests)
    ns = f"stackbook-{env}"
    for rid in (f"Namespace/{ns}", f"ServiceAccount/{ns}/stackbook", f"Deployment/{ns}/jupyterlab",
                f"Service/{ns}/jupyterlab", f"Deployment/{ns}/mlflow", f"Service/{ns}/mlflow",
                f"Service/{ns}/postgres", f"CronJob/{ns}/runbook-load-jaffle-shop", f"CronJob/{ns}/runbook-dr-drill"):
        assert rid in ids, rid
    assert not any(m["kind"] == "CronJob" and "adhoc" in m["metadata"]["name"] for m in manifests)
    assert ids[f"Service/{ns}/postgres"]["spec"]["type"] == "ExternalName"
    assert ids[f"ConfigMap/{ns}/stackbook-config"]["data"]["STACKBOOK_ENV"] == env
    assert manifests[0]["kind"] == "Namespace"
    assert ids[f"Namespace/{ns}"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for m in manifests:
        assert m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stackbook"
        assert m["kind"] == "Namespace" or m["metadata"]["namespace"] == ns
        spec = render.pod_spec(m)
        if spec:
            for _, c in render.all_containers(spec):
                assert c["image"].startswith("ghcr.io/stackbook/stackbook:"), c["image"]
            assert spec["securityContext"]["runAsUser"] == 10001


def test_overlays_differ_where_they_should(rendered):
    def mlflow(env):
        return by_id(rendered[env])[f"Deployment/stackbook-{env}/mlflow"]

    assert mlflow("dev")["spec"]["replicas"] == 1
    assert mlflow("prod")["spec"]["replicas"] == 2
    dev_res = mlflow("dev")["spec"]["template"]["spec"]["containers"][0]["resources"]
    prod_res = mlflow("prod")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert dev_res != prod_res and prod_res["limits"]["memory"] == "4Gi"
    cron = by_id(rendered["prod"])["CronJob/stackbook-prod/runbook-dr-drill"]
    runner = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert runner["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}  # the prod patch reached it
    # the patch merged into the container, it did not replace it
    assert runner["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_cronjobs_come_from_the_schedule_metadata(rendered):
    ids = by_id(rendered["dev"])
    cron = ids["CronJob/stackbook-dev/runbook-load-jaffle-shop"]
    assert cron["spec"]["schedule"] == "0 6 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 900
    runner = job["template"]["spec"]["containers"][0]
    assert "command" not in runner  # the image's entrypoint: tini -- stackbook
    assert runner["args"] == ["run", "load_jaffle_shop", "-e", "$(STACKBOOK_ENV)"]
    env = {e["name"]: e for e in runner["env"]}
    assert env["JAFFLE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "stackbook-secrets", "key": "JAFFLE_API_KEY"}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "stackbook-database"
    assert ids["CronJob/stackbook-dev/runbook-dr-drill"]["spec"]["schedule"] == "@weekly"


def test_the_real_catalogue_gives_one_cronjob_per_scheduled_runbook():
    from stackbook.core import catalog

    scheduled = {rb.name for rb in catalog.all_runbooks() if rb.metadata.get("schedule")}
    manifests = render.render("dev")
    crons = {m["metadata"]["labels"][render.RUNBOOK_LABEL] for m in manifests if m["kind"] == "CronJob"}
    assert crons == scheduled
    assert validate.validate_manifests(manifests) == []
    assert [f for f in k8s_rules.check_all(manifests) if f.status != "pass"] == []


def test_invalid_schedule_is_refused():
    with pytest.raises(ManifestError, match=r"runbook broken: schedule 'every day'"):
        render.render("dev", [runbook("broken", schedule="every day")])


def test_long_runbook_names_make_valid_cronjob_names():
    name = render.cronjob_name("a_very_long_runbook_name_that_goes_on_and_on_and_on_forever")
    assert len(name) <= render.CRONJOB_NAME_MAX and name.startswith("runbook-a-very-long")
    assert name == render.cronjob_name("a_very_long_runbook_name_that_goes_on_and_on_and_on_forever")


def test_secrets_are_referenced_never_inlined(rendered):
    for manifests in rendered.values():
        assert not [m for m in manifests if m["kind"] == "Secret"]
        assert {"stackbook-database", "stackbook-mlflow", "stackbook-jupyter", "stackbook-secrets"} <= \
            set(render.referenced_secrets(manifests))
        text = render.dump(manifests)
        assert "password" not in text.lower() and "postgresql://" not in text


def test_written_manifests_round_trip(tmp_path, rendered):
    folder = render.render_to_dir("prod", tmp_path / "out", SCHEDULED)
    (folder / "stale.yaml").write_text("kind: Stale\n")
    render.render_to_dir("prod", folder, SCHEDULED)
    assert not (folder / "stale.yaml").exists()
    assert k8s_rules.load_manifests(folder) == rendered["prod"]
    assert sorted(p.name for p in folder.glob("*.yaml"))[0] == "00-namespace-stackbook-prod.yaml"


def write_kustomization(folder: Path, kustomization: dict, files: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name, docs in files.items():
        (folder / name).write_text(yaml.safe_dump_all(docs))
    return folder


def deployment(name: str, image: str = "app:1.0") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": image,
                                                           "env": [{"name": "A", "value": "1"}]}]}}}}


def test_renderer_transformers(tmp_path):
    write_kustomization(tmp_path / "base", {"resources": ["app.yaml"], "commonLabels": {"team": "data"},
                                                   "images": [{"name": "app", "newName": "reg/app", "newTag": "2.0"}]},
                               {"app.yaml": [deployment("one"), deployment("two", "other:3"),
                                             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}]})
    overlay = write_kustomization(
        tmp_path / "overlay",
        {"resources": ["../base"], "namespace": "x", "replicas": [{"name": "two", "count": 3}],
         "images": [{"name": "reg/app", "newTag": "2.1"}],
         "patches": [{"path": "p.yaml"}, {"path": "all.yaml", "target": {"kind": "Deployment"}}]},
        {"p.yaml": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "one"},
                     "spec": {"template": {"spec": {"containers": [
                         {"name": "main", "env": [{"name": "B", "value": "2"}]}]}}}}],
         "all.yaml": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ignored"},
                       "spec": {"minReadySeconds": 5, "selector": {"matchLabels": {"app": None}}}}]})
    ms = by_id(render.build(overlay, runbooks=[]))
    one, two = ms["Deployment/x/one"], ms["Deployment/x/two"]
    assert "namespace" not in ms["Namespace/x"]["metadata"]  # cluster-scoped
    main = one["spec"]["template"]["spec"]["containers"][0]
    assert main["image"] == "reg/app:2.1"
    assert main["env"] == [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]  # kustomize order
    assert two["spec"]["template"]["spec"]["containers"][0]["image"] == "other:3"
    assert two["spec"]["replicas"] == 3 and one["spec"]["replicas"] == 1
    assert one["spec"]["minReadySeconds"] == 5 and two["spec"]["minReadySeconds"] == 5
    assert one["spec"]["selector"]["matchLabels"] == {"team": "data"}  # null removed `app`, labels added
    assert one["spec"]["template"]["metadata"]["labels"] == {"app": "one", "team": "data"}


KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl here: its embedded kustomize is the reference")


def kustomize(folder: Path) -> dict[str, dict]:
    """The reference: `kubectl kustomize` (kustomize v5 embedded in kubectl) on a folder."""
    proc = subprocess.run([KUBECTL, "kustomize", "--enable-alpha-plugins", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return by_id([d for d in yaml.safe_load_all(proc.stdout) if d])


@needs_kubectl
@pytest.mark.parametrize("env", ENVS)
def test_overlays_render_as_kustomize_renders_them(env):
    # kubectl's kustomize does not run exec generators (no --enable-exec), so compare without the CronJobs
    reference = kustomize(render.overlay_dir(env))
    ours = by_id(render.render(env, runbooks=[]))
    assert {k: v for k, v in reference.items() if not k.startswith("CronJob/")} == ours


@needs_kubectl
def test_renderer_matches_kustomize_on_every_transformer(tmp_path):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "app"}]}}}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": job["spec"]}}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"selector": {"app": "one"}, "ports": [{"port": 80}]}}
    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np"},
              "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"a": "b"}}},
                                                                {"namespaceSelector": {}}]}]}}
    base = write_kustomization(tmp_path / "base", {"resources": ["app.yaml"], "commonLabels": {"team": "data"},
                                                   "images": [{"name": "app", "newName": "reg/app", "newTag": "2.0"}]},
                               {"app.yaml": [deployment("one"), deployment("two", "other:3"), job, cron, svc, netpol,
                                             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}]})
    overlay = write_kustomization(
        tmp_path / "overlay",
        {"resources": ["../base"], "namespace": "x", "commonLabels": {"env": "qa"},
         "labels": [{"pairs": {"owner": "platform"}}, {"pairs": {"tier": "batch"}, "includeTemplates": True},
                    {"pairs": {"cost": "c1"}, "includeSelectors": True}],
         "replicas": [{"name": "two", "count": 3}], "images": [{"name": "reg/app", "newTag": "2.1"}],
         "patches": [{"path": "p.yaml"}, {"path": "all.yaml", "target": {"kind": "Deployment"}}]},
        {"p.yaml": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "one"},
                     "spec": {"template": {"spec": {"containers": [
                         {"name": "main", "env": [{"name": "B", "value": "2"}]},
                         {"name": "sidecar", "image": "app:9"}]}}}}],
         "all.yaml": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ignored"},
                       "spec": {"minReadySeconds": 5, "template": {"metadata": {"annotations": {"x": "y"}}}}}]})
    assert base.is_dir()
    ours, reference = by_id(render.build(overlay, runbooks=[])), kustomize(overlay)
    for rid in reference:
        assert (rid, ours.get(rid)) == (rid, reference[rid])
    assert ours.keys() == reference.keys()


def test_krm_exec_function_generates_the_cronjobs():
    """What real kustomize runs for the generator (infra/k8s/base/runbook-cronjobs.sh) gives what render gives."""
    from stackbook.k8s import krm

    config = render.load_yaml_documents(render.project.root() / "infra" / "k8s" / "base" / "runbook-cronjobs.yaml")[0]
    out = io.StringIO()
    assert krm.main(io.StringIO(yaml.safe_dump({"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList",
                                                "items": [], "functionConfig": config})), out) == 0
    items = yaml.safe_load(out.getvalue())["items"]
    from stackbook.core import catalog

    assert items == render.runbook_cronjobs(config, catalog.all_runbooks())


@pytest.mark.parametrize("kustomization, files, message", [
    ({"resources": ["a.yaml"], "nameSuffix": "-x"}, {"a.yaml": [deployment("a")]}, "unsupported field.*nameSuffix"),
    ({"resources": ["missing.yaml"]}, {}, "resource 'missing.yaml' does not exist"),
    ({"resources": ["a.yaml"], "patches": [{"path": "p.yaml"}]},
     {"a.yaml": [deployment("a")], "p.yaml": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                               "metadata": {"name": "typo"}}]}, "targets Deployment/typo"),
    ({"resources": ["a.yaml", "b.yaml"]}, {"a.yaml": [deployment("a")], "b.yaml": [deployment("a")]},
     "Deployment/a is defined twice"),
    ({"resources": ["s.yaml"]}, {"s.yaml": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                                             "stringData": {"url": "postgresql://u:p@h/db"}}]},
     "Secret/db inlines secret data"),
])
def test_renderer_refuses_bad_kustomizations(tmp_path, kustomization, files, message):
    folder = write_kustomization(tmp_path / "k", kustomization, files)
    with pytest.raises(ManifestError, match=message):
        render.build(folder, runbooks=[])


def test_unknown_environment_overlay_is_named():
    with pytest.raises(ManifestError, match=r"no Kubernetes overlay for environment 'qa'.*overlays: dev, prod, staging"):
        render.render("qa", [])


# ----------------------------------------------------------------------------- validate

def mlflow_deployment(rendered) -> dict:
    return copy.deepcopy(by_id(rendered["dev"])["Deployment/stackbook-dev/mlflow"])


def test_unknown_field_is_rejected_with_the_field_named(rendered):
    m = mlflow_deployment(rendered)
    m["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    problems = validate.validate_manifests([m])
    assert [(p.resource, p.field) for p in problems] == [
        ("Deployment/stackbook-dev/mlflow", "spec.template.spec.containers[0].imagePullPolicyy")]
    assert "unknown field 'imagePullPolicyy'" in problems[0].message
    with pytest.raises(ManifestError) as exc:
        validate.check([m])
    assert "Deployment/stackbook-dev/mlflow: spec.template.spec.containers[0].imagePullPolicyy: unknown field" \
        in str(exc.value)


def test_wrong_type_is_rejected_with_the_field_named(rendered):
    m = mlflow_deployment(rendered)
    m["spec"]["replicas"] = "two"
    m["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    problems = {p.field: p.message for p in validate.validate_manifests([m])}
    assert problems == {
        "spec.replicas": "wrong type: 'two' is not integer",
        "spec.template.spec.containers[0].ports[0].containerPort": "wrong type: 'http' is not integer",
    }


def test_unknown_kind_or_api_version_is_named():
    problems = validate.validate_manifests([{"apiVersion": "apps/v9", "kind": "Deployment", "metadata": {"name": "x"}}])
    assert len(problems) == 1 and problems[0].field == "apiVersion" and "apps/v9" in problems[0].message


def test_kubernetes_version_is_fixed_and_checked():
    assert validate.KUBERNETES_VERSION in {v.rsplit(".", 1)[0] for v in validate.supported_versions()}
    with pytest.raises(ManifestError, match="not covered by the installed kubernetes-validate"):
        validate.validate_manifests([deployment("a")], version="1.99")


# ----------------------------------------------------------------------------- audit rules

@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_fixture_is_caught_with_its_rule_id(path):
    rule_id = path.stem
    manifests = k8s_rules.load_manifests(path)
    assert validate.validate_manifests(manifests) == []  # bad for the audit, valid for Kubernetes
    findings = [f for f in k8s_rules.check_all(manifests) if f.id == rule_id]
    workloads = [resource_id(m) for m in manifests]
    assert sorted(f.resource for f in findings) == sorted(workloads)
    for f in findings:
        assert f.status == "fail", f
        assert f.evidence and f.severity == RULES[rule_id].severity and f.controls


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_fixture_passes_every_rule(path):
    manifests = k8s_rules.load_manifests(path)
    assert validate.validate_manifests(manifests) == []
    findings = k8s_rules.check_all(manifests)
    assert [f for f in findings if f.status != "pass"] == []


def test_every_kubernetes_rule_has_a_bad_fixture_and_complete_metadata():
    assert [p.stem for p in BAD] == K8S_RULES
    for rule_id in K8S_RULES:
        rule = RULES[rule_id]
        assert rule.title and rule.fix and rule.severity in ("medium", "high", "critical")
        assert any(c.startswith("SOC2 CC") for c in rule.controls)
        assert any(c.startswith("ISO27001 A.") for c in rule.controls)


def test_good_workloads_cover_every_kind_with_a_pod_template():
    kinds = {m["kind"] for p in GOOD for m in k8s_rules.load_manifests(p)}
    assert set(k8s_rules.WORKLOAD_KINDS) - {"PodTemplate"} <= kinds


@pytest.mark.parametrize("env", ENVS)
def test_rendered_manifests_pass_every_kubernetes_rule(env, rendered):
    findings = k8s_rules.check_all(rendered[env])
    workloads = [m for m in rendered[env] if m["kind"] in k8s_rules.WORKLOAD_KINDS]
    assert len(findings) == len(workloads) * len(K8S_RULES)
    assert [f for f in findings if f.status != "pass"] == []


def test_a_workload_without_pod_spec_is_an_error_finding():
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hollow"}, "spec": {}}
    findings = k8s_rules.check_all([broken])
    assert {f.status for f in findings} == {"error"}
    assert "no pod spec at spec.template.spec" in findings[0].evidence


def test_load_manifests_names_what_is_wrong(tmp_path):
    with pytest.raises(ManifestError, match="no such file or folder"):
        k8s_rules.load_manifests(tmp_path / "nothing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\n  metadata: [\n")
    with pytest.raises(ManifestError, match=r"bad.yaml is not valid YAML"):
        k8s_rules.load_manifests(tmp_path)


# ----------------------------------------------------------------------------- plan and apply

def test_no_context_gives_a_plan_and_says_why(rendered):
    for dry_run in (True, False):
        result = apply.run(rendered["dev"], environments.load("dev"), dry_run=dry_run)
        assert result.mode == "plan" and not result.applied and result.cluster == "none"
        assert "names no kube_context" in result.reason
        assert result.counts() == {"create": len(rendered["dev"])}
        assert "stackbook-dev/stackbook-database" in result.secrets_required
        assert "create     Namespace/stackbook-dev" in str(result)


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_dry_run_with_a_context_not_configured_here_is_a_plan(env, rendered, no_kubeconfig):
    result = apply.run(rendered[env], environments.load(env), dry_run=True)
    assert result.mode == "plan" and result.cluster == "not configured"
    assert f"context {env!r} is not configured here" in result.reason and "no kubeconfig" in result.reason
    assert result.counts() == {"create": len(rendered[env])}


def test_named_context_missing_from_kubeconfig_fails_clearly_when_applying(rendered, no_kubeconfig):
    with pytest.raises(KubernetesError) as exc:
        apply.run(rendered["prod"], environments.load("prod"), dry_run=False)
    message = str(exc.value)
    assert "kubeconfig context 'prod'" in message and "not configured here" in message
    assert "kubectl config set-context prod" in message and "infra/environments/prod.yml" in message


def test_named_context_not_among_the_kubeconfig_contexts(rendered, dead_kubeconfig):
    with pytest.raises(KubernetesError, match=r"context 'prod'.*not among the contexts of .*\(staging\)"):
        apply.run(rendered["prod"], environments.load("prod"), dry_run=False, kubeconfig=dead_kubeconfig)


def test_unreachable_context_fails_clearly_when_applying_and_plans_when_dry(rendered, dead_kubeconfig):
    env = environments.load("staging")
    with pytest.raises(KubernetesError, match=r"context 'staging' cannot be reached: the API server at "
                                           r"https://127.0.0.1:\d+ did not answer \(.*refused"):
        apply.run(rendered["staging"], env, dry_run=False, kubeconfig=dead_kubeconfig, timeout=3)
    result = apply.run(rendered["staging"], env, dry_run=True, kubeconfig=dead_kubeconfig, timeout=3)
    assert result.mode == "plan" and result.cluster == "unreachable" and "cannot be reached" in result.reason


def test_diff_reports_only_fields_we_own():
    desired = {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 2, "ports": [{"port": 80}]}}
    live = {"metadata": {"name": "a", "labels": {"x": "1"}, "uid": "u", "resourceVersion": "9"},
            "spec": {"replicas": 1, "ports": [{"port": 80, "protocol": "TCP"}]}, "status": {}}
    assert apply.diff(desired, live) == ["spec.replicas"]
    assert apply.diff(desired, copy.deepcopy(desired)) == []


def test_provision_cluster_apply_to_a_missing_context_fails_the_run(cli, tmp_path):
    result = cli("run", "provision_cluster", "-e", "staging", "-p", "dry_run=false", "-p",
                 f"output_dir={tmp_path / 'out'}", env={"KUBECONFIG": str(tmp_path / "absent")})
    assert result.code == 1, result
    assert "kubeconfig context 'staging'" in result.err and "not configured here" in result.err
    assert list((tmp_path / "out").glob("*.yaml"))  # rendered before it stopped


def test_provision_cluster_apply_in_prod_needs_approval(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "provision_cluster", "-e", "prod", "-p", "dry_run=false", "-p", f"output_dir={out}",
                 env={"KUBECONFIG": str(tmp_path / "absent")})
    assert result.code == 3, result
    assert "requires an approval" in result.err and "stackbook approve provision_cluster -e prod" in result.err
    assert not out.exists()  # refused before the kernel started: nothing rendered, nothing applied


def test_provision_cluster_dry_run_in_staging_plans_and_says_why(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "provision_cluster", "-e", "staging", "-p", f"output_dir={out}", "--json",
                 env={"KUBECONFIG": str(tmp_path / "absent")})
    assert result.code == 0, result
    record = result.json()
    results = record["results"]
    assert results["applied"] is False and results["cluster"] == "not configured"
    assert results["manifests_rendered"] == results["manifests_validated"] == results["resources_create"]
    assert results["k8s_checks_failed"] == 0 and results["k8s_checks_total"] > 0
    assert len(list(out.glob("*.yaml"))) == results["manifests_rendered"]
    executed = Path(record["output"]).read_text()
    assert "context 'staging' is not configured here" in executed


def test_summary_counts_findings_per_rule():
    manifests = k8s_rules.load_manifests(FIXTURES / "bad" / "K8S-009.yaml")
    rows = {r["id"]: r for r in k8s_rules.summary(k8s_rules.check_all(manifests))}
    assert list(rows) == K8S_RULES
    assert rows["K8S-009"]["fail"] == 2 and rows["K8S-009"]["pass"] == 0
    assert rows["K8S-001"] == {**rows["K8S-001"], "pass": 2, "fail": 0, "error": 0}


def test_written_files_sort_in_apply_order_past_a_hundred(tmp_path):
    manifests = [deployment(f"d{n}") for n in range(120)]
    paths = render.write(manifests, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == [p.name for p in paths]
    assert paths[0].name == "000-deployment-d0.yaml"
