"""Secret canary: no form of a secret reaches any artifact (run store, ledger, logs)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from stackbook.core import project
from stackbook.run import scrub
from tests.test_cli import nb


def leaks(text: str, value: str) -> list[str]:
    return sorted(f for f in scrub.forms(value) if f in text)


def store_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def ledger_text(db, run_id: str) -> str:
    row = db.execute("select row_to_json(r)::text from stackbook.runs r where id = %s", (run_id,)).fetchone()
    return row[0]


def run_canary(cli, secret: str, extra_env: dict | None = None):
    env = {"CANARY_SECRET": secret, **(extra_env or {})}
    return cli("run", nb("leaks_secret"), "--log-output", "--json", env=env)


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


def test_secret_canary_is_nowhere(cli, db):
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    res = run_canary(cli, secret)
    assert res.code == 1, res  # the runbook raises on purpose
    rec = res.json()
    assert rec["status"] == "failed" and "[secret:CANARY_SECRET]" in rec["error"]["evalue"]
    assert leaks(res.out + res.err, secret) == []
    assert leaks(ledger_text(db, rec["id"]), secret) == []
    assert leaks(store_text(project.state_dir() / "runs"), secret) == []
    executed = Path(rec["output"]).read_text()
    assert "[secret:CANARY_SECRET]" in executed  # the output is there, scrubbed


@pytest.fixture()
def control_store(tmp_path):
    return tmp_path / "runs"


def test_control_run_without_scrubbing_is_found(cli, db, control_store):
    """Proves the search above can find a leak: with scrubbing off, every channel shows the secret."""
    secret = "canary/" + secrets.token_urlsafe(18) + "+@="
    res = run_canary(cli, secret, {"STACKBOOK_UNSAFE_NO_SCRUB": "1", "STACKBOOK_RUN_STORE": str(control_store)})
    rec = res.json()
    try:
        assert secret in store_text(control_store)
        assert leaks(store_text(control_store), secret)  # plain, base64 and URL forms
        assert len(leaks(store_text(control_store), secret)) >= 3
        assert leaks(ledger_text(db, rec["id"]), secret)
        assert leaks(res.err, secret)
    finally:
        db.execute("delete from stackbook.runs where id = %s", (rec["id"],))


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
