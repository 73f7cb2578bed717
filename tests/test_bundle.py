"""Evidence bundles (``stackbook evidence export / verify``) and the audit's evidence rule (OPS-005), on real runs.

Each test gets a scratch database of its own (``tests.test_evidence.Ledger``), so that tampering never reaches
another test's chain. The bundle is verified with no database at all: ``DATABASE_URL`` points at a closed port
and the project-local cluster's settings are not used.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from stackbook.audit import operations
from tests.test_evidence import TRIVIAL, Ledger
from tests.test_object_store import s3_server  # noqa: F401 (the session's moto S3 server, a fixture)

NO_DATABASE = {"DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:9/none", "STACKBOOK_DATABASE": "none"}


@pytest.fixture()
def ledger_db(database_url):
    scratch = Ledger(database_url)
    yield scratch
    scratch.close()


def add_approved_run(conn) -> str:
    """An approval, the destructive run that consumed it and an attestation of its manual step, each with its
    chain entry, written as stackbook writes them (rows first, the entry in the same transaction)."""
    from psycopg.rows import dict_row

    from stackbook.run import chain, evidence, ledger

    run_id = ledger.new_run_id()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        approval = cur.execute("""insert into stackbook.approvals (id, runbook, env, code_sha256, params,
                                  params_sha256, approved_by, reason) values ('ap-1', 'trivial', 'dev', 'c0de',
                                  '{"dry_run": false}', 'p4r4', 'bob', 'planned change') returning *""").fetchone()
        chain.append(conn, "approval", "ap-1", evidence.approval_entry(approval))
    with conn.transaction():
        conn.execute("""insert into stackbook.runs (id, runbook, env, status, host, params, results, started_at,
                        finished_at, operator, approval_id, approved_by)
                        values (%s, 'trivial', 'dev', 'succeeded', 'test', '{"dry_run": false}', '{}', now(), now(),
                                'alice', 'ap-1', 'bob')""", (run_id,))
        chain.append_run(conn, run_id)
    with conn.transaction():
        at = conn.execute("""insert into stackbook.attestations (id, run_id, cell_index, instruction, attested_by,
                             note) values ('at-1', %s, 3, 'swap the disk', 'carol', 'done') returning at""",
                          (run_id,)).fetchone()[0]
        chain.append(conn, "attestation", "at-1", {"kind": "attestation", "id": "at-1", "run_id": run_id,
                                                   "cell_index": 3, "instruction": "swap the disk",
                                                   "attested_by": "carol", "attester_verified": False,
                                                   "note": "done", "at": at.isoformat()})
    return run_id


def add_report_runs(conn, folder: Path) -> None:
    """A compliance audit run whose report is on disk (``report_path``) and a DR drill run with its figures."""
    from stackbook.run import chain, ledger

    report = folder / "audit.json"
    report.write_text('{"passed": true, "findings": []}\n')
    for runbook, results in (("compliance_audit", {"report_path": str(report)}),
                             ("dr_drill", {"rto_seconds": 12.5, "drill_passed": True})):
        run_id = ledger.new_run_id()
        with conn.transaction():
            conn.execute("""insert into stackbook.runs (id, runbook, env, status, host, params, results, started_at,
                            finished_at) values (%s, %s, 'dev', 'succeeded', 'test', '{}', %s, now(), now())""",
                         (run_id, runbook, json.dumps(results)))
            chain.append_run(conn, run_id)


@pytest.fixture(scope="module")
def module_db(database_url, tmp_path_factory):
    """One scratch ledger for the bundle tests: three real runs, an approved and attested one, an audit and a
    DR drill with their reports."""
    scratch = Ledger(database_url)
    runs = [scratch.run(x) for x in (1, 2, 3)]
    approved = add_approved_run(scratch.conn)
    add_report_runs(scratch.conn, tmp_path_factory.mktemp("reports"))
    yield scratch, runs, approved
    scratch.close()


@pytest.fixture()
def exported(module_db, tmp_path):
    """The module's ledger exported to a bundle of this test's own."""
    ledger_db, runs, approved = module_db
    path = tmp_path / "evidence.zip"
    done = ledger_db.stackbook("evidence", "export", "-e", "dev", "--out", str(path), "--json")
    assert done.returncode == 0, done.stderr
    return ledger_db, runs, path, json.loads(done.stdout)


def offline_verify(ledger_db, path: Path, *args: str):
    return ledger_db.stackbook("evidence", "verify", str(path), *args, env={**ledger_db.env, **NO_DATABASE})


def rewrite(path: Path, change) -> None:
    """The bundle with CHANGE(files) applied, written back (what someone editing the zip does)."""
    with zipfile.ZipFile(path) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    change(files)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_a_bundle_of_real_runs_verifies_offline(exported):
    ledger_db, runs, path, doc = exported
    head = ledger_db.conn.execute("select hash from stackbook.chain order by seq desc limit 1").fetchone()[0]
    assert doc["runs"] == 6 and doc["chain_head"] == {"seq": 8, "hash": head} and len(doc["bundle_sha256"]) == 64
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        approvals = [json.loads(line) for line in zf.read("ledger/approvals.jsonl").splitlines()]
        attestations = [json.loads(line) for line in zf.read("ledger/attestations.jsonl").splitlines()]
    assert {f"notebooks/dev/trivial/{r['id']}.ipynb" for r in runs} <= names
    assert {"ledger/runs.jsonl", "chain/segment.jsonl", "chain/head.json"} <= names
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert [a["approved_by"] for a in approvals] == ["bob"] and [a["note"] for a in attestations] == ["done"]
    assert len([n for n in names if n.endswith(".audit.json")]) == 1  # the audit's report, from report_path
    assert len([n for n in names if n.endswith(".dr.json")]) == 1
    done = offline_verify(ledger_db, path, "--head", head)
    assert done.returncode == 0, done.stderr
    assert f"holds: {len(names)} files, 6 run(s), 8 chain entries ending at entry 8 {head}" in done.stdout
    assert doc["bundle_sha256"] in done.stdout
    report = json.loads(offline_verify(ledger_db, path, "--json").stdout)
    assert report["ok"] and report["problems"] == [] and report["bundle_sha256"] == doc["bundle_sha256"]


def test_an_edited_byte_a_removed_file_and_an_added_file_are_each_named(exported):
    ledger_db, runs, path, _ = exported
    notebook = f"notebooks/dev/trivial/{runs[0]['id']}.ipynb"

    def tamper(files):
        data = bytearray(files[notebook])
        data[len(data) // 2] ^= 0x01
        files[notebook] = bytes(data)
        del files[f"notebooks/dev/trivial/{runs[1]['id']}.ipynb"]
        files["notebooks/dev/trivial/extra.ipynb"] = b"{}"

    rewrite(path, tamper)
    done = offline_verify(ledger_db, path)
    assert done.returncode == 1, done
    assert f"file {notebook} edited" in done.stderr
    assert f"file notebooks/dev/trivial/{runs[1]['id']}.ipynb removed" in done.stderr
    assert "file notebooks/dev/trivial/extra.ipynb added: it is not in the manifest" in done.stderr
    assert f"run {runs[0]['id']} (entry 1): executed notebook {notebook} has sha256" in done.stderr
    assert "does NOT hold" in done.stdout


def test_an_edited_chain_entry_and_a_row_that_differs_are_named(exported):
    ledger_db, runs, path, _ = exported

    def tamper(files):
        lines = [json.loads(line) for line in files["chain/segment.jsonl"].splitlines()]
        lines[1]["body"] = lines[1]["body"].replace('"status":"succeeded"', '"status":"failed"')
        files["chain/segment.jsonl"] = b"".join(json.dumps(x).encode() + b"\n" for x in lines)

    rewrite(path, tamper)
    done = offline_verify(ledger_db, path, "--json")
    assert done.returncode == 1
    problems = json.loads(done.stdout)["problems"]
    assert any(p.startswith("file chain/segment.jsonl edited") for p in problems), problems
    assert f"chain entry 2 (ref {runs[1]['id']}): its hash does not match its body: the entry was edited" in problems
    assert any(p.startswith(f"run {runs[1]['id']} (entry 2): field status differs: the ledger row says "
                            "'succeeded', the chain 'failed'") for p in problems), problems


def test_a_row_edited_before_export_is_named_and_a_foreign_head_is_not_in_the_segment(module_db, tmp_path):
    ledger_db, (run, *_), _ = module_db
    path = tmp_path / "b.zip"
    ledger_db.conn.execute("update stackbook.runs set status = 'failed' where id = %s", (run["id"],))
    try:
        assert ledger_db.stackbook("evidence", "export", "-e", "dev", "--out", str(path)).returncode == 0
    finally:
        ledger_db.conn.execute("update stackbook.runs set status = 'succeeded' where id = %s", (run["id"],))
    done = offline_verify(ledger_db, path, "--head", "a" * 64)
    assert done.returncode == 1
    assert f"run {run['id']} (entry 1): field status differs: the ledger row says 'failed', the chain " \
           "'succeeded'" in done.stderr
    assert f"the published head {'a' * 12}... is not in the bundle's chain segment" in done.stderr


def test_bad_input_exits_2_and_writes_nothing(module_db, tmp_path):
    ledger_db = module_db[0]
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"PK\x03\x04 this is not a zip")
    done = offline_verify(ledger_db, not_zip)
    assert done.returncode == 2 and "is not a readable zip file" in done.stderr and "Traceback" not in done.stderr
    out = tmp_path / "none.zip"
    nothing = ledger_db.stackbook("evidence", "export", "-e", "staging", "--out", str(out))
    assert nothing.returncode == 2 and "nothing was written" in nothing.stderr and not out.exists()
    unknown = ledger_db.stackbook("evidence", "export", "-e", "dev", "--control", "SOC2 CC99", "--out", str(out))
    assert unknown.returncode == 2 and "known: " in unknown.stderr and "SOC2 CC7.5" in unknown.stderr
    bad_date = ledger_db.stackbook("evidence", "export", "--since", "last week", "--out", str(out))
    assert bad_date.returncode == 2 and "is not a date" in bad_date.stderr and not out.exists()


def test_control_selects_the_mapped_runbooks_and_the_period_bounds_the_runs(module_db, tmp_path):
    ledger_db = module_db[0]
    mapping = operations.control_runbooks(operations.catalogue()[0])
    assert "dr_drill" in mapping["SOC2 CC7.5"] and "compliance_audit" in mapping["SOC2 CC7.5"]
    assert "provision_warehouse" in mapping["ISO27001 A.5.15"]  # from the runbook's controls: metadata
    out = tmp_path / "c.zip"
    mapped = ledger_db.stackbook("evidence", "export", "--control", "SOC2 CC7.5", "--out", str(out), "--json")
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["runs"] == 2  # the audit and the drill, not trivial
    with zipfile.ZipFile(out) as zf:
        lines = [json.loads(line) for line in zf.read("ledger/runs.jsonl").splitlines()]
        assert json.loads(zf.read("manifest.json"))["selection"]["control"] == "SOC2 CC7.5"
    assert sorted(line["row"]["runbook"] for line in lines) == ["compliance_audit", "dr_drill"]
    out.unlink()
    later = ledger_db.stackbook("evidence", "export", "--since", "2999-01-01", "--out", str(out))
    assert later.returncode == 2 and not out.exists()
    today = ledger_db.stackbook("evidence", "export", "--until", "2999-01-01", "--out", str(out), "--json")
    assert today.returncode == 0 and json.loads(today.stdout)["runs"] == 6


# ---------------------------------------------------------------- the audit rule (OPS-005)


DESTRUCTIVE = [{"name": "trivial", "schedule": None, "freshness_hours": None, "timeout": None,
                "destructive": True}]


def ops005(ledger_db, env: str) -> list:
    ctx = operations.context(env, ledger_db.conn, runbooks=DESTRUCTIVE)
    return operations.check_all(ctx, ["OPS-005"])


def finished_run(conn, env: str = "dev", params: str = "{}") -> str:
    """A finished run's row and its chain entry, as ``ledger.finish_run`` writes them (no kernel: fast)."""
    from stackbook.run import chain, ledger

    run_id = ledger.new_run_id()
    with conn.transaction():
        conn.execute("""insert into stackbook.runs (id, runbook, env, status, host, params, results, started_at,
                        finished_at, code_sha256, params_sha256) values (%s, 'trivial', %s, 'succeeded', 'test',
                        %s::jsonb, '{}', now(), now(), 'c0de', 'p4r4')""", (run_id, env, params))
        chain.append_run(conn, run_id)
    return run_id


