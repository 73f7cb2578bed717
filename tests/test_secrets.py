"""Secret canary: no form of a secret reaches any artifact or stream, and what a run's kernel sees and leaves.

The canary runbook (``tests/fixtures/foundation/leaks_secret.ipynb``) leaks its declared secret and an
undeclared ``AWS_SECRET_ACCESS_KEY`` every way it can; the search covers the ledger row, the runner's
stdout and stderr, the PostgreSQL server log, the run's own state folder (run store, scratch files, spool,
the failed run's kernel snapshot) and a book built from the run. A control run with scrubbing off proves the search finds a leak.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import uuid
from pathlib import Path

import pytest
import yaml

from stackbook.core import project
from stackbook.run import scrub
from tests.conftest import nb, run_cli

AWS = "AWS_SECRET_ACCESS_KEY"


def new_secret() -> str:
    return "canary/" + secrets.token_urlsafe(18) + "+@="


def search_forms(value: str) -> set[str]:
    """Every form the scrubber knows, and ``base64("user:" + value)`` at all three alignments (Basic auth)."""
    out = set(scrub.forms(value))
    for prefix in ("user:", "user:x", "user:xy"):  # 5, 6 and 7 bytes before the value: each alignment once
        encoded = base64.b64encode((prefix + value).encode()).decode()
        out |= {encoded, encoded.rstrip("=")}
    return out


def leaks(text: str, value: str) -> list[str]:
    return sorted(f for f in search_forms(value) if f in text)


def store_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in root.rglob("*") if p.is_file())


def ledger_text(db, run_id: str) -> str:
    row = db.execute("select row_to_json(r)::text from stackbook.runs r where id = %s", (run_id,)).fetchone()
    return row[0]


def server_log_text() -> str:
    """The project-local PostgreSQL's log (next to its data folder, and any ``log/`` folder inside it)."""
    status = json.loads(run_cli("status", "--json").out)
    if status.get("mode") != "local":
        return ""
    data = Path(status["data_dir"])
    files = [data.parent / "postgres.log", *sorted((data / "log").glob("*"))]
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in files if p.is_file())


def readable_by_others(*roots: Path) -> list[str]:
    return sorted(f"{p} {oct(p.stat().st_mode & 0o777)}" for root in roots for p in root.rglob("*")
                  if p.is_file() and p.stat().st_mode & 0o077)


class CanaryEnv:
    """A scratch environment file (dev's settings) whose ``kernel_env:`` passes AWS_SECRET_ACCESS_KEY."""

    def __init__(self, **extra):
        self.name = f"t_canary_{uuid.uuid4().hex[:8]}"
        self.path = project.environments_dir() / f"{self.name}.yml"
        dev = yaml.safe_load((project.environments_dir() / "dev.yml").read_text())
        self.path.write_text(yaml.safe_dump({**dev, "kernel_env": [AWS], **extra}, sort_keys=False))


@pytest.fixture()
def canary_env(db):
    env = CanaryEnv()
    yield env
    env.path.unlink(missing_ok=True)
    db.execute("delete from stackbook.runs where env = %s", (env.name,))


def run_canary(cli, secret: str, extra_env: dict | None = None, *args: str):
    env = {"CANARY_SECRET": secret, **(extra_env or {})}
    return cli("run", nb("leaks_secret"), "--log-output", "--json", *args, env=env)


def build_book(env_name: str, out: Path, state: Path) -> Path:
    """The book of the canary runbook in ENV_NAME, built by a process that never had the secrets."""
    clean = {k: v for k, v in os.environ.items() if k not in ("CANARY_SECRET", AWS)}
    res = run_cli("book", "-e", env_name, "--runbook", nb("leaks_secret"), "--src", str(out / "src"),
                  "--out", str(out), "--json", env={**clean, "STACKBOOK_STATE_DIR": str(state)})
    assert res.code == 0, res
    return out


def test_forms_cover_plain_base64_and_url_encoding():
    value = "p@ss/word+1="
    found = scrub.forms(value)
    assert {"p@ss/word+1=", "cEBzcy93b3JkKzE9", "p%40ss%2Fword%2B1%3D", "p%40ss/word%2B1%3D"} <= found


def test_scrubber_replaces_every_form_in_nested_structures():
    scrubber = scrub.Scrubber({"TOKEN": "hunter2-secret"})
    doc = {"a": ["x hunter2-secret y", {"aHVudGVyMi1zZWNyZXQ=": 1}], "b": 3}
    out = scrubber.obj(doc)
    assert "hunter2" not in json.dumps(out) and "aHVudGVyMi1zZWNyZXQ" not in json.dumps(out)
    assert out["a"][0] == "x [secret:TOKEN] y" and out["b"] == 3


