"""Approvals bound to what they approve (``stackbook approve``, ``stackbook run --approval ID``), on real runs.

The ledger is a scratch database of this module (``Ledger`` of test_evidence: ``STACKBOOK_DATABASE`` for
the CLI processes), so its chain verifies and its counts are this module's alone. The environments are
files this module writes in infra/environments (``approval: {approvers: [alice, bob], two_person: true}``)
and removes. The runbook is a destructive fixture that writes its ``marker`` file when it applies: a
refused run must leave no marker, no ledger row and the approval unused.
"""

from __future__ import annotations

import json
import re
import secrets as pysecrets
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from stackbook.core import environments, project
from stackbook.core.errors import EnvironmentFileError, UsageError
from stackbook.run import approvals
from tests.conftest import ROOT
from tests.test_evidence import Ledger

DESTRUCTIVE = str(ROOT / "tests" / "fixtures" / "approvals" / "destructive.ipynb")
POLICY = "approval: {approvers: [alice, bob], two_person: true}\n"


@pytest.fixture(scope="module")
def ledger_db(database_url):
    scratch = Ledger(database_url)
    yield scratch
    scratch.close()


def _env_file(text: str) -> str:
    name = f"t_apr_{uuid.uuid4().hex[:8]}"
    (project.environments_dir() / f"{name}.yml").write_text(f"description: approvals test\n{text}")
    return name


@pytest.fixture(scope="module")
def prod_like():
    """Two environments with two-person approval (removed afterwards)."""
    names = [_env_file(POLICY), _env_file(POLICY)]
    yield names
    for name in names:
        (project.environments_dir() / f"{name}.yml").unlink(missing_ok=True)


class Case:
    """One approval and the run that tries to use it, in the scratch ledger."""

    def __init__(self, ledger_db: Ledger, env: str, tmp_path: Path, notebook: str = DESTRUCTIVE):
        self.db, self.env, self.notebook = ledger_db, env, notebook
        self.marker = tmp_path / "applied"

    def params(self, **extra: str) -> list[str]:
        values = {"dry_run": "false", "marker": str(self.marker), **extra}
        return [arg for k, v in values.items() for arg in ("-p", f"{k}={v}")]

    def approve(self, *args: str, env: str | None = None, code: int = 0, **params: str) -> dict:
        done = self.db.stackbook("approve", self.notebook, "-e", env or self.env, *self.params(**params), *args,
                                 "--json")
        assert done.returncode == code, done.stderr
        return json.loads(done.stdout)

    def run(self, *args: str, operator: str = "carol", env: dict | None = None, **params: str):
        return self.db.stackbook("run", self.notebook, "-e", self.env, *self.params(**params), *args, "--json",
                                 env={**self.db.env, "STACKBOOK_OPERATOR": operator, **(env or {})})

    def rows(self) -> int:
        return self.db.conn.execute("select count(*) from stackbook.runs where env = %s", (self.env,)).fetchone()[0]

    def refused(self, *args: str, operator: str = "carol", **params: str) -> str:
        """The run exits 3, nothing executed (no marker), no row; its error message."""
        before = self.rows()
        done = self.run(*args, operator=operator, **params)
        assert done.returncode == 3, done.stderr
        assert "nothing was executed" in done.stderr and json.loads(done.stdout)["kind"] == "ApprovalRefused"
        assert not self.marker.exists() and self.rows() == before
        return done.stderr


def _unused(ledger_db: Ledger, approval_id: str) -> bool:
    return ledger_db.conn.execute("select used_by is null from stackbook.approvals where id = %s",
                                  (approval_id,)).fetchone()[0]


def test_the_matching_approval_runs_once_and_both_are_in_the_chain(ledger_db, prod_like, tmp_path):
    case = Case(ledger_db, prod_like[0], tmp_path)
    given = case.approve("--by", "alice", "--reason", "CHG-1234")
    assert given["id"].startswith("apr-") and given["approved_by"] == "alice" and not given["approver_verified"]
    assert given["params"] == {"dry_run": False, "marker": str(case.marker), "target": "a"}
    done = case.run("--approval", given["id"])
    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout)
    assert (rec["approval_id"], rec["approved_by"], rec["operator"]) == (given["id"], "alice", "carol")
    assert case.marker.read_text() == "a" and rec["params_sha256"] == given["params_sha256"]
    kinds = dict(ledger_db.conn.execute("select ref, kind from stackbook.chain").fetchall())
    assert kinds[given["id"]] == "approval" and kinds[rec["id"]] == "run"
    entry = ledger_db.conn.execute("select entry from stackbook.chain where ref = %s", (rec["id"],)).fetchone()[0]
    assert entry["approval_id"] == given["id"] and entry["approved_by"] == "alice"
    case.marker.unlink()
    assert f"already used by run {rec['id']}" in case.refused("--approval", given["id"])
    assert ledger_db.verify().returncode == 0, ledger_db.verify().stderr