def test_ops005_fails_on_a_broken_chain(ledger_db):
    from stackbook.run import ledger

    ledger.ensure_schema(ledger_db.conn)
    runs = [finished_run(ledger_db.conn) for _ in range(3)]
    [chain_ok, _] = ops005(ledger_db, "dev")
    assert chain_ok.status == "pass" and "chain intact: 3 entries" in chain_ok.evidence
    ledger_db.superuser_sql("delete from stackbook.chain where seq = 2")
    [broken, _] = ops005(ledger_db, "dev")
    assert broken.status == "fail" and broken.severity == "high"
    assert f"entry 3 (run {runs[2]}): entry 2 missing (deleted) between entry 1 and entry 3" in broken.evidence
    assert f"(run {runs[1]}): a finished run that is not in the chain" in broken.evidence


def test_ops005_fails_on_a_destructive_prod_run_without_a_matching_approval(ledger_db):
    from stackbook.run import ledger

    conn = ledger_db.conn
    ledger.ensure_schema(conn)
    finished_run(conn, "prod", '{"x": 1, "dry_run": true}')  # a dry run needs no approval
    run = finished_run(conn, "prod", '{"x": 1, "dry_run": false}')
    [chain_ok, unapproved] = ops005(ledger_db, "prod")
    assert chain_ok.status == "pass"
    assert unapproved.status == "fail" and unapproved.resource == f"run/{run}@prod"
    assert "it consumed no approval" in unapproved.evidence
    conn.execute("""insert into stackbook.approvals (id, runbook, env, code_sha256, params, params_sha256,
                    approved_by, reason) values ('ap1', 'trivial', 'prod', 'c0de', '{}', 'other', 'bob', 'test')""")
    conn.execute("update stackbook.runs set approval_id = 'ap1' where id = %s", (run,))
    [_, other] = ops005(ledger_db, "prod")
    assert other.status == "fail" and "its approval ap1 is for another parameters sha256" in other.evidence
    conn.execute("update stackbook.approvals set params_sha256 = 'p4r4'")
    [_, matching] = ops005(ledger_db, "prod")
    assert matching.status == "pass" and "1 destructive run(s)" in matching.evidence


