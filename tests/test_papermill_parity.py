"""What papermill runs, stackbook runs, with the same outcome (issue 11, section 1).

Plain notebooks from elsewhere (no parameters cell), ``sys.exit`` as papermill
counts it, ``--cwd``, a kernel in another language (bash) given its parameters
in bash, the failing cell's index as the executed notebook stores it, and
``int | None`` parameters. Real kernels, the real CLI, the test database.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackbook.core import catalog, notebooks, project
from stackbook.core.errors import NotebookError
from tests.conftest import ROOT, ledger_count, run_cli

FIX = ROOT / "tests" / "fixtures" / "papermill"


def fx(name: str) -> str:
    return str(FIX / f"{name}.ipynb")


def executed(rec: dict) -> dict:
    return json.loads(Path(rec["output"]).read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# ---------------------------------------------------------------- no parameters cell


def test_a_notebook_without_a_parameters_cell_runs_when_given_no_values(cli, db):
    res = cli("run", fx("plain"), "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["status"] == "succeeded" and rec["results"]["ran"] is True and rec["params"] == {}
    cells = executed(rec)["cells"]
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)  # nothing to inject
    assert [c["metadata"]["papermill"]["status"] for c in cells if c["cell_type"] == "code"] == ["completed"] * 2


@pytest.mark.parametrize("args", [["-p", "rows=1"], ["-f", "PARAMS_FILE"]])
def test_values_for_a_notebook_without_a_parameters_cell_exit_2_and_record_nothing(cli, db, tmp_path, args):
    values = tmp_path / "values.yml"
    values.write_text("rows: 1\n")
    args = [str(values) if a == "PARAMS_FILE" else a for a in args]
    before = ledger_count(db, "plain")
    res = cli("run", fx("plain"), *args)
    assert res.code == 2, res
    assert "plain.ipynb" in res.err and "no code cell tagged 'parameters'" in res.err
    assert ledger_count(db, "plain") == before


def test_a_runbook_under_runbooks_still_needs_exactly_one_parameters_cell():
    assert not catalog.is_runbook_path(Path(fx("plain")))
    assert catalog.is_runbook_path(project.runbooks_dir() / "ops" / "any.ipynb")
    with pytest.raises(NotebookError, match="no code cell tagged 'parameters'"):
        notebooks.load(fx("plain"), project.runbooks_dir())  # the contract's default: required
    assert all(rb.parameters_cell_index is not None for rb in catalog.all_runbooks())


# ---------------------------------------------------------------- SystemExit


@pytest.mark.parametrize("how", ["bare", "exit0", "raise"])
def test_a_clean_system_exit_ends_the_run_successfully_at_that_cell(cli, how):
    res = cli("run", fx("exits"), "-p", f"how={how}", "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["status"] == "succeeded" and rec["error"] is None
    assert rec["results"] == {"before": 1}  # the cell after the exit did not run
    cells = [c for c in executed(rec)["cells"] if c["cell_type"] == "code"]
    assert [c["metadata"]["papermill"]["status"] for c in cells] == ["completed"] * 4 + ["pending"]
    assert not any("papermill-error-cell-tag" in c["metadata"].get("tags", []) for c in executed(rec)["cells"])


def test_a_non_zero_system_exit_fails_the_run_at_that_cell(cli):
    res = cli("run", fx("exits"), "-p", "how=exit3", "--json")
    assert res.code == 1, res
    rec = res.json()
    assert rec["status"] == "failed" and rec["results"] == {"before": 1}
    assert rec["error"]["ename"] == "SystemExit" and rec["error"]["evalue"] == "3"
    index = rec["error"]["cell_index"]
    assert "sys.exit(3)" in source(executed(rec)["cells"][index])
    assert f"cell {index} exited with status 3" in rec["reason"]


# ---------------------------------------------------------------- --cwd


def test_cwd_sets_the_kernels_working_directory(cli, tmp_path):
    res = cli("run", fx("plain"), "--cwd", str(tmp_path), "--json")
    assert res.code == 0, res
    assert res.json()["results"]["cwd"] == str(tmp_path.resolve())


def test_a_notebook_given_by_path_runs_in_the_callers_directory(database_url, tmp_path):
    res = run_cli("run", fx("plain"), "--json", cwd=tmp_path, env={"STACKBOOK_PROJECT": str(ROOT)})
    assert res.code == 0, res
    assert res.json()["results"]["cwd"] == str(tmp_path.resolve())


def test_a_runbook_runs_in_the_project_root_unless_told_otherwise(tmp_path):
    from stackbook.run import engine

    runbook = catalog.load("platform_check")
    assert engine.working_directory(runbook, None) == str(project.root())
    assert engine.working_directory(runbook, str(tmp_path)) == str(tmp_path)


def test_a_cwd_that_is_no_directory_exits_2_and_records_nothing(cli, db, tmp_path):
    before = ledger_count(db, "plain")
    res = cli("run", fx("plain"), "--cwd", str(tmp_path / "missing"))
    assert res.code == 2 and "--cwd" in res.err and "does not exist" in res.err
    assert ledger_count(db, "plain") == before


# ---------------------------------------------------------------- a kernel in another language


def test_a_bash_kernel_gets_its_parameters_in_bash(cli):
    res = cli("run", fx("bash_params"), "-p", "rows=5", "-p", "name=two words", "--json")
    assert res.code == 0, res
    rec = res.json()
    assert rec["status"] == "succeeded"
    assert rec["params"] == {"rows": 5, "name": "two words"}  # -p values read as YAML: 5 an int, the rest text
    assert rec["results"] == {"rows": 5, "name": "two words"}  # what bash itself wrote to the results file
    cells = executed(rec)["cells"]
    [injected] = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert source(injected) == "# Parameters\nrows=5\nname='two words'\n"  # papermill's bash translator
    echo = next(c for c in cells if 'echo "rows=$rows' in source(c))
    assert "".join(o.get("text", "") for o in echo["outputs"]).strip() == "rows=5 name=two words"


def test_a_bash_notebooks_defaults_stay_as_written(cli):
    res = cli("run", fx("bash_params"), "--json")
    assert res.code == 0, res
    assert res.json()["results"] == {"rows": 10, "name": "nobody"}


def test_a_bash_parameter_name_that_is_no_variable_exits_2(cli, db):
    before = ledger_count(db, "bash_params")
    res = cli("run", fx("bash_params"), "-p", "x;rm -rf /=1")
    assert res.code == 2 and "is not a variable name" in res.err
    assert ledger_count(db, "bash_params") == before


# ---------------------------------------------------------------- the failing cell's index


def test_the_failing_cells_index_is_its_index_in_the_stored_notebook(cli):
    res = cli("run", fx("fails_late"), "--json")
    assert res.code == 1, res
    rec = res.json()
    index = rec["error"]["cell_index"]
    cells = executed(rec)["cells"]
    assert "raise RuntimeError" in source(cells[index])
    assert cells[index]["metadata"]["papermill"]["status"] == "failed"
    assert "papermill-error-cell" in source(cells[index - 1])  # the anchor right before it
    assert f"cell {index} raised RuntimeError" in rec["reason"]
    shown = cli("runs", "show", rec["id"])
    assert f"error: cell {index}: RuntimeError: late failure" in shown.out


# ---------------------------------------------------------------- int | None


@pytest.mark.parametrize(("args", "x", "y"), [
    ([], None, 3),
    (["-p", "x=5"], 5, 3),
    (["-p", "x=null", "-p", "y=None"], None, None),
    (["-p", "y=7"], None, 7),
])
def test_an_optional_int_takes_an_int_or_none(cli, args, x, y):
    res = cli("run", fx("optional"), *args, "--json")
    assert res.code == 0, res
    assert res.json()["results"] == {"x": x, "y": y}


def test_an_optional_int_refuses_text(cli, db, tmp_path):
    before = ledger_count(db, "optional")
    res = cli("run", fx("optional"), "-p", "x=ten")
    assert res.code == 2 and "parameter 'x' expects int or None" in res.err
    values = tmp_path / "v.yml"
    values.write_text("y: seven\n")
    res = cli("run", fx("optional"), "-f", str(values))
    assert res.code == 2 and "parameter 'y' expects int or None" in res.err
    assert ledger_count(db, "optional") == before


def test_cwd_with_a_kubernetes_run_exits_2(cli, db, tmp_path):
    before = ledger_count(db, "plain")
    res = cli("run", fx("plain"), "--cwd", str(tmp_path), "--on", "kubernetes")
    assert res.code == 2 and "leave out --cwd" in res.err
    assert ledger_count(db, "plain") == before


def test_a_language_papermill_cannot_translate_exits_2_before_anything_runs(tmp_path):
    """A kernel in a language papermill has no translator for: a clear error, from ``prepare``, before a kernel."""
    from stackbook.run import execution

    runbook = notebooks.load(fx("bash_params"), require_parameters=False)
    runbook.language, runbook.kernel = "cobol", "cobol"
    with pytest.raises(NotebookError, match="cannot pass parameters to kernel 'cobol'"):
        execution.parameters_source(runbook, {"rows": 1})