def test_secret_canary_is_nowhere(cli, db, canary_env, tmp_path):
    """Print, os.write(1/2), a subprocess, logging, a warning, displays, a default argument, stackbook.record,
    an exception and a parameter: no form of the declared secret, nor of an undeclared credential the
    environment file lets through, is anywhere; the JSON document alone is on stdout; no file is others'."""
    secret, aws = new_secret(), "aws/" + secrets.token_urlsafe(24)
    state = tmp_path / "state"
    res = run_canary(cli, secret, {AWS: aws, "STACKBOOK_STATE_DIR": str(state)}, "-e", canary_env.name,
                     "-p", f"label={aws}")  # a credential that is no declared secret: run, stored scrubbed
    assert res.code == 1, res  # the runbook raises on purpose
    rec = res.json()  # stdout is the JSON document and nothing else
    assert rec["status"] == "failed" and "[secret:CANARY_SECRET]" in rec["error"]["evalue"]
    assert rec["results"]["aws_key_seen"] is True  # listed in kernel_env: the kernel had it, and printed it
    assert rec["params"]["label"] == f"[secret:{AWS}]"
    assert "fd1 [secret:CANARY_SECRET]" in res.err and "sub-err [secret:CANARY_SECRET]" in res.err
    assert "fd1" not in res.out and "sub-out" not in res.out
    book = build_book(canary_env.name, tmp_path / "book", state)
    snapshot = state / "snapshots" / rec["id"]  # the failed run's kernel state, kept for `stackbook resume`
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["left_out"]["secret"] == "holds the value of secret CANARY_SECRET"
    assert manifest["left_out"]["aws_key"] == manifest["left_out"]["label"] == f"holds the value of secret {AWS}"
    assert "raise_error" in manifest["saved"]
    places = {"stdout and stderr": res.out + res.err, "ledger": ledger_text(db, rec["id"]),
              "server log": server_log_text(), "state folder (run store, tmp, spool)": store_text(state),
              "kernel snapshot": store_text(snapshot), "book": store_text(book)}
    for value in (secret, aws):
        found = {where: leaks(text, value) for where, text in places.items() if leaks(text, value)}
        assert found == {}, found
    executed = Path(rec["output"]).read_text()
    assert "[secret:CANARY_SECRET]" in executed and f"[secret:{AWS}]" in executed  # the output is there, scrubbed
    assert Path(rec["output"]).is_relative_to(state)
    assert readable_by_others(state) == []


def test_control_run_without_scrubbing_is_found(cli, db, canary_env, tmp_path):
    """Proves the search above can find a leak: with scrubbing off, every channel shows the secrets."""
    secret, aws = new_secret(), "aws/" + secrets.token_urlsafe(24)
    state = tmp_path / "state"
    res = run_canary(cli, secret, {AWS: aws, "STACKBOOK_STATE_DIR": str(state), "STACKBOOK_UNSAFE_NO_SCRUB": "1"},
                     "-e", canary_env.name)
    rec = res.json()
    stored = store_text(state)
    assert secret in stored and len(leaks(stored, secret)) >= 3  # plain, base64, URL-encoded, hex ...
    assert aws in stored  # printed from the kernel's environment (kernel_env lets it through)
    assert secret in store_text(state / "snapshots" / rec["id"])  # unscrubbed, the kernel snapshot keeps it
    for value in (secret, aws):
        assert leaks(res.err, value)  # the kernel's own output, pumped to stderr unscrubbed
    assert leaks(ledger_text(db, rec["id"]), secret)
    basic = base64.b64encode(f"user:{secret}".encode()).decode()
    assert basic in stored  # the Basic-auth form the fixture prints


def test_an_undeclared_credential_never_reaches_the_kernel(cli, db):
    """Not declared, not in kernel_env: the kernel does not have it, though the runner's environment does;
    without --json and --log-output the kernel's own output still reaches stderr only, scrubbed."""
    secret, aws = new_secret(), "aws/" + secrets.token_urlsafe(24)
    res = cli("run", nb("leaks_secret"), "-p", "raise_error=false",
              env={"CANARY_SECRET": secret, AWS: aws, "GITHUB_TOKEN": "ghp_" + secrets.token_hex(12)})
    assert res.code == 0, res
    assert "aws_key_seen: false" in res.out
    assert "fd2 [secret:CANARY_SECRET] None" in res.err and "sub-aws None" in res.err and "fd1" not in res.out
    assert leaks(res.out + res.err, secret) == [] and leaks(res.out + res.err, aws) == []


