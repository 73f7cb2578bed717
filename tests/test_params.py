"""The parameters cell parser and value conversion (no kernel, no database)."""

from __future__ import annotations

import pytest

from stackbook.core import notebooks, params
from stackbook.core.errors import NotebookError, ParameterError

CELL = '''from typing import Literal

rows: int = 1000  # rows per table
ratio: float = 0.1  # share of rows
flag: bool = True  # a switch
name: str = "x"  # a name
mode: Literal["a", "b"] = "a"  # a choice
items: list = [1, 2]  # a list
opts: dict = {"k": 1}  # a mapping
maybe: int | None = None  # optional
legacy = 3
'''


def parsed():
    return notebooks.parse_parameters(CELL, "test")


def runbook():
    return notebooks.Runbook(name="rb", path=None, area="", title="t", metadata={}, parameters=parsed())


def test_types_defaults_and_help_are_read():
    ps = {p.name: p for p in parsed()}
    assert [p.name for p in parsed()] == ["rows", "ratio", "flag", "name", "mode", "items", "opts", "maybe", "legacy"]
    assert (ps["rows"].type, ps["rows"].default, ps["rows"].help) == ("int", 1000, "rows per table")
    assert ps["mode"].type == "Literal" and ps["mode"].choices == ["a", "b"]
    assert ps["maybe"].nullable and ps["maybe"].type == "int"
    assert ps["legacy"].type == "int" and ps["legacy"].annotation == ""  # papermill-style, inferred


@pytest.mark.parametrize(
    "name,raw,value",
    [("rows", "42", 42), ("ratio", "2", 2.0), ("flag", "false", False), ("flag", "YES", True),
     ("name", "42", "42"), ("mode", "b", "b"), ("items", "[3, 4]", [3, 4]), ("opts", '{"a": 2}', {"a": 2}),
     ("maybe", "None", None), ("maybe", "7", 7)],
)
def test_from_text(name, raw, value):
    p = next(p for p in parsed() if p.name == name)
    assert params.from_text(p, raw) == value


@pytest.mark.parametrize(
    "name,raw,needle",
    [("rows", "ten", "expects int"), ("ratio", "x", "expects float"), ("flag", "maybe", "use true or false"),
     ("mode", "c", "one of ['a', 'b']"), ("items", '{"a": 1}', "expects list"), ("opts", "[1", "expects dict")],
)
def test_bad_values_name_parameter_type_and_value(name, raw, needle):
    p = next(p for p in parsed() if p.name == name)
    with pytest.raises(ParameterError) as err:
        params.from_text(p, raw)
    assert needle in str(err.value) and repr(name) in str(err.value) and raw in str(err.value)


def test_yaml_values_are_type_checked():
    p = next(p for p in parsed() if p.name == "rows")
    assert params.check(p, 5) == 5
    with pytest.raises(ParameterError):
        params.check(p, True)  # a bool is not an int
    with pytest.raises(ParameterError):
        params.check(p, "5")


def test_precedence_cli_over_file_over_env_over_default():
    rb = runbook()
    values = params.resolve(
        rb,
        cli=["rows=1"],
        file_values={"rows": 2, "ratio": 0.2},
        env_runbook={"rows": 3, "ratio": 0.3, "name": "env"},
        env_shared={"rows": 4, "flag": False, "not_mine": 1},
    )
    assert values["rows"] == 1 and values["ratio"] == 0.2 and values["name"] == "env" and values["flag"] is False
    assert values["items"] == [1, 2]  # default kept


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ParameterError) as err:
        params.resolve(runbook(), cli=["rowz=1"])
    assert "'rowz'" in str(err.value) and "valid parameters: rows, ratio" in str(err.value)
    with pytest.raises(ParameterError, match="environment file"):
        params.resolve(runbook(), env_runbook={"nope": 1})


def test_malformed_assignment_and_cells():
    with pytest.raises(ParameterError, match="KEY=VALUE"):
        params.parse_assignments(["rows"])
    with pytest.raises(NotebookError, match="only assignments"):
        notebooks.parse_parameters("x: int = 1\nprint(x)\n", "nb")
    with pytest.raises(NotebookError, match="unsupported parameter type"):
        notebooks.parse_parameters("x: set = set()\n", "nb")
    with pytest.raises(NotebookError, match="must be a literal"):
        notebooks.parse_parameters("x: int = len([])\n", "nb")
    with pytest.raises(NotebookError, match="not valid Python"):
        notebooks.parse_parameters("x: int = \n", "nb")
