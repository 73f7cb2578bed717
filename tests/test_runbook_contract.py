"""Contract over the committed runbooks: what every runbook under runbooks/ must be."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from stackbook.core import catalog, notebooks, project

REQUIRED_METADATA = ("owner", "description", "schedule", "destructive", "exclusive", "timeout", "secrets", "tags")
RUNBOOKS = catalog.paths()


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_runbooks():
    assert any(p.stem == "platform_check" for p in RUNBOOKS)


def test_names_are_unique():
    stems = [p.stem for p in RUNBOOKS]
    assert len(stems) == len(set(stems))


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
class TestRunbook:
    def test_exactly_one_parameters_cell_first_among_code_cells(self, path: Path):
        nb = json.loads(path.read_text())
        tagged = [i for i, c in enumerate(code_cells(nb)) if "parameters" in c["metadata"].get("tags", [])]
        assert tagged == [0], f"{path}: parameters cells at code-cell positions {tagged}"

    def test_parameters_typed_and_commented(self, path: Path):
        rb = notebooks.load(path, project.runbooks_dir())
        for p in rb.parameters:
            assert p.annotation, f"{path.stem}: parameter {p.name} has no type"
            assert p.help, f"{path.stem}: parameter {p.name} has no comment"

    def test_metadata_present(self, path: Path):
        raw = json.loads(path.read_text())["metadata"].get("stackbook")
        assert isinstance(raw, dict), f"{path}: metadata.stackbook missing"
        missing = [k for k in REQUIRED_METADATA if k not in raw]
        assert not missing, f"{path.stem}: metadata.stackbook lacks {missing}"
        assert raw["owner"] and raw["description"]

    def test_no_outputs_committed(self, path: Path):
        nb = json.loads(path.read_text())
        for c in code_cells(nb):
            assert c.get("outputs") == [] and c.get("execution_count") is None, f"{path.stem}: outputs committed"
        assert "papermill" not in nb["metadata"] and "run" not in nb["metadata"]["stackbook"]

    def test_title_first_and_thin_code(self, path: Path):
        nb = json.loads(path.read_text())
        first = nb["cells"][0]
        assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
        for c in code_cells(nb):
            tree = ast.parse("".join(c["source"]))
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert not defs, f"{path.stem}: logic belongs in src/stackbook, not in the runbook ({defs[0].name})"

    def test_verifies_and_records(self, path: Path):
        source = "\n".join("".join(c["source"]) for c in code_cells(json.loads(path.read_text())))
        assert "assert " in source, f"{path.stem}: no verification cell"
        assert "stackbook.record(" in source, f"{path.stem}: records no result"

    def test_ends_with_finish_for_a_lab_session(self, path: Path):
        """The last code cell is `stackbook.finish()`: it ends a JupyterLab session's run (issue 15) and does
        nothing headless."""
        last = code_cells(json.loads(path.read_text()))[-1]
        assert "".join(last["source"]).strip() == "stackbook.finish()", f"{path.stem}: last cell is not finish()"

    def test_setup_cells_open_what_a_resumed_run_needs(self, path: Path):
        """The cells a resumed run re-runs (imports, connections, clients) are tagged `setup`: the first code
        cell after the parameters cell at least, never the parameters cell."""
        cells = code_cells(json.loads(path.read_text()))
        tagged = [i for i, c in enumerate(cells) if "setup" in c["metadata"].get("tags", [])]
        assert 1 in tagged and 0 not in tagged, f"{path.stem}: setup cells at code-cell positions {tagged}"
        imports = [n for i in tagged for n in ast.walk(ast.parse("".join(cells[i]["source"])))
                   if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert imports, f"{path.stem}: its setup cells import nothing"

    def test_controls_are_ids_the_audit_maps(self, path: Path):
        from stackbook import audit
        from stackbook.audit import kubernetes, operations, postgres, secrets_scan  # noqa: F401 (register rules)

        known = {c for rule in audit.RULES.values() for c in rule.controls}
        controls = notebooks.load(path, project.runbooks_dir()).metadata["controls"]
        assert set(controls) <= known, f"{path.stem}: controls the audit does not know: {set(controls) - known}"
        if path.stem in ("dr_drill", "failover", "provision_cluster", "provision_warehouse"):
            assert controls, f"{path.stem}: the evidence of its runs must name the controls it serves"

    def test_destructive_runbooks_default_to_dry_run(self, path: Path):
        rb = notebooks.load(path, project.runbooks_dir())
        if rb.metadata.get("destructive"):
            dry = rb.parameter("dry_run")
            assert dry is not None and dry.type == "bool" and dry.default is True, f"{path.stem}: dry_run must default True"


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_every_input_glob_matches_a_file(path: Path):
    """``metadata.stackbook.inputs`` feed the pipelines' up-to-date check: a glob that matches nothing
    (a module that moved) would silently stop a changed library from re-running the runbook."""
    inputs = json.loads(path.read_text())["metadata"]["stackbook"].get("inputs") or []
    root = project.root()
    dead = [glob for glob in inputs if not any(root.glob(glob))]
    assert dead == [], f"{path.stem}: inputs that match no file: {dead}"


def test_metadata_keys_are_type_checked(tmp_path):
    """`resumable` is a bool and `controls` a list of control ids; anything else is refused with the key named."""
    from stackbook.core.errors import NotebookError

    src = json.loads((project.runbooks_dir() / "ops" / "platform_check.ipynb").read_text())
    for key, bad in (("resumable", "yes"), ("controls", "SOC2 CC7.5"), ("controls", ["SOC2 CC7.5", 3])):
        src["metadata"]["stackbook"][key] = bad
        path = tmp_path / f"{key}.ipynb"
        path.write_text(json.dumps(src))
        with pytest.raises(NotebookError, match=f"metadata.stackbook.{key}"):
            notebooks.load(path)
        src["metadata"]["stackbook"].pop(key)
    assert notebooks.load(project.runbooks_dir() / "ops" / "platform_check.ipynb").metadata["resumable"] is False