@pytest.mark.parametrize("form", ["plain", "inside", "base64", "url", "decoded", "database_password"])
def test_a_secret_passed_as_a_parameter_is_refused_naming_both_never_the_value(cli, db, database_url, canary_env,
                                                                              form):
    import urllib.parse

    secret = new_secret()
    env = {"CANARY_SECRET": secret}
    value = {"plain": secret, "inside": f"Bearer {secret}!", "base64": base64.b64encode(secret.encode()).decode(),
             "url": urllib.parse.quote(secret, safe="")}.get(form)
    if form == "decoded":  # the secret is stored encoded; the parameter is what it decodes to
        value, env["CANARY_SECRET"] = secret, urllib.parse.quote(secret, safe="")
    if form == "database_password":
        value = database_url
    res = cli("run", nb("leaks_secret"), "-e", canary_env.name, "-p", f"label={value}", "--json", env=env)
    assert res.code == 2, res
    named = "DATABASE_PASSWORD" if form == "database_password" else "CANARY_SECRET"
    assert "parameter 'label'" in res.err and named in res.err and "nothing was executed" in res.err
    assert value not in res.out + res.err and leaks(res.out + res.err, env["CANARY_SECRET"]) == []
    rows = db.execute("select count(*) from stackbook.runs where env = %s", (canary_env.name,)).fetchone()[0]
    assert rows == 0  # refused before anything was recorded or executed


@pytest.mark.parametrize("kernel_env", ["AWS_PROFILE", [f"{AWS}=do-not-show-me"], [3]],
                         ids=["not a list", "name=value", "not a name"])
def test_a_bad_kernel_env_is_a_clear_error_and_nothing_runs(cli, db, kernel_env):
    env = CanaryEnv(kernel_env=kernel_env)
    try:
        res = cli("run", nb("leaks_secret"), "-e", env.name, env={"CANARY_SECRET": new_secret()})
        assert res.code == 2, res
        assert str(env.path) in res.err and "kernel_env" in res.err and "do-not-show-me" not in res.err
        assert db.execute("select count(*) from stackbook.runs where env = %s", (env.name,)).fetchone()[0] == 0
    finally:
        env.path.unlink(missing_ok=True)


def test_the_kernel_environment_is_an_allowlist_less_credentials():
    from stackbook.run import kernel

    for name in (AWS, "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "PGPASSWORD", "DB_PASSWD",
                 "OPENAI_API_KEY", "STRIPE_APIKEY", "SSH_PRIVATE_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
                 "MLFLOW_TRACKING_PASSWORD", "DBT_ENV_SECRET_PASSWORD", "JUPYTER_TOKEN", "SSH_AUTH_SOCK",
                 "DB_PWD", "SESSION_COOKIE", "STACKBOOK_LOADER_PASSWORD"):
        assert kernel.looks_like_credential(name), name
    for name in ("PWD", "OLDPWD", "PATH", "TOKENIZERS_PARALLELISM", "KEYTIMEOUT", "GIT_AUTHOR_NAME", "PASSENV",
                 "JPY_SESSION_NAME", "MLFLOW_TRACKING_URI", "STACKBOOK_STATE_DIR"):
        assert not kernel.looks_like_credential(name), name
    environ = {"PATH": "/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/src", "STACKBOOK_HOME": "/s",
               "AWS_REGION": "eu-west-1", AWS: "x" * 40, "JUPYTER_TOKEN": "t" * 20, "RANDOM_APP_URL": "https://a",
               "AWS_PROFILE": "ops", "PWD": "/work"}
    passed = kernel._passed_through(environ, ["AWS_PROFILE"])
    assert set(passed) == {"PATH", "HOME", "LC_ALL", "PYTHONPATH", "STACKBOOK_HOME", "AWS_REGION", "AWS_PROFILE"}
    assert set(kernel._passed_through(environ, [AWS])) >= {AWS}  # listed in kernel_env: passed, scrubbed anyway
    values = kernel.credential_values({**environ, "SSH_AUTH_SOCK": "/", "API_KEY": "1"})
    assert values == {AWS: "x" * 40, "JUPYTER_TOKEN": "t" * 20}  # not a path, not too short


