"""Object storage: an ``s3://`` run store (and DR backups) against moto's S3 server.

moto's server mode is a real S3 HTTP API on a local port, started here for the
session (``moto_server``) and stopped at its end; a second one, started with
moto's IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT=0``), refuses every
request of unknown credentials, as AWS refuses a key it does not know. Every
CLI call goes the production way: papermill's S3 handler and boto3, the
endpoint from ``s3_endpoint`` in a scratch environment file, fake credentials
from the environment (never from the file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from stackbook.core import environments, project
from tests.conftest import nb, run_cli

MOTO = str(Path(sys.executable).parent / "moto_server")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stackbooktestkey", "AWS_SECRET_ACCESS_KEY": "stackbook-test-secret-key",
               "AWS_DEFAULT_REGION": "us-east-1"}
NO_ENDPOINT = {"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": "", "BOTO3_ENDPOINT_URL": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(extra_env: dict | None = None):
    port = _free_port()
    env = {**os.environ, **CREDENTIALS, **(extra_env or {})}
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server():
    proc, url = _start_moto()
    yield url
    _stop(proc)
    assert proc.poll() is not None


@pytest.fixture(scope="session")
def s3_refusing():
    """A moto server that checks credentials: ours are unknown to it (403 InvalidAccessKeyId)."""
    proc, url = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield url
    _stop(proc)


def s3_client(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def keys(url: str, bucket: str, prefix: str = "") -> list[str]:
    listed = s3_client(url).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


class S3Env:
    """A scratch environment file (dev's settings) whose run store is s3://BUCKET/runs at ENDPOINT."""

    def __init__(self, endpoint: str, bucket: str, **extra):
        self.name = f"t_s3_{uuid.uuid4().hex[:8]}"
        self.bucket, self.endpoint = bucket, endpoint
        self.path = project.environments_dir() / f"{self.name}.yml"
        dev = yaml.safe_load((project.environments_dir() / "dev.yml").read_text())
        data = {**dev, "run_store": f"s3://{bucket}/runs", "s3_endpoint": endpoint, **extra}
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))


def cli_env(**extra) -> dict:
    return {**CREDENTIALS, **NO_ENDPOINT, **extra}


@pytest.fixture()
def s3_env(s3_server, db):
    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    env = S3Env(s3_server, bucket)
    yield env
    env.path.unlink(missing_ok=True)
    db.execute("delete from stackbook.runs where env = %s", (env.name,))


@pytest.fixture()
def bad_env(db):
    made: list[S3Env] = []
    yield made
    for env in made:
        env.path.unlink(missing_ok=True)
        db.execute("delete from stackbook.runs where env = %s", (env.name,))


