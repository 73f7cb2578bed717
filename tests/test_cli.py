"""Every CLI command and exit code, against the real database and real kernels."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest

from tests.conftest import ROOT, STACKBOOK, ledger_count, nb, run_cli

RECORD_FIELDS = {"id", "runbook", "env", "status", "params", "results", "output", "started_at", "finished_at",
                 "duration_s", "error"}


def test_help_on_every_command(cli):
    top = cli("--help")
    assert top.code == 0
    for command in ("up", "down", "status", "list", "show", "run", "runs", "lab"):
        assert command in top.out
        res = cli(command, "--help")
        assert res.code == 0 and "Usage:" in res.out, res
    assert cli("runs", "show", "--help").code == 0


def test_status_json_and_second_up(cli, database_url):
    st = cli("status", "--json")
    assert st.code == 0 and st.json()["running"] is True and st.json()["database_url"] == database_url
    again = cli("up")
    assert again.code == 0 and "already running" in again.out


def test_list_and_show(cli):
    res = cli("list", "--json")
    assert res.code == 0
    items = {i["name"]: i for i in res.json()}
    assert items["platform_check"]["area"] == "ops"
    assert set(items["platform_check"]) >= {"name", "area", "title", "tags", "schedule", "destructive"}
    show = cli("show", "platform_check", "--json").json()
    assert {p["name"] for p in show["parameters"]} == {"min_runbooks", "max_db_latency_ms"}
    assert all(set(p) >= {"name", "type", "default", "help"} for p in show["parameters"])
    assert show["metadata"]["owner"] == "platform"
    human = cli("show", "platform_check")
    assert "min_runbooks" in human.out and "int" in human.out


def test_run_succeeds_with_typed_parameters_and_records(cli, db):
    res = cli("run", nb("typed"), "-p", "rows=5", "-p", "items=[1, 2]", "-p", "mode=slow", "-p", "flag=true",
              "--json")
    assert res.code == 0, res
    rec = res.json()
    assert set(rec) >= RECORD_FIELDS
    assert rec["status"] == "succeeded" and rec["error"] is None
    assert rec["params"]["rows"] == 5 and rec["params"]["items"] == [1, 2] and rec["params"]["flag"] is True
    assert rec["results"]["rows"] == 5 and rec["results"]["mode"] == "slow"
    executed = json.loads(Path(rec["output"]).read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "rows = 5" in "".join(injected[0]["source"])
    assert any("hello world" in "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    shown = cli("runs", "show", rec["id"], "--json").json()
    assert shown["id"] == rec["id"] and shown["results"] == rec["results"] and shown["git_commit"]
    listed = cli("runs", "--runbook", "typed", "--status", "succeeded", "--limit", "5", "--json").json()
    assert rec["id"] in [r["id"] for r in listed]
    assert "typed" in cli("runs", "--runbook", "typed").out


def test_run_record_json_is_the_documented_shape():
    """RunRecord.to_json(): every ledger column in table order, ISO times, the error without its traceback."""
    from datetime import datetime

    from stackbook.run.record import COLUMNS, RunRecord

    row = {**{c: None for c in COLUMNS}, "id": "r1", "runbook": "rb", "env": "dev", "status": "failed",
           "params": {"a": 1}, "results": {}, "attempt": 1, "started_at": datetime(2026, 1, 1, tzinfo=UTC),
           "error": {"cell_index": 2, "ename": "E", "evalue": "v", "traceback": "secret-free but long"}}
    rec = RunRecord.from_row(row)
    doc = rec.to_json()
    assert list(doc) == list(COLUMNS) and set(doc) >= RECORD_FIELDS
    assert doc["error"] == {"cell_index": 2, "ename": "E", "evalue": "v"}
    assert doc["started_at"] == "2026-01-01T00:00:00+00:00" and rec.error["traceback"]  # kept on the record
    assert RunRecord.from_row(doc).to_json() == doc
    assert rec.exit_code == 1 and rec.describe_failure().startswith("runbook 'rb' failed at cell 2: E: v (run r1")


def test_params_file_and_env_precedence(cli, tmp_path):
    pfile = tmp_path / "p.yaml"
    pfile.write_text("rows: 7\nname: from-file\n")
    rec = cli("run", nb("typed"), "-f", str(pfile), "-p", "name=from-cli", "--json").json()
    assert rec["params"]["rows"] == 7 and rec["params"]["name"] == "from-cli"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-p", "rowz=1"], "unknown parameter 'rowz'"),
        (["-p", "rows=ten"], "parameter 'rows' expects int, got 'ten'"),
        (["-p", "mode=medium"], "expects one of ['fast', 'slow']"),
        (["-e", "nowhere"], "unknown environment 'nowhere'"),
    ],
)
def test_bad_input_exits_2_and_runs_nothing(cli, db, args, needle):
    before = ledger_count(db, "typed")
    res = cli("run", nb("typed"), *args)
    assert res.code == 2, res
    assert needle in res.err
    assert ledger_count(db, "typed") == before  # no ledger row: nothing was executed


def test_malformed_notebooks_exit_2_naming_the_file(cli):
    res = cli("run", nb("no_parameters"), "-p", "x=2")  # without values it runs, as with papermill
    assert res.code == 2 and "no_parameters.ipynb" in res.err and "no code cell tagged 'parameters'" in res.err
    res = cli("run", nb("malformed"))
    assert res.code == 2 and "malformed.ipynb" in res.err and "malformed JSON" in res.err
    res = cli("run", "no_such_runbook")
    assert res.code == 2 and "no runbook named 'no_such_runbook'" in res.err and "did you mean" not in res.err
    res = cli("run", "platform_chek")
    assert res.code == 2 and "did you mean 'platform_check'?" in res.err


def test_json_error_document_on_stdout(cli):
    res = cli("run", nb("typed"), "-p", "rows=ten", "--json")
    assert res.code == 2
    doc = res.json()
    assert doc["exit_code"] == 2 and "rows" in doc["error"]


def test_missing_secret_exits_2_naming_it(cli):
    res = cli("run", nb("leaks_secret"), env={"CANARY_SECRET": ""})
    assert res.code == 2 and "missing secret CANARY_SECRET" in res.err


def test_failing_runbook_exits_1_with_cell_and_error(cli):
    res = cli("run", nb("fails"), "-p", "message=kaput", "--json")
    assert res.code == 1
    rec = res.json()
    assert rec["status"] == "failed"
    assert rec["error"]["ename"] == "ValueError" and rec["error"]["evalue"] == "kaput"
    assert rec["results"] == {"before": 1}
    executed = json.loads(Path(rec["output"]).read_text())
    # cell_index is the failing cell's index in the notebook as stored: after the banner (first) and the anchor
    failing = executed["cells"][rec["error"]["cell_index"]]
    assert "papermill-error-cell" in "".join(executed["cells"][rec["error"]["cell_index"] - 1]["source"])
    assert "raise ValueError" in "".join(failing["source"])
    assert "papermill-error-cell-tag" in executed["cells"][0]["metadata"]["tags"]
    assert executed["metadata"]["stackbook"]["run"]["status"] == "failed"


def test_runs_show_unknown_id_exits_2(cli):
    res = cli("runs", "show", "nope")
    assert res.code == 2 and "no run with id 'nope'" in res.err


def test_platform_check_runs(cli):
    res = cli("run", "platform_check", "--json")
    assert res.code == 0, res
    assert res.json()["results"]["runbooks"] >= 1


def test_log_output_streams_cell_output(cli):
    res = cli("run", nb("typed"), "--log-output")
    assert res.code == 0 and "hello world" in res.err


def test_lab_dry_run_loads_environment(cli):
    res = cli("lab", "--dry-run", "--no-browser")
    assert res.code == 0
    assert "jupyterlab" in res.out and "DATABASE_URL" in res.out and "STACKBOOK_RESULTS_FILE" in res.out


def test_unwritable_output_path_is_a_clear_error_not_a_traceback(tmp_path):
    """An --out under a regular file: exit 1 naming the path, no Python traceback, nothing written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    res = run_cli("schedule", "airflow", "--out", str(blocker / "dags"))
    assert res.code == 1, res
    assert "stackbook: error: Not a directory" in res.err and str(blocker / "dags") in res.err
    assert "Traceback" not in res.err
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["show", "platform_check"], ["runs", "--limit", "3"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(args, database_url):
    """`stackbook list | head -1`: the pipe closes before stackbook writes; exit 141 as a SIGPIPE'd writer, no error."""
    import subprocess

    proc = subprocess.Popen([STACKBOOK, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


@pytest.mark.parametrize("args", [["run", "platform_check"], ["runs"], ["pipeline", "run", "daily"], ["book"]])
def test_unreachable_database_is_exit_2_with_the_url_redacted(args):
    """A DATABASE_URL that does not answer: exit 2 before anything runs, the URL named without its password."""
    res = run_cli(*args, env={"DATABASE_URL": "postgresql://someone:hunter2-secret@127.0.0.1:9/nowhere"})
    assert res.code == 2, res
    assert "cannot connect to postgresql://someone:***@127.0.0.1:9/nowhere" in res.err and "DATABASE_URL" in res.err
    assert "hunter2-secret" not in res.err + res.out and "Traceback" not in res.err
