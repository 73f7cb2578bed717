"""Bad input is one clear line, exit 2, and no ledger row (issue 10, section 3).

Each test runs the real ``stackbook`` command on a small project of its own (a
runbook with a unique name, in ``tmp_path``) that shares this checkout's
database, and counts that runbook's ledger rows before and after.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from stackbook.core import project as project_mod
from tests.conftest import ROOT, CLIResult, run_cli
from tests.test_cli import ledger_count

FIX = ROOT / "tests" / "fixtures" / "foundation"


@dataclass
class Project:
    root: Path
    runbook: str  # the name of its one runbook (typed.ipynb's parameters), unique to this test

    def env(self) -> dict[str, str]:
        return {"STACKBOOK_PROJECT": str(self.root), "STACKBOOK_HOME": str(project_mod.state_dir())}

    def cli(self, *args: str, env: dict | None = None) -> CLIResult:
        return run_cli(*args, env={**self.env(), **(env or {})}, cwd=self.root)

    def notebook(self, name: str, change=None, folder: str = "runbooks") -> Path:
        """A copy of the typed fixture under NAME, after CHANGE(nb) edits its JSON."""
        nb = json.loads((FIX / "typed.ipynb").read_text())
        if change:
            change(nb)
        path = self.root / folder / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nb))
        return path


@pytest.fixture()
def proj(tmp_path, database_url) -> Project:
    root = tmp_path / "project"
    (root / "infra" / "environments").mkdir(parents=True)
    (root / "infra" / "environments" / "dev.yml").write_text("params: {}\n")
    (root / "pyproject.toml").write_text("")
    p = Project(root=root, runbook=f"bad_input_{uuid.uuid4().hex[:10]}")
    p.notebook(p.runbook)
    return p


def one_line_error(res: CLIResult, *needles: str) -> str:
    """Exit 2, standard error a single `stackbook: error:` line holding every needle, no traceback."""
    assert res.code == 2, res
    assert "Traceback" not in res.err, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stackbook: error: "), res
    for needle in needles:
        assert needle in lines[0], res
    return lines[0]


def refused(proj: Project, db, runbook: str, args: list[str], *needles: str, env: dict | None = None) -> str:
    """Run ARGS; assert a one-line error with NEEDLES and that RUNBOOK got no ledger row."""
    before = ledger_count(db, runbook)
    line = one_line_error(proj.cli(*args, env=env), *needles)
    assert ledger_count(db, runbook) == before, f"{runbook}: a ledger row was recorded for bad input"
    return line


# ---------------------------------------------------------------- parameter values jsonb cannot store


@pytest.mark.parametrize("param,needles", [
    ("ratio=nan", ["parameter 'ratio' is nan", "NaN or infinities"]),
    ("ratio=inf", ["parameter 'ratio' is inf"]),
    ("ratio=-1e999", ["parameter 'ratio' is -inf"]),
    ("items=[1, .nan]", ["parameter 'items' holds nan"]),
    ('items=["a\\0b"]', ["parameter 'items' holds a NUL character"]),
    ("name=caf\udce9", ["parameter 'name' holds a lone surrogate (U+DCE9)", "UTF-8"]),  # argv byte 0xe9
    ("items=[2024-01-01]", ["parameter 'items' holds a date value", "not JSON"]),
    ("items=[2024-13-45]", ["parameter 'items' expects list", "month must be in 1..12"]),
])
def test_values_jsonb_cannot_store_are_refused_from_p(proj, db, param, needles):
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-p", param], *needles)


@pytest.mark.parametrize("text,needle", [
    ('name: "a\\0b"\n', "parameter 'name' holds a NUL character"),
    ('name: "a\\ud800b"\n', "parameter 'name' holds a lone surrogate (U+D800)"),
    ("ratio: .nan\n", "parameter 'ratio' is nan"),
    ("opts: {k: -.inf}\n", "parameter 'opts' holds -inf"),
    ("items: !!binary aGVsbG8=\n", "parameter 'items' expects list"),
    ("opts: {k: !!binary aGVsbG8=}\n", "parameter 'opts' holds a bytes value"),
])
def test_values_jsonb_cannot_store_are_refused_from_f(proj, db, tmp_path, text, needle):
    values = tmp_path / "values.yml"
    values.write_text(text)
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-f", str(values)], needle)


def test_a_huge_value_is_not_echoed(proj, db):
    line = refused(proj, db, proj.runbook, ["run", proj.runbook, "-p", "rows=" + "7" * 5000],
                   "parameter 'rows' expects int")
    assert len(line) < 300


# ---------------------------------------------------------------- files that are not text


def test_a_parameters_file_that_is_not_text(proj, db, tmp_path):
    binary = tmp_path / "values.yml"
    binary.write_bytes(b"rows: \xff\xfe\x00\x01\n")
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-f", str(binary)],
            f"parameters file {binary} is not UTF-8 text")
    nul = tmp_path / "nul.yml"
    nul.write_bytes(b"rows: 1\x00\n")
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-f", str(nul)], f"parameters file {nul} is not text")


@pytest.mark.parametrize("name", [".env", ".env.dev"])
def test_a_dotenv_that_is_not_text(proj, db, name):
    (proj.root / name).write_bytes(b"SOME_TOKEN=\xff\xfe\n")
    refused(proj, db, proj.runbook, ["run", proj.runbook], f"secrets file {proj.root / name} is not UTF-8 text")


def test_an_environment_file_that_is_not_text(proj, db):
    env = f"bin_{uuid.uuid4().hex[:6]}"
    path = proj.root / "infra" / "environments" / f"{env}.yml"
    path.write_bytes(b"params: \xff\n")
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-e", env], f"environment file {path} is not UTF-8 text")


# ---------------------------------------------------------------- notebooks


def test_a_kernel_that_does_not_exist(proj, db):
    name = f"{proj.runbook}_kernel"
    proj.notebook(name, lambda nb: nb["metadata"]["kernelspec"].update(name="no_such_kernel"))
    refused(proj, db, name, ["run", name], "Jupyter kernel 'no_such_kernel'", "not installed", "python3")


def _cell(index: int, key: str, value):
    return lambda nb: nb["cells"][index].__setitem__(key, value)


@pytest.mark.parametrize("change,needles", [
    (_cell(2, "metadata", []), ["not a valid nbformat 4 notebook", "cells[2].metadata: [] is not of type 'object'"]),
    (_cell(2, "source", 5), ["cells[2].source: 5 is not of type 'string' or 'array'"]),
    (_cell(0, "cell_type", "slides"), ["cells[0]: cell_type 'slides' is not one of markdown, code, raw"]),
    (lambda nb: nb.__setitem__("nbformat", 3), ["an nbformat 3 notebook", "nbformat 4 only"]),
    (lambda nb: nb.pop("nbformat"), ["not a Jupyter notebook (no 'nbformat' version"]),
])
def test_json_that_breaks_the_notebook_schema(proj, db, change, needles):
    name = f"{proj.runbook}_schema"
    path = proj.notebook(name, change, folder="elsewhere")
    refused(proj, db, name, ["run", str(path)], str(path), *needles)


@pytest.mark.parametrize("source,needle", [
    ("x: int = 'abc'\n", "parameter 'x' is declared int but its default is 'abc', of type str"),
    ("flag: bool = 1\n", "parameter 'flag' is declared bool but its default is 1, of type int"),
    ('mode: Literal["a", "b"] = "c"\n', "parameter 'mode' is declared Literal[\"a\", \"b\"] but its default is 'c'"),
    ("s = {1, 2}\n", "the default of parameter 's' is {1, 2}, of type set, which stackbook cannot pass"),
])
def test_a_default_that_does_not_match_its_type(proj, db, source, needle):
    name = f"{proj.runbook}_default"
    proj.notebook(name, _cell(1, "source", ["from typing import Literal\n", source]))
    refused(proj, db, name, ["run", name], needle)


# ---------------------------------------------------------------- options, DATABASE_URL, names


@pytest.mark.parametrize("args,needle", [
    (["runs", "--limit", "0"], "Invalid value for '--limit': 0 is not in the range x>=1"),
    (["runs", "--limit", "-3"], "Invalid value for '--limit'"),
    (["run", "RUNBOOK", "--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>0"),
    (["run", "RUNBOOK", "--timeout", "nan"], "Invalid value for '--timeout': nan is not a number of seconds"),
    (["run", "RUNBOOK", "--cell-timeout", "-1"], "Invalid value for '--cell-timeout': -1 is not in the range x>=1"),
    (["run", "RUNBOOK", "--cell-timeout", "1.5"], "Invalid value for '--cell-timeout'"),
])
def test_limits_and_timeouts_out_of_range(proj, db, args, needle):
    args = [proj.runbook if a == "RUNBOOK" else a for a in args]
    before = ledger_count(db, proj.runbook)
    res = proj.cli(*args)
    assert res.code == 2 and needle in res.err and "Traceback" not in res.err, res
    assert ledger_count(db, proj.runbook) == before


@pytest.mark.parametrize("url", ["host=db.internal password=hunter2-secret", "mysql://u:hunter2-secret@h/db",
                                 "postgresql://u:hunter2-secret@h:port/db"])
def test_a_database_url_that_is_not_a_url(proj, db, url):
    line = refused(proj, db, proj.runbook, ["run", proj.runbook], "DATABASE_URL is not a PostgreSQL URL",
                   "postgresql://USER:PASSWORD@HOST:PORT/DBNAME", env={"DATABASE_URL": url})
    assert "hunter2" not in line
    runs = proj.cli("runs", env={"DATABASE_URL": url})
    assert runs.code == 2 and "DATABASE_URL is not a PostgreSQL URL" in runs.err and "hunter2" not in runs.err


@pytest.mark.parametrize("env", ["../../escape", "/tmp/escape", "dev/../dev", ".hidden", "dev\x01", "x" * 65])
def test_an_environment_name_that_is_not_a_plain_name(proj, db, tmp_path, env):
    (tmp_path / "escape.yml").write_text("params: {}\n")  # what ../../escape points at
    refused(proj, db, proj.runbook, ["run", proj.runbook, "-e", env], "is not the plain name of a file in",
            "known environments: dev")
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()


def test_new_refuses_names_over_postgres_identifier_length(proj):
    (proj.root / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    toc = (proj.root / "_toc.yml").read_text()
    for spec, what in ((f"ops/{'a' * 64}", "name"), (f"{'b' * 70}/short", "area")):
        line = one_line_error(proj.cli("new", spec), f"the {what}", "bytes long; at most 63",
                              "PostgreSQL's identifier length")
        assert "snake_case" not in line
    assert not list((proj.root / "runbooks").glob("*/*.ipynb"))  # nothing scaffolded
    assert (proj.root / "_toc.yml").read_text() == toc
    assert proj.cli("new", f"ops/{'c' * 63}").code == 0  # 63 is the limit, not past it


# ---------------------------------------------------------------- ingest: spec types never reach DDL as text


def test_spec_column_types_are_resolved_by_postgres_not_pasted(tmp_path, db, scratch_schema):
    from stackbook.core.errors import SpecError
    from stackbook.ingest import load_folder

    (tmp_path / "people.csv").write_text("id,name,score\n1,ann,2.5\n2,bob,3\n")
    for bad, why in (("bigint, injected_col text default current_user", 'syntax error at or near ","'),
                     ("int4) , extra text --", "syntax error"),
                     ("no_such_type", "not a type PostgreSQL knows"),
                     ("record", "not a type PostgreSQL knows as a column type"),
                     ("varchar(0)", "length for type varchar must be at least 1")):
        with pytest.raises(SpecError) as err:
            load_folder(tmp_path, schema=scratch_schema, spec={"people": {"id": bad}}, conn=db)
        assert "column people.id" in str(err.value) and why in str(err.value)
        assert db.execute("select to_regclass(%s)", [f"{scratch_schema}.people"]).fetchone()[0] is None
    load_folder(tmp_path, schema=scratch_schema, conn=db,
                spec={"people": {"id": "int4", "name": "varchar(20)", "score": "numeric( 5 , 2 )"}})
    columns = db.execute("select attname, format_type(atttypid, atttypmod) from pg_attribute where attrelid = "
                         "%s::regclass and attnum > 0 and not attisdropped order by attnum",
                         [f"{scratch_schema}.people"]).fetchall()
    assert columns == [("id", "integer"), ("name", "character varying(20)"), ("score", "numeric(5,2)")]


def test_injection_through_the_load_csv_folder_runbook_runs_nothing_of_it(cli, tmp_path, db, scratch_schema):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "people.csv").write_text("id,name\n1,ann\n")
    spec = tmp_path / "spec.yml"
    spec.write_text('tables:\n  people:\n    columns: {id: "bigint, injected_col text default current_user"}\n')
    res = cli("run", "load_csv_folder", "-p", f"source_dir={tmp_path / 'csv'}", "-p", f"schema={scratch_schema}",
              "-p", f"spec={spec}", "--json")
    assert res.code == 1 and "SpecError" in res.out and "column people.id" in res.out, res
    assert db.execute("select to_regclass(%s)", [f"{scratch_schema}.people"]).fetchone()[0] is None


# ---------------------------------------------------------------- one broken file does not hide the rest


def test_listings_show_broken_files_with_their_error_and_the_rest(proj):
    (proj.root / "runbooks" / "zz_broken.ipynb").write_text('{"cells": [')
    proj.notebook(f"{proj.runbook}_scheduled", lambda nb: nb["metadata"]["stackbook"].update(schedule="0 6 * * *"))
    good = proj.root / "pipelines" / "good"
    good.mkdir(parents=True)
    (good / "pipeline.yaml").write_text(f"stackbook: {{schedule: '@daily'}}\n"
                                        f"tasks:\n  - source: {proj.runbook}\n    product: {{nb: products/a.ipynb}}\n")
    (proj.root / "pipelines" / "bad").mkdir()
    (proj.root / "pipelines" / "bad" / "pipeline.yaml").write_text("tasks: [\n")

    listing = proj.cli("list", "--json")
    assert listing.code == 1, listing
    items = {i["name"]: i for i in listing.json()}
    assert {proj.runbook, f"{proj.runbook}_scheduled", "zz_broken"} <= set(items)
    assert "malformed JSON" in items["zz_broken"]["error"] and "error" not in items[proj.runbook]
    assert "zz_broken.ipynb: not a valid notebook" in listing.err
    human = proj.cli("list")
    assert human.code == 1 and proj.runbook in human.out and "zz_broken" in human.out and "Traceback" not in human.err

    pipelines = proj.cli("pipeline", "list", "--json")
    assert pipelines.code == 1, pipelines
    by_name = {i["name"]: i for i in pipelines.json()}
    assert by_name["good"]["tasks"] == [proj.runbook] and "not valid YAML" in by_name["bad"]["error"]
    assert len([line for line in pipelines.err.splitlines() if "pipeline bad" in line]) == 1  # on one line

    schedules = proj.cli("schedule", "list", "--json")
    assert schedules.code == 1, schedules
    kinds = {(i["kind"], i["name"]): i for i in schedules.json()}
    assert kinds[("pipeline", "good")]["schedule"] == "@daily"
    assert kinds[("runbook", f"{proj.runbook}_scheduled")]["schedule"] == "0 6 * * *"
    assert "error" in kinds[("pipeline", "bad")] and "error" in kinds[("runbook", "zz_broken")]
    assert "exits 1" in proj.cli("list", "--help").out.replace("\n", " ")
