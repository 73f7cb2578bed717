"""Parameter values: conversion, checking and precedence.

Precedence, highest first: CLI ``-p`` values, the ``-f`` file, the environment
file (its ``runbooks.<name>`` section, then its shared ``params`` for the
parameters the runbook has), the notebook's defaults.

The final values go to the run ledger as ``jsonb`` and to the kernel as Python
literals, so ``resolve`` also refuses what PostgreSQL's jsonb cannot store:
NaN and infinities, text with a NUL character or a lone surrogate (what
undecodable bytes of a command line become), and values that are not JSON at
all (dates, sets, binary from YAML tags). Every error names the parameter and
shows at most 40 characters of the value (``notebooks.shown``).

A notebook without a parameters cell takes no values (exit 2, naming the
missing cell, as before). A notebook in another language (``Runbook.typed``
False) declares no parameters to stackbook: as papermill does, it takes any
name, and a ``-p`` value is read as YAML (``5`` an int, ``[a, b]`` a list,
``null`` None), else kept as the text given.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from stackbook.core.errors import ParameterError
from stackbook.core.files import load_yaml
from stackbook.core.notebooks import Parameter, Runbook, no_parameters_cell, shown

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_INT_BITS = 13_000  # about 3,900 digits: Python's int/str limit (4,300) stops json.dumps past that
MAX_DEPTH = 100  # nesting of lists and mappings
MAX_ITEMS = 100_000  # values in one parameter (YAML aliases can multiply a small file)


def _fail(p: Parameter, value: Any, why: str = "") -> ParameterError:
    extra = f" ({why})" if why else ""
    return ParameterError(f"parameter {p.name!r} expects {p.describe_type()}, got {shown(value)}{extra}")


def from_text(p: Parameter, text: str) -> Any:
    """Convert a command-line string to the parameter's type."""
    if p.nullable and text.strip().lower() in ("none", "null"):
        return None
    if p.type == "str":
        return text
    if p.type == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise _fail(p, text) from None
    if p.type == "float":
        try:
            return float(text.strip())
        except ValueError:
            raise _fail(p, text) from None
    if p.type == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _fail(p, text, "use true or false")
    if p.type in ("list", "dict"):
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _fail(p, text, f"not valid JSON/YAML: {getattr(exc, 'problem', exc)}") from None
        except (ValueError, RecursionError) as exc:  # a date like 2024-13-45, an int past Python's digit limit
            raise _fail(p, text, f"not valid JSON/YAML: {shown(str(exc))}") from None
        if not isinstance(value, list if p.type == "list" else dict):
            raise _fail(p, text)
        return value
    if p.type == "Literal":
        for choice in p.choices or []:
            if str(choice) == text:
                return choice
        raise _fail(p, text)
    raise _fail(p, text)


def check(p: Parameter, value: Any) -> Any:
    """Check an already-typed value (from YAML); ints are accepted for floats."""
    if value is None:
        if p.nullable or p.default is None:
            return None
        raise _fail(p, value)
    if not p.accepts(value):
        raise _fail(p, value)
    if p.type == "float":
        try:
            return float(value)
        except OverflowError:
            raise _fail(p, value, "too large for a float") from None
    return value


def unstorable(value: Any) -> str | None:
    """Why VALUE cannot be stored as jsonb (and passed on as JSON), or None when it can."""
    stack, seen = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_ITEMS or depth > MAX_DEPTH:
            return (f"holds more than {MAX_ITEMS} values or is nested deeper than {MAX_DEPTH} levels "
                    "(a YAML alias loop?)")
        if isinstance(item, dict):
            for key, inner in item.items():
                if key is not None and not isinstance(key, (str, int, float)):
                    return f"has a key of type {type(key).__name__} ({shown(key)}); JSON keys are text"
                stack += [(key, depth + 1), (inner, depth + 1)]
        elif isinstance(item, list):
            stack += [(inner, depth + 1) for inner in item]
        else:
            why = _unstorable_scalar(item, "holds" if depth else "is")
            if why:
                return why
    return None


