"""Parameter values: conversion, checking and precedence.

Precedence, highest first: CLI ``-p`` values, the ``-f`` file, the environment
file (its ``runbooks.<name>`` section, then its shared ``params`` for the
parameters the runbook has), the notebook's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stackbook.core.errors import ParameterError
from stackbook.core.notebooks import Parameter, Runbook

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def _fail(p: Parameter, value: Any, why: str = "") -> ParameterError:
    extra = f" ({why})" if why else ""
    return ParameterError(f"parameter {p.name!r} expects {p.describe_type()}, got {value!r}{extra}")


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
    kind = p.type
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list" and isinstance(value, list):
        return value
    if kind == "dict" and isinstance(value, dict):
        return value
    if kind == "Literal" and value in (p.choices or []):
        return value
    raise _fail(p, value)


def _unknown(runbook: Runbook, names: list[str], source: str) -> ParameterError:
    valid = ", ".join(p.name for p in runbook.parameters) or "(none)"
    plural = "s" if len(names) > 1 else ""
    return ParameterError(
        f"unknown parameter{plural} {', '.join(map(repr, names))} for runbook {runbook.name!r} ({source}); "
        f"valid parameters: {valid}",
        runbook=runbook.name,
    )


def parse_assignments(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise ParameterError(f"-p expects KEY=VALUE, got {item!r}")
        key, _, value = item.partition("=")
        pairs.append((key.strip(), value))
    return pairs


def load_file(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ParameterError(f"parameters file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameters file {path} is not valid YAML: {exc}") from None
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
    return values
