"""Property tests: any input to the parameter parser, the environment loader or the CSV type
inference gives a result or a ``StackbookError``, never another exception (issue 10).

Small and quick on purpose (200 examples each, no deadline); no database, no kernel.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackbook.core import environments, notebooks, params, project
from stackbook.core.errors import StackbookError
from stackbook.ingest import infer

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CELL = '''from typing import Literal

rows: int = 10  # rows
ratio: float = 0.5  # a share
flag: bool = False  # a switch
name: str = "x"  # a name
mode: Literal["fast", "slow", 3] = "fast"  # a choice
items: list = []  # a list
opts: dict = {}  # a mapping
note: str | None = None  # optional
legacy = 3
'''
PARAMS = notebooks.parse_parameters(CELL, "properties")
RUNBOOK = notebooks.Runbook(name="rb", path=Path("rb.ipynb"), area="", title="t", metadata={}, parameters=PARAMS)
NAMES = [p.name for p in PARAMS]

# every code point, lone surrogates and NUL included: what a command line or a file can carry
ANY_TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from("\x00\ud800\udcff\ufeff"), max_size=60)
YAML_ISH = st.sampled_from([".nan", "-.inf", "1e999", "2024-13-45", "2024-01-01", "!!binary aGk=", "!!set {a}",
                            "[1, [2, [3]]]", "{a: 1, b: [x]}", "&a [*a]", '"\\0"', '"\\ud800"', "0x" + "f" * 40,
                            "null", "~", "yes", "'quoted'", "[", "{", ": :", "? [1]\n: 2", "1" * 5000])
VALUE_TEXT = st.one_of(ANY_TEXT, YAML_ISH, st.builds("{}{}".format, YAML_ISH, ANY_TEXT))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    ANY_TEXT, st.dates(), st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(ANY_TEXT, st.integers()), inner, max_size=4)),
    max_leaves=12)


def storable(values: dict) -> None:
    """What resolve returns goes into jsonb: strict JSON, UTF-8 encodable, no NUL."""
    text = json.dumps(values, allow_nan=False)
    text.encode("utf-8")
    assert "\\u0000" not in text


@SETTINGS
@given(st.sampled_from(PARAMS), VALUE_TEXT)
def test_from_text_gives_a_value_or_a_stackbook_error(p, text):
    try:
        params.from_text(p, text)
    except StackbookError:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(NAMES + ["nope", ""]), VALUE_TEXT), max_size=4),
       st.lists(ANY_TEXT, max_size=2))
def test_resolve_of_command_line_values(pairs, raw):
    try:
        values = params.resolve(RUNBOOK, cli=[f"{k}={v}" for k, v in pairs] + raw)
    except StackbookError:
        return
    storable(values)


@SETTINGS
@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4),
       st.dictionaries(st.one_of(st.sampled_from(NAMES), ANY_TEXT), VALUES, max_size=3))
def test_resolve_of_file_and_environment_values(file_values, env_shared):
    try:
        values = params.resolve(RUNBOOK, file_values=file_values, env_shared=env_shared)
    except StackbookError:
        return
    storable(values)


@SETTINGS
@given(st.one_of(ANY_TEXT, st.builds("x: {} = {}\n".format, st.sampled_from(
    ["int", "float", "bool", "str", "list", "dict", "int | None", "Literal['a']", "set", "x.y"]), VALUE_TEXT)))
def test_parameters_cells_parse_or_raise_a_notebook_error(source):
    try:
        for p in notebooks.parse_parameters(source, "cell"):
            assert p.default is None or p.accepts(p.default)
    except StackbookError:
        pass


# ---------------------------------------------------------------- the environment loader


@pytest.fixture(scope="module")
def env_project():
    """A project of its own (STACKBOOK_PROJECT) whose infra/environments/ the examples write into."""
    saved = os.environ.get("STACKBOOK_PROJECT")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        (root / "runbooks").mkdir(parents=True)
        (root / "infra" / "environments").mkdir(parents=True)
        (root / "pyproject.toml").write_text("")
        os.environ["STACKBOOK_PROJECT"] = str(root)
        project.root.cache_clear()
        try:
            yield root
        finally:
            if saved is None:
                os.environ.pop("STACKBOOK_PROJECT", None)
            else:
                os.environ["STACKBOOK_PROJECT"] = saved
            project.root.cache_clear()


ENV_DOCS = st.one_of(
    ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.builds(lambda key, value: yaml.safe_dump({key: value}).encode(), st.sampled_from(
        ["params", "runbooks", "require_approval", "run_store"]), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES + ["rb"]), inner,
                                                                             max_size=3)), max_leaves=8)),
    st.builds("params: {{{}: {}}}\nrunbooks: {{rb: {{{}: {}}}}}\n".format, st.sampled_from(NAMES), YAML_ISH,
              st.sampled_from(NAMES), YAML_ISH).map(str.encode),
)


@SETTINGS
@given(ENV_DOCS)
def test_environment_files_load_or_raise_a_stackbook_error(env_project, data):
    (env_project / "infra" / "environments" / "prop.yml").write_bytes(data)
    try:
        env = environments.load("prop")
        values = params.resolve(RUNBOOK, env_shared=env.shared_params, env_runbook=env.runbook_params("rb"))
    except StackbookError:
        return
    storable(values)


@SETTINGS
@given(st.one_of(ANY_TEXT, st.sampled_from(["..", "../x", "/etc/passwd", "a/b", ".env", "dev\x00", "x" * 300])))
def test_environment_names_load_or_raise_and_never_leave_the_folder(env_project, name):
    try:
        env = environments.load(name)
    except StackbookError:
        return
    assert env.path.resolve().parent == (env_project / "infra" / "environments").resolve()


# ---------------------------------------------------------------- CSV type inference


@SETTINGS
@given(ANY_TEXT | st.sampled_from(["1" * 5000, "-" + "9" * 30, "00000000000000000000001", "١٢٣", "2024-02-30",
                                   "2024-01-01T25:00", "1e999", " +.5e-3 "]))
def test_classify_and_checks_give_an_answer(value):
    assert infer.classify(value) in infer.LOGICAL_TYPES
    for pg_type in ("bigint", "int4", "smallint", "numeric", "date", "timestamptz", "boolean", "text", "numeric(5,2)"):
        assert infer.fits(pg_type)(value) in (True, False)


@SETTINGS
@given(st.lists(ANY_TEXT, min_size=1, max_size=4), st.lists(st.lists(ANY_TEXT, max_size=5), max_size=6))
def test_infer_types_gives_a_logical_type_per_column(columns, rows):
    types = infer.infer_types(columns, rows)
    assert set(types) == set(columns) and set(types.values()) <= set(infer.LOGICAL_TYPES)


@SETTINGS
@given(st.one_of(VALUES, st.dictionaries(ANY_TEXT, VALUES, max_size=3),
                 st.builds(lambda t: {"tables": t}, VALUES)))
def test_load_spec_gives_a_spec_or_a_spec_error(spec):
    try:
        out = infer.load_spec(spec if not isinstance(spec, (str, bytes)) else {"t": {"c": spec}})
    except StackbookError:
        return
    assert all(isinstance(t, str) for cols in out.values() for t in cols.values())