def test_each_mismatch_is_refused_and_named(ledger_db, prod_like, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    case = Case(ledger_db, prod_like[0], tmp_path)
    short = case.approve("--by", "bob", "--expires", "1s")  # first: it has expired by the time it is used
    with ThreadPoolExecutor(3) as pool:
        other, elsewhere, own = pool.map(lambda kw: case.approve("--by", "alice", **kw),
                                         [{"target": "a"}, {"env": prod_like[1]}, {}])
    time.sleep(max(0.0, 1.2 - (time.time() - datetime.fromisoformat(short["created_at"]).timestamp())))
    tries = {  # what each run is refused for (they touch nothing, so they run side by side)
        "none": ((), {}, ["stackbook approve ", "one of alice, bob"]),
        "unknown": (("--approval", "apr-nope"), {}, ["no approval 'apr-nope'"]),
        "params": (("--approval", other["id"]), {"target": "b"},
                   [f"approval {other['id']} does not approve this run", "differ in target ('a' approved, 'b' now)"]),
        "env": (("--approval", elsewhere["id"]), {}, [f"given for environment {prod_like[1]!r}, not {prod_like[0]!r}"]),
        "self": (("--approval", own["id"]), {"operator": "alice"}, ["given by 'alice', the operator of this run"]),
        "expired": (("--approval", short["id"]), {}, ["it expired at"]),
    }
    with ThreadPoolExecutor(len(tries)) as pool:
        errors = dict(zip(tries, pool.map(lambda t: case.refused(*t[0], **t[1]), tries.values())))
    for what, (_, _, said) in tries.items():
        assert all(s in errors[what] for s in said), (what, errors[what])
    assert all(_unused(ledger_db, a["id"]) for a in (other, elsewhere, own, short))


def test_changed_runbook_code_is_refused(ledger_db, prod_like, tmp_path):
    copy = tmp_path / "destructive.ipynb"
    shutil.copy(DESTRUCTIVE, copy)
    case = Case(ledger_db, prod_like[0], tmp_path, notebook=str(copy))
    given = case.approve("--by", "bob")
    nb = json.loads(copy.read_text())
    nb["cells"][0]["source"] = ["# Edited prose does not count"]
    copy.write_text(json.dumps(nb))
    still = case.run("--approval", given["id"], "-p", "target=a")  # markdown changed only: still approved
    assert still.returncode == 0, still.stderr
    again = case.approve("--by", "bob")
    nb["cells"][2]["source"] = ["print('something else')"]
    copy.write_text(json.dumps(nb))
    case.marker.unlink()
    assert "given for other code: runbook 'destructive' changed since" in case.refused("--approval", again["id"])


def test_an_approver_not_listed_is_refused_when_approving_and_when_running(ledger_db, tmp_path):
    env = _env_file(POLICY)
    path = project.environments_dir() / f"{env}.yml"
    try:
        case = Case(ledger_db, env, tmp_path)
        before = ledger_db.conn.execute("select count(*) from stackbook.approvals").fetchone()[0]
        done = ledger_db.stackbook("approve", DESTRUCTIVE, "-e", env, *case.params(), "--by", "mallory")
        assert done.returncode == 3 and "'mallory' is not among the approvers" in done.stderr
        assert ledger_db.conn.execute("select count(*) from stackbook.approvals").fetchone()[0] == before
        given = case.approve("--by", "alice")
        path.write_text("description: approvals test\napproval: {approvers: [bob], two_person: true}\n")
        err = case.refused("--approval", given["id"])
        assert "given by 'alice', who is not among the approvers" in err and "environment file" in err
    finally:
        path.unlink(missing_ok=True)


def test_a_run_that_needs_no_approval_leaves_it_unused(ledger_db, prod_like, tmp_path):
    case = Case(ledger_db, prod_like[0], tmp_path)
    given = case.approve("--by", "alice")
    done = case.run("--approval", given["id"], dry_run="true")
    assert done.returncode == 0 and "needs no approval" in done.stderr and _unused(ledger_db, given["id"])
    assert json.loads(done.stdout)["approval_id"] is None and not case.marker.exists()
    for args in (["-e", prod_like[0], "-p", "dry_run=true", "--by", "alice"], ["--by", "alice", "-e", "dev"]):
        done = ledger_db.stackbook("approve", DESTRUCTIVE, *args)
        assert done.returncode == 2 and "needs no approval, so none was recorded" in done.stderr, done.stderr


def test_bad_approve_input_is_exit_2_and_records_nothing(ledger_db, prod_like):
    for args, said in ((["--expires", "4x", "--by", "alice"], "--expires '4x' is not a duration"),
                       (["--expires", "0h", "--by", "alice"], "is not a duration"),
                       ([], "give --by NAME")):
        done = ledger_db.stackbook("approve", DESTRUCTIVE, "-e", prod_like[0], "-p", "dry_run=false", *args)
        assert done.returncode == 2 and said in done.stderr and "nothing was recorded" in done.stderr
    password = psycopg.conninfo.conninfo_to_dict(ledger_db.admin_url).get("password")
    if password:  # a secret's value is never a parameter: an approval's parameters are recorded and shown
        done = ledger_db.stackbook("approve", DESTRUCTIVE, "-e", prod_like[0], "-p", "dry_run=false", "-p",
                                   f"target={password}", "--by", "alice")
        assert done.returncode == 2 and "holds the value of secret DATABASE_PASSWORD" in done.stderr
        assert password not in done.stderr
    assert approvals.parse_duration("1h30m").total_seconds() == 5400
    with pytest.raises(UsageError):
        approvals.parse_duration("-4h")


def test_verify_names_an_approval_edited_or_written_with_sql(ledger_db, prod_like, tmp_path):
    case = Case(ledger_db, prod_like[0], tmp_path)
    given = case.approve("--by", "alice")
    ledger_db.conn.execute("update stackbook.approvals set params = params || '{\"target\": \"all\"}'::jsonb, "
                           "params_sha256 = 'x' where id = %s", (given["id"],))
    ledger_db.conn.execute("insert into stackbook.approvals (id, runbook, env, code_sha256, params_sha256, "
                           "approved_by) values ('apr-forged', 'destructive', %s, 'c', 'p', 'alice')", (prod_like[0],))
    try:
        doc = json.loads(ledger_db.verify("--json").stdout)
        said = [p["problem"] for p in doc["problems"]]
        assert not doc["ok"]
        assert any(p.startswith(f"approval {given['id']}: field params edited") for p in said), said
        assert f"approval {given['id']}: field params_sha256 edited" in " ".join(said)
        assert "approval apr-forged is not in the chain" in " ".join(said)
    finally:
        ledger_db.conn.execute("delete from stackbook.approvals where id in (%s, 'apr-forged')", (given["id"],))


def test_under_identity_database_the_approver_is_the_session_role(ledger_db, tmp_path):
    ledger_db.run()  # the schema, created by the owner
    role, password = f"apr_{uuid.uuid4().hex[:8]}", pysecrets.token_hex(16)
    env = _env_file(f"identity: database\napproval: {{approvers: [{role}], two_person: true}}\n")
    conn = ledger_db.conn
    conn.execute(f"create role \"{role}\" login password '{password}'")
    try:
        conn.execute(f'grant usage on schema stackbook to "{role}"')
        conn.execute(f'grant select, insert, update on stackbook.runs, stackbook.approvals to "{role}"')
        conn.execute(f'grant select, insert on stackbook.chain to "{role}"')
        info = psycopg.conninfo.conninfo_to_dict(ledger_db.url)
        as_role = {**ledger_db.env, "STACKBOOK_OPERATOR": "someone-else",
                   "DATABASE_URL": f"postgresql://{role}:{password}@{info['host']}:{info['port']}/{ledger_db.name}"}
        case = Case(ledger_db, env, tmp_path)
        args = ("approve", DESTRUCTIVE, "-e", env, *case.params(), "--json")
        lied = ledger_db.stackbook(*args, "--by", "alice", env=as_role)
        assert lied.returncode == 2 and f"the approver is the database role of this session, {role!r}" in lied.stderr
        done = ledger_db.stackbook(*args, env=as_role)
        assert done.returncode == 0, done.stderr
        given = json.loads(done.stdout)
        assert (given["approved_by"], given["approver_verified"]) == (role, True)
        own = case.run("--approval", given["id"], env={"DATABASE_URL": as_role["DATABASE_URL"]})
        assert own.returncode == 3 and f"given by {role!r}, the operator of this run" in own.stderr
        ran = case.run("--approval", given["id"], operator=role)  # the owner's session: someone else, verified
        assert ran.returncode == 0, ran.stderr
        rec = json.loads(ran.stdout)
        assert rec["approved_by"] == role and rec["operator"] != role and rec["operator_verified"]
    finally:
        (project.environments_dir() / f"{env}.yml").unlink(missing_ok=True)
        conn.execute(f'drop owned by "{role}"')
        conn.execute(f'drop role "{role}"')


@pytest.mark.parametrize("block, said", [
    ("approval: [alice]", "approval must be a mapping"),
    ("approval: {approvers: [], two_person: true}", "approval.approvers must be a non-empty list"),
    ("approval: {approvers: [alice], two_person: maybe}", "approval.two_person must be true or false"),
    ("approval: {approver: [alice]}", "unknown key(s) approver"),
])
def test_a_malformed_approval_block_is_named(block, said):
    name = _env_file(block + "\n")
    try:
        with pytest.raises(EnvironmentFileError, match=re.escape(said)):
            environments.load(name)
    finally:
        (project.environments_dir() / f"{name}.yml").unlink(missing_ok=True)


def test_the_policy_of_each_shipped_environment():
    prod = environments.load("prod").approval
    assert prod.required and prod.two_person and prod.approvers
    assert not environments.load("dev").approval.required
    legacy = environments.Environment("x", None, {"require_approval": True}).approval
    assert legacy.required and not legacy.approvers and not legacy.two_person


def test_a_notification_names_the_approver_and_the_approval():
    from stackbook.notify import message
    from stackbook.notify.events import RunView

    run = RunView.of({"id": "r1", "runbook": "destructive", "env": "prod", "status": "failed", "host": "runner-1",
                      "approved_by": "alice", "approval_id": "apr-20261201T000000-abcdef"})
    assert message.operator(run).endswith("@runner-1 (approved by alice, approval apr-20261201T000000-abcdef)")


def test_a_kubernetes_job_is_checked_here_and_passes_the_approval_to_the_pod(database_url, monkeypatch):
    from dataclasses import replace

    from stackbook.core import catalog
    from stackbook.core.errors import ApprovalRefused
    from stackbook.k8s import backend
    from stackbook.k8s.render import pod_spec
    from stackbook.run import engine, ledger

    monkeypatch.setenv("STACKBOOK_OPERATOR", "carol")
    options = engine.RunOptions(env="prod", cli_params=["dry_run=false"])
    book, env = catalog.load("provision_cluster"), environments.load("prod")
    with ledger.session(reap_stale=False) as conn:
        given = approvals.record(conn, book, env, engine.effective_values(book, env, options), by="alice")
    job = backend.job_manifest("provision_cluster", replace(options, approval_id=given.id))
    args = pod_spec(job)["containers"][0]["args"]
    assert args[args.index("--approval") + 1] == given.id and "--approved-by" not in args
    other = replace(options, cli_params=["dry_run=false", "output_dir=/tmp/elsewhere"], approval_id=given.id)
    with pytest.raises(ApprovalRefused, match=r"differ in output_dir"):
        backend.job_manifest("provision_cluster", other)


def test_two_runs_racing_for_one_approval_run_once(ledger_db, prod_like, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    case = Case(ledger_db, prod_like[0], tmp_path)
    given = case.approve("--by", "bob")
    before = case.rows()
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: case.run("--approval", given["id"]), range(2)))
    codes = sorted(d.returncode for d in done)
    assert codes == [0, 3], [d.stderr for d in done]
    loser = next(d for d in done if d.returncode == 3)
    assert "already used by run" in loser.stderr and "nothing was executed" in loser.stderr
    assert case.rows() == before + 1
    used = ledger_db.conn.execute("select used_by from stackbook.approvals where id = %s", (given["id"],)).fetchone()
    assert used[0] == json.loads(next(d for d in done if d.returncode == 0).stdout)["id"]