def _unstorable_scalar(value: Any, verb: str) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        too_large = value.bit_length() > MAX_INT_BITS
        return "holds an integer too large to store (thousands of digits)" if too_large else None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return (f"{verb} {value!r}: PostgreSQL's jsonb (the run ledger) cannot store NaN or infinities; "
                "pass a finite number")
    if isinstance(value, str):
        if "\x00" in value:
            return "holds a NUL character (\\u0000), which PostgreSQL cannot store in text or jsonb; remove it"
        bad = _SURROGATE.search(value)
        if bad:
            return (f"holds a lone surrogate (U+{ord(bad.group()):04X}), which is not valid Unicode (bytes of a "
                    "command line that are not UTF-8 become these); pass UTF-8 text")
        return None
    return (f"holds a {type(value).__name__} value ({shown(value)}), which is not JSON; quote it in YAML to pass "
            "text")


def free_value(text: str) -> Any:
    """A ``-p`` value for an untyped parameter: TEXT read as YAML when that gives JSON's kinds, else TEXT itself."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or a date YAML cannot build): the text
        return text
    return value if value is None or isinstance(value, (str, int, float, bool, list, dict)) else text


def _untyped(cli_pairs: list[tuple[str, str]], file_values: dict, env_runbook: dict) -> dict[str, Any]:
    """The values of an untyped notebook's parameters: any name, -p over -f over the environment file."""
    values = {**env_runbook, **file_values, **{key: free_value(text) for key, text in cli_pairs}}
    bad = [key for key in values if not (isinstance(key, str) and key.isidentifier() and key.isascii())]
    if bad:
        raise ParameterError(f"parameter name {shown(bad[0])} is not a variable name (letters, digits and _, "
                             "not starting with a digit); the kernel could not assign it")
    return values


def _unknown(runbook: Runbook, names: list[str], source: str) -> ParameterError:
    valid = ", ".join(p.name for p in runbook.parameters) or "(none)"
    plural = "s" if len(names) > 1 else ""
    return ParameterError(
        f"unknown parameter{plural} {', '.join(map(shown, names))} for runbook {runbook.name!r} ({source}); "
        f"valid parameters: {valid}",
        runbook=runbook.name,
    )


def parse_assignments(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise ParameterError(f"-p expects KEY=VALUE, got {shown(item)}")
        key, _, value = item.partition("=")
        pairs.append((key.strip(), value))
    return pairs


def load_file(path: str | Path) -> dict[str, Any]:
    """The values of a ``-f`` parameters file (a YAML mapping of name: value)."""
    data = load_yaml(path, what="parameters file", error=ParameterError, default={})
    if not isinstance(data, dict):
        raise ParameterError(f"parameters file {path} must hold a mapping of name: value")
    return data


def resolve(
    runbook: Runbook,
    cli: list[str] | None = None,
    file_values: dict[str, Any] | None = None,
    env_shared: dict[str, Any] | None = None,
    env_runbook: dict[str, Any] | None = None,
    file_label: str = "-f file",
) -> dict[str, Any]:
    """The final parameter values, checked; raises ParameterError naming what is wrong."""
    if runbook.parameters_cell_index is None and not runbook.parameters and (cli or file_values or env_runbook):
        raise no_parameters_cell(runbook.path)
    if not runbook.typed:
        values = _untyped(parse_assignments(cli or []), file_values or {}, env_runbook or {})
        return _storable(runbook, values)
    values: dict[str, Any] = {p.name: p.default for p in runbook.parameters}
    names = set(values)
    for key, value in (env_shared or {}).items():
        if key in names:
            values[key] = check(runbook.parameter(key), value)
    for source, mapping in (("environment file", env_runbook or {}), (file_label, file_values or {})):
        unknown = [k for k in mapping if k not in names]
        if unknown:
            raise _unknown(runbook, unknown, source)
        for key, value in mapping.items():
            values[key] = check(runbook.parameter(key), value)
    pairs = parse_assignments(cli or [])
    unknown = [k for k, _ in pairs if k not in names]
    if unknown:
        raise _unknown(runbook, unknown, "-p")
    for key, text in pairs:
        values[key] = from_text(runbook.parameter(key), text)
    return _storable(runbook, values)


def _storable(runbook: Runbook, values: dict[str, Any]) -> dict[str, Any]:
    """VALUES, once each is known to be storable as jsonb; else ParameterError naming the first that is not."""
    for key, value in values.items():
        why = unstorable(value)
        if why:
            raise ParameterError(f"parameter {key!r} {why}", runbook=runbook.name)
    return values