def test_the_books_chain_state_sees_an_edit_after_a_cached_walk(ledger_db):
    from datetime import UTC, datetime

    from stackbook.book import evidence as book_evidence
    from stackbook.run import ledger

    ledger.ensure_schema(ledger_db.conn)
    runs = [finished_run(ledger_db.conn) for _ in range(3)]
    now = datetime.now(UTC)
    first = book_evidence.read_chain(ledger_db.conn, "dev", now)
    assert first.ok and first.entries == 3 and first.runs_checked == 3
    assert book_evidence.read_chain(ledger_db.conn, "dev", now) == first  # the cached walk, nothing changed
    ledger_db.superuser_sql("update stackbook.chain set body = replace(body, 'succeeded', 'failed') where seq = 2")
    broken = book_evidence.read_chain(ledger_db.conn, "dev", now)
    assert not broken.ok and any(f"entry 2 (run {runs[1]}): its hash does not match" in p for p in broken.problems)


def test_a_real_approved_run_in_a_two_person_environment_is_bundled_and_passes_ops005(ledger_db, tmp_path):
    """With `stackbook approve` and `run --approval` (the approvals issue): the bundle holds the approval, its chain
    entry matches offline, and the audit's OPS-005 finds the run's approval matching."""
    import uuid

    from stackbook.core import project

    env = f"t_bundle_{uuid.uuid4().hex[:8]}"
    env_file = project.environments_dir() / f"{env}.yml"
    env_file.write_text("description: bundle test\napproval: {approvers: [alice, bob], two_person: true}\n")
    destructive = str(Path(__file__).parent / "fixtures" / "approvals" / "destructive.ipynb")
    params = ["-p", "dry_run=false", "-p", f"marker={tmp_path / 'applied'}"]
    try:
        approved = ledger_db.stackbook("approve", destructive, "-e", env, *params, "--by", "alice", "--reason",
                                       "CHG-1", "--json")
        assert approved.returncode == 0, approved.stderr
        approval = json.loads(approved.stdout)["id"]
        run = ledger_db.stackbook("run", destructive, "-e", env, *params, "--approval", approval, "--json",
                                  env={**ledger_db.env, "STACKBOOK_OPERATOR": "carol"})
        assert run.returncode == 0, run.stderr
        path = tmp_path / "approved.zip"
        assert ledger_db.stackbook("evidence", "export", "-e", env, "--out", str(path)).returncode == 0
        with zipfile.ZipFile(path) as zf:
            [line] = [json.loads(x) for x in zf.read("ledger/approvals.jsonl").splitlines()]
        assert line["id"] == approval and line["approved_by"] == "alice" and line["reason"] == "CHG-1"
        done = offline_verify(ledger_db, path)
        assert done.returncode == 0, done.stderr
        rb = [{"name": "destructive", "schedule": None, "freshness_hours": None, "timeout": None, "destructive": True}]
        [chain_ok, matching] = operations.check_all(operations.context(env, ledger_db.conn, runbooks=rb), ["OPS-005"])
        assert chain_ok.status == "pass" and matching.status == "pass", (chain_ok, matching)
        assert "1 destructive run(s)" in matching.evidence
    finally:
        env_file.unlink(missing_ok=True)


def test_a_bundle_of_a_run_in_an_s3_run_store_holds_the_object_as_stored(ledger_db, tmp_path, s3_server):  # noqa: F811
    import uuid

    from tests.test_object_store import S3Env, cli_env, s3_client

    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    env = S3Env(s3_server, bucket)
    try:
        done = ledger_db.stackbook("run", TRIVIAL, "-e", env.name, "-p", "x=4", "--json",
                                   env={**ledger_db.env, **cli_env()})
        assert done.returncode == 0, done.stderr
        run = json.loads(done.stdout)
        assert run["output"].startswith(f"s3://{bucket}/")
        path = tmp_path / "s3.zip"
        exported = ledger_db.stackbook("evidence", "export", "-e", env.name, "--out", str(path),
                                       env={**ledger_db.env, **cli_env()})
        assert exported.returncode == 0, exported.stderr
        stored = s3_client(s3_server).get_object(Bucket=bucket, Key=run["output"].split("/", 3)[3])["Body"].read()
        with zipfile.ZipFile(path) as zf:
            assert zf.read(f"notebooks/{env.name}/trivial/{run['id']}.ipynb") == stored
        assert offline_verify(ledger_db, path).returncode == 0
    finally:
        env.path.unlink(missing_ok=True)