def test_a_process_the_run_left_in_a_session_of_its_own_is_ended(cli):
    started = time.monotonic()
    res = cli("run", nb("leaves_process"), "--json")
    assert res.code == 0, res
    assert time.monotonic() - started < 60
    pid = res.json()["results"]["pid"]
    assert f"left running (pid {pid})" in res.err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    assert not _running(pid), f"process {pid} outlived its run"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's parent, here init, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_dotenv_and_process_environment_precedence(tmp_path, monkeypatch):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / ".env").write_text("# comment\nA=from-dotenv\nB='quoted value'\nexport C=exported\n")
    (tmp_path / ".env.prod").write_text("A=from-prod-dotenv\n")
    monkeypatch.setenv("STACKBOOK_PROJECT", str(tmp_path))
    monkeypatch.delenv("A", raising=False)
    monkeypatch.delenv("B", raising=False)
    monkeypatch.setenv("C", "from-process")
    from stackbook.core import project
    from stackbook.core.errors import SecretError

    project.root.cache_clear()
    try:
        assert scrub.collect(["A", "B", "C"], "dev") == {"A": "from-dotenv", "B": "quoted value",
                                                               "C": "from-process"}
        assert scrub.collect(["A"], "prod") == {"A": "from-prod-dotenv"}
        with pytest.raises(SecretError) as err:
            scrub.collect(["A", "MISSING_ONE"], "dev", runbook="rb")
        assert "MISSING_ONE" in str(err.value) and "from-dotenv" not in str(err.value)
    finally:
        project.root.cache_clear()


def test_optional_secrets_are_passed_and_scrubbed_when_set_and_not_required(cli, tmp_path):
    import shutil

    src = json.loads((Path(nb("leaks_secret"))).read_text())
    src["metadata"]["stackbook"]["secrets"] = []
    src["metadata"]["stackbook"]["optional_secrets"] = ["CANARY_SECRET"]
    path = tmp_path / "optional_secret.ipynb"
    path.write_text(json.dumps(src))
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    res = cli("run", str(path), "--json", env={"CANARY_SECRET": secret})
    assert res.code == 1 and leaks(res.out + res.err, secret) == []
    assert leaks(Path(res.json()["output"]).read_text(), secret) == []
    unset = cli("run", str(path), "-p", "raise_error=false", env={"CANARY_SECRET": ""})
    assert unset.code == 0, unset  # not refused up front, unlike a missing required secret
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_base64_at_every_alignment_basic_auth_and_hex_are_scrubbed():
    import base64

    secret = "s3cr3t-" + secrets.token_urlsafe(12)
    scrubber = scrub.Scrubber({"API_TOKEN": secret})
    header = "Authorization: Basic " + base64.b64encode(f"user:{secret}".encode()).decode()
    out = scrubber.text(header)
    assert "[secret:API_TOKEN]" in out and leaks(out, secret) == []
    for prefix in ("ab:", "user:", "x", "", "üser:"):  # 3, 5, 1, 0 and 7 bytes: every alignment
        for suffix in ("", "!", "?&more"):
            raw = (prefix + secret + suffix).encode()
            for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
                assert "[secret:API_TOKEN]" in scrubber.text(f"token {encoded} end"), (prefix, suffix)
    for hexed in (secret.encode().hex(), secret.encode().hex().upper(), ("id=" + secret).encode().hex()):
        out = scrubber.text(f"dump {hexed} done")
        assert "[secret:API_TOKEN]" in out and secret.encode().hex() not in out.lower()


def test_scrubbing_leaves_ordinary_text_alone():
    scrubber = scrub.Scrubber({"API_TOKEN": "s3cr3t-" + secrets.token_urlsafe(12)})
    text = "SELECT count(*) FROM orders; 200 OK /work/main 0123456789abcdef " * 50
    assert scrubber.text(text) == text


def short_secret_notebook(tmp_path: Path, optional: bool) -> Path:
    import uuid

    src = json.loads(Path(nb("leaks_secret")).read_text())
    key = "optional_secrets" if optional else "secrets"
    src["metadata"]["stackbook"]["secrets"] = []
    src["metadata"]["stackbook"][key] = ["CANARY_SECRET"]
    path = tmp_path / f"short_secret_{uuid.uuid4().hex[:10]}.ipynb"
    path.write_text(json.dumps(src))
    return path


@pytest.mark.parametrize("optional", [False, True], ids=["required", "optional"])
def test_short_secret_is_refused_with_exit_2_and_no_ledger_row(cli, db, tmp_path, optional):
    from tests.conftest import ledger_count

    path = short_secret_notebook(tmp_path, optional)
    short = "q7z"  # shorter than MIN_SECRET_LENGTH
    res = cli("run", str(path), "-p", "raise_error=false", env={"CANARY_SECRET": short})
    assert res.code == 2, res
    assert "CANARY_SECRET" in res.err and f"shorter than {scrub.MIN_SECRET_LENGTH} characters" in res.err
    assert short not in res.err + res.out
    assert ledger_count(db, path.stem) == 0  # refused before anything was recorded or executed
