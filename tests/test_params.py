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


@pytest.mark.parametrize("source,needle", [
    ("x: int = 'abc'\n", "parameter 'x' is declared int but its default is 'abc', of type str"),
    ("x: float = True\n", "declared float but its default is True, of type bool"),
    ("x: list = {}\n", "declared list but its default is {}, of type dict"),
    ("x: Literal['a'] = 'b'\n", "declared Literal['a'] but its default is 'b'"),
    ("x = (1, 2)\n", "the default of parameter 'x' is (1, 2), of type tuple, which stackbook cannot pass"),
])
def test_a_default_must_match_its_declared_type(source, needle):
    with pytest.raises(NotebookError) as err:
        notebooks.parse_parameters(source, "nb")
    assert needle in str(err.value)
    # what still passes: an int for a float, None for any type, a matching Literal choice
    assert [p.default for p in notebooks.parse_parameters("a: float = 1\nb: int = None\nc: Literal['a'] = 'a'\n",
                                                           "nb")] == [1, None, "a"]


@pytest.mark.parametrize("value,needle", [
    (float("nan"), "is nan"), (float("-inf"), "is -inf"), ([1, {"k": float("inf")}], "holds inf"),
    ("a\x00b", "NUL character"), ({"k\ud800": 1}, "lone surrogate (U+D800)"), ([b"raw"], "bytes value"),
    (2 ** 20000, "integer too large"), ({(1, 2): 1}, "key of type tuple"),
], ids=["nan", "-inf", "nested-inf", "nul", "surrogate-key", "bytes", "huge-int", "tuple-key"])
def test_values_jsonb_cannot_store_are_named(value, needle):
    assert needle in params.unstorable(value)


def test_storable_values_pass_and_nesting_is_bounded():
    assert params.unstorable({"a": [1, 2.5, None, True, "ünïcode", {"b": []}], 3: "int key"}) is None
    loop: list = []
    loop.append(loop)  # what a YAML alias loop (`&a [*a]`) builds
    assert "nested deeper" in params.unstorable(loop)


def test_resolve_names_the_parameter_and_keeps_messages_short():
    with pytest.raises(ParameterError, match="parameter 'ratio' is nan"):
        params.resolve(runbook(), cli=["ratio=nan"])
    with pytest.raises(ParameterError, match="parameter 'items' holds a NUL"):
        params.resolve(runbook(), file_values={"items": ["\x00"]})
    with pytest.raises(ParameterError) as err:
        params.resolve(runbook(), cli=["rows=" + "9" * 10000])
    assert len(str(err.value)) < 120