def test_run_writes_the_executed_notebook_to_the_bucket(s3_env, cli, db):
    res = cli("run", nb("typed"), "-e", s3_env.name, "-p", "name=bucket", "--json", env=cli_env())
    assert res.code == 0, res
    rec = res.json()
    assert rec["status"] == "succeeded" and rec["output"] == f"s3://{s3_env.bucket}/runs/{s3_env.name}/typed/{rec['id']}.ipynb"
    assert keys(s3_env.endpoint, s3_env.bucket) == [f"runs/{s3_env.name}/typed/{rec['id']}.ipynb"]  # no marker left
    body = s3_client(s3_env.endpoint).get_object(Bucket=s3_env.bucket, Key=rec["output"].split("/", 3)[3])["Body"]
    executed = json.loads(body.read())
    assert executed["metadata"]["stackbook"]["run"]["id"] == rec["id"]
    assert any("hello bucket" in "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "stackbook-test-secret-key" not in json.dumps(executed)
    shown = cli("runs", "show", rec["id"], env=cli_env())
    assert shown.code == 0 and rec["output"] in shown.out, shown
    # the evidence check re-hashes the notebook where it lives: in the bucket, at the file's endpoint
    verified = cli("verify", "-e", s3_env.name, "--json", env=cli_env())
    assert verified.code == 0, verified
    assert verified.json()["notebooks_checked"] == 1, verified
    s3_client(s3_env.endpoint).put_object(Bucket=s3_env.bucket, Key=rec["output"].split("/", 3)[3], Body=b"{}")
    tampered = cli("verify", "-e", s3_env.name, "--json", env=cli_env())
    assert tampered.code == 1 and rec["output"] in tampered.out and "changed" in tampered.out, tampered


def test_the_standard_endpoint_variable_works_too(s3_server, cli, db, bad_env):
    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    env = S3Env(s3_server, bucket)
    data = yaml.safe_load(env.path.read_text())
    data.pop("s3_endpoint")
    env.path.write_text(yaml.safe_dump(data))
    bad_env.append(env)
    res = cli("run", nb("typed"), "-e", env.name, "--json", env=cli_env(AWS_ENDPOINT_URL=s3_server))
    assert res.code == 0, res
    assert keys(s3_server, bucket) == [f"runs/{env.name}/typed/{res.json()['id']}.ipynb"]


def test_a_missing_bucket_is_exit_2_before_any_row(s3_server, cli, db, bad_env):
    env = S3Env(s3_server, f"sb-missing-{uuid.uuid4().hex[:8]}")
    bad_env.append(env)
    res = cli("run", nb("typed"), "-e", env.name, "--json", env=cli_env())
    assert res.code == 2, res
    assert env.bucket in res.err and s3_server in res.err and "does not exist" in res.err
    assert "aws s3 mb" in res.err and "Traceback" not in res.err
    assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0


def test_a_bucket_that_refuses_access_is_exit_2_before_any_row(s3_refusing, cli, db, bad_env):
    env = S3Env(s3_refusing, f"sb-{uuid.uuid4().hex[:10]}")
    bad_env.append(env)
    res = cli("run", nb("typed"), "-e", env.name, "--json", env=cli_env())
    assert res.code == 2, res
    assert env.bucket in res.err and s3_refusing in res.err and "refuses access" in res.err
    assert "s3:PutObject" in res.err and "stackbook-test-secret-key" not in res.err
    assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0


def test_an_endpoint_that_does_not_answer_is_exit_2(cli, db, bad_env):
    env = S3Env(f"http://127.0.0.1:{_free_port()}", "sb-nowhere")
    bad_env.append(env)
    res = cli("run", nb("typed"), "-e", env.name, "--json", env=cli_env())
    assert res.code == 2, res
    assert "cannot be reached" in res.err and "s3_endpoint" in res.err
    assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0


@pytest.mark.parametrize("value, message", [("ftp://host", "http(s) URL"),
                                            ("http://key:secret@127.0.0.1:9000", "must not carry credentials")])
def test_a_bad_endpoint_in_the_file_is_exit_2(value, message, s3_server, cli, db, bad_env):
    env = S3Env(value, "sb-any")
    bad_env.append(env)
    res = cli("run", nb("typed"), "-e", env.name, env=cli_env())
    assert res.code == 2 and message in res.err and "secret@" not in res.err, res
    assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0


def test_a_pipeline_runs_with_the_bucket_as_run_store(s3_env, cli, db, tmp_path):
    from tests.test_pipelines import FIX, make_pipeline

    spec = make_pipeline(tmp_path / "pipe", tasks=[
        {"source": str(FIX / "pipe_step.ipynb"), "name": "first", "product": "first.ipynb"},
        {"source": str(FIX / "pipe_step.ipynb"), "name": "second", "upstream": ["first"], "product": "second.ipynb",
         "params": {"label": "second"}},
    ])
    res = cli("pipeline", "run", str(spec), "-e", s3_env.name, "--json", env=cli_env())
    assert res.code == 0, res
    summary = res.json()
    assert {t["name"]: t["status"] for t in summary["tasks"]} == {"first": "succeeded", "second": "succeeded"}
    rows = db.execute("select id, output from stackbook.runs where pipeline_run_id = %s",
                      (summary["pipeline_run_id"],)).fetchall()
    stored = keys(s3_env.endpoint, s3_env.bucket)
    assert len(rows) == 2 and sorted(out.split("/", 3)[3] for _id, out in rows) == stored
    products = [p for p in (project.state_dir() / "pipelines").rglob("*.ipynb") if s3_env.name in p.parts]
    try:  # the products are the executed notebooks, read back from the bucket
        assert sorted(p.name for p in products) == ["first.ipynb", "second.ipynb"]
        ids = {json.loads(p.read_text())["metadata"]["stackbook"]["run"]["id"] for p in products}
        assert ids == {run_id for run_id, _out in rows}
    finally:
        for p in products:
            p.unlink()


def test_the_book_copies_the_notebooks_from_the_bucket(s3_env, cli, db, tmp_path):
    res = cli("run", nb("typed"), "-e", s3_env.name, "-p", "name=in-the-book", "--json", env=cli_env())
    assert res.code == 0, res
    run_id = res.json()["id"]
    built = run_cli("book", "-e", s3_env.name, "--runbook", nb("typed"), "--src", str(tmp_path / "src"),
                    "--out", str(tmp_path), "--json", env=cli_env())
    assert built.code == 0, built
    copy = tmp_path / "src" / "_runs" / s3_env.name / "typed" / f"{run_id}.ipynb"
    assert copy.is_file() and "in-the-book" in copy.read_text()
    html = tmp_path / "_build" / "html"
    downloads = [p for p in html.rglob(f"{run_id}.ipynb")]
    assert downloads, "the executed notebook is offered from the built book"
    pages = "".join(p.read_text(errors="replace") for p in html.rglob("*.html"))
    assert f"{run_id}.ipynb" in pages  # linked from its pages


def test_kubernetes_job_manifest_names_the_s3_store_and_endpoint(s3_env):
    import shutil

    from stackbook.k8s import backend
    from stackbook.k8s.validate import check
    from stackbook.run.engine import RunOptions

    overlay = project.root() / "infra" / "k8s" / "overlays" / s3_env.name
    shutil.copytree(project.root() / "infra" / "k8s" / "overlays" / "dev", overlay)
    try:
        store = backend._run_store(environments.load(s3_env.name))  # s3:// or exit 2, as `run --on kubernetes`
        job = backend.job_manifest("platform_check", RunOptions(env=s3_env.name), token="abc123", run_store=store)
    finally:
        shutil.rmtree(overlay)
    check([job])
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STACKBOOK_RUN_STORE"] == f"s3://{s3_env.bucket}/runs"
    assert env["AWS_ENDPOINT_URL_S3"] == s3_env.endpoint
    assert {"secretRef": {"name": backend.RUN_STORE_SECRET, "optional": True}} in container["envFrom"]
    assert not any("SECRET_ACCESS_KEY" in e["name"] for e in container["env"])  # credentials: the Secret only


@pytest.fixture()
def dr_source(database_url):
    from stackbook.dr import drill as dr
    from stackbook.run import db as sdb

    name = f"sbt_drs3_{uuid.uuid4().hex[:10]}"
    with sdb.connect("postgres") as conn:
        conn.execute(f'create database "{name}"')
    with sdb.connect(name) as conn:
        conn.execute("create table public.orders as select g id, g * 1.5 amount from generate_series(1, 2000) g")
    yield name
    with sdb.connect("postgres") as conn:
        for (db_name,) in conn.execute("select datname from pg_database where datname like %s",
                                       (f"{name}%",)).fetchall():
            conn.execute(f'drop database if exists "{db_name}" with (force)')
    for path in dr.backups_dir().glob(f"{name}-*"):
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def test_dr_drill_restores_from_the_bucket_and_verifies_the_copy(s3_server, dr_source, cli, db, bad_env,
                                                                   monkeypatch):
    from stackbook.dr import drill as dr

    primary, copy = f"sb-dr-{uuid.uuid4().hex[:8]}", f"sb-dr-copy-{uuid.uuid4().hex[:8]}"
    s3_client(s3_server).create_bucket(Bucket=primary)
    s3_client(s3_server).create_bucket(Bucket=copy, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    dr_settings = {"rto_target_s": 300, "rpo_target_s": 300, "backup_store": f"s3://{primary}/dr",
                   "backup_copy": f"s3://{copy}/dr", "backup_copy_region": "eu-west-1"}
    env = S3Env(s3_server, primary, dr=dr_settings)
    data = yaml.safe_load(env.path.read_text())
    data["run_store"] = None  # a local run store: the kernel gets the AWS credentials for the backups alone
    env.path.write_text(yaml.safe_dump(data))
    bad_env.append(env)
    res = cli("run", "dr_drill", "-e", env.name, "-p", f"database={dr_source}", "--json", env=cli_env())
    assert res.code == 0, res
    results = res.json()["results"]
    assert results["drill_passed"] and results["copy_verified"] is True
    assert results["backup_store"] == f"s3://{primary}/dr"
    assert 0 < results["download_seconds"] <= results["rto_seconds"]  # the RTO includes the download
    stored = keys(s3_server, primary)
    name = stored[0].split("/")[1]
    expected = [f"dr/{name}/{dr.DUMP_NAME}", f"dr/{name}/{dr.MANIFEST_NAME}"]
    assert stored == expected and keys(s3_server, copy) == expected
    assert not list(dr.backups_dir().glob("*.downloaded"))
    # a copy that differs from the backup is a problem of the drill
    for variable, value in cli_env().items():
        monkeypatch.setenv(variable, value)
    s3_client(s3_server).put_object(Bucket=copy, Key=expected[0], Body=b"not the dump")
    stores = dr.Stores.of(environments.load(env.name))
    problems = dr.verify_copy(dr.Backup.load(dr.backups_dir() / name), stores)
    assert len(problems) == 1 and "differs from the backup" in problems[0]


@pytest.mark.parametrize("dr_settings, message", [
    ({"backup_store": "/backups"}, "dr.backup_store must be an s3://bucket/prefix URL"),
    ({"backup_copy": "s3://copy/dr"}, "dr.backup_copy needs dr.backup_store"),
])
def test_a_bad_dr_backup_store_is_exit_2_before_any_row(dr_settings, message, bad_env, s3_server, cli, db):
    env = S3Env(s3_server, "sb-any", dr={"rto_target_s": 1, "rpo_target_s": 1, **dr_settings})
    bad_env.append(env)
    res = cli("run", "dr_drill", "-e", env.name, env=cli_env())
    assert res.code == 2 and message in res.err, res
    assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0
