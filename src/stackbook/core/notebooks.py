"""Reading runbooks: the parameters cell, the metadata and the title.

Notebooks are read as JSON and checked against nbformat's own schema
(``nbformat.validator``) before anything else looks at them, so a notebook
that is JSON but not a notebook (cell metadata that is a list, a source that
is a number, an nbformat 3 file) is one clear error, not a traceback later.
jsonschema's optional ``rfc3987_syntax`` import (a second of grammar
compiling, for IRI formats no notebook uses) is skipped, so ``list`` and
``show`` still start fast. A parameter's default must match its declared type.

What papermill runs, stackbook reads: a notebook given by path needs no
``parameters`` cell (it then has no parameters; ``load(...,
require_parameters=False)``), while a runbook under ``runbooks/`` keeps the
contract of exactly one. The parameters cell of a notebook in another language
(``metadata.kernelspec.language``: bash, R, ...) is not parsed as Python: as
with papermill, its parameters are not declared to stackbook and not typed
(``Runbook.typed`` is False).
"""

from __future__ import annotations

import ast
import io
import json
import sys
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stackbook.core.errors import NotebookError

PARAMETERS_TAG = "parameters"
SIMPLE_TYPES = ("int", "float", "bool", "str", "list", "dict")
DEFAULT_KERNEL = "python3"
DEFAULT_LANGUAGE = "python"
CELL_TYPES = ("markdown", "code", "raw")
MAX_SHOWN = 40  # characters of a value an error message shows

#: the Python types a value of each parameter type may have (an int passes for a float)
_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "dict": dict}

# metadata.stackbook keys, their types, and defaults
METADATA_FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "owner": (str, None),
    "description": (str, None),
    "schedule": (str, None),
    "destructive": (bool, False),
    "exclusive": (bool, False),
    "timeout": ((int, float), None),
    "secrets": (list, []),  # required: a run without them exits 2
    "optional_secrets": (list, []),  # passed and scrubbed when set, not required
    "tags": (list, []),
    "freshness_hours": ((int, float), None),
    "retries": (int, 0),
    "retry_delay_s": ((int, float), 10),
    "inputs": (list, []),  # project files (globs) the runbook reads: a change re-runs it in a pipeline
    "resumable": (bool, False),  # a retry or a pipeline repair continues a failed run instead of starting afresh
    "controls": (list, []),  # the SOC 2 / ISO 27001 controls its runs evidence ("SOC2 CC7.5", "ISO27001 A.5.30")
}


@dataclass
class Parameter:
    name: str
    type: str  # "int", "float", "bool", "str", "list", "dict" or "Literal"
    default: Any
    help: str = ""
    choices: list[Any] | None = None
    nullable: bool = False
    annotation: str = ""  # the annotation as written ("" when untyped)
    line: int = 0

    def describe_type(self) -> str:
        text = f"one of {self.choices!r}" if self.type == "Literal" else self.type
        return text + (" or None" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        """Whether VALUE has this parameter's type (None only when nullable; a bool is no int)."""
        if value is None:
            return self.nullable
        if self.type == "Literal":
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices or [])
        if isinstance(value, bool) and self.type != "bool":
            return False
        kind = _PY_TYPES.get(self.type)
        return kind is not None and isinstance(value, kind)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Runbook:
    name: str
    path: Path
    area: str
    title: str
    metadata: dict[str, Any]
    parameters: list[Parameter] = field(default_factory=list)
    parameters_cell_index: int | None = None
    kernel: str = DEFAULT_KERNEL  # metadata.kernelspec.name: the kernel a run starts
    language: str = DEFAULT_LANGUAGE  # metadata.kernelspec.language: how parameters are written for the kernel

    @property
    def typed(self) -> bool:
        """Whether the parameters are declared and typed (a Python notebook), or free as papermill has them."""
        return self.language.lower() == DEFAULT_LANGUAGE

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "area": self.area,
            "title": self.title,
            "path": str(self.path),
            "tags": self.metadata.get("tags", []),
            "schedule": self.metadata.get("schedule"),
            "destructive": self.metadata.get("destructive", False),
            "exclusive": self.metadata.get("exclusive", False),
            "owner": self.metadata.get("owner"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "metadata": self.metadata, "parameters": [p.to_dict() for p in self.parameters]}


def shown(value: Any) -> str:
    """``repr(value)`` cut to MAX_SHOWN characters: an error message never echoes a huge value."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit, a structure nested too deep
        return f"<a {type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
    except FileNotFoundError as exc:
        raise NotebookError(f"{path}: no such notebook") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(f"{path}: not a valid notebook (malformed JSON: {exc})") from exc
    except RecursionError:
        raise NotebookError(f"{path}: not a valid notebook (its JSON is nested too deeply to read)") from None
    if not isinstance(nb, dict):
        raise NotebookError(f"{path}: not a valid notebook (the JSON is a {type(nb).__name__}, not an object)")
    check_format(nb, path)
    return nb


def _skip_slow_optional_imports() -> None:
    # jsonschema imports its optional rfc3987_syntax module (1 to 1.3 s) when nbformat
    # loads it; nothing validates IRI formats in a notebook, so skip it.
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)


def check_format(nb: dict, path: Path) -> None:
    """nbformat 4 and valid against nbformat's schema, else NotebookError naming the version or the first problem."""
    if "nbformat" not in nb:
        raise NotebookError(f"{path}: not a Jupyter notebook (no 'nbformat' version in its JSON)")
    _skip_slow_optional_imports()
    from nbformat import reader, validator

    major, _ = reader.get_version(nb)
    if major != 4:
        raise NotebookError(f"{path}: an nbformat {shown(major)} notebook; stackbook reads nbformat 4 only "
                            "(open it in JupyterLab and save it: that converts it)")
    try:
        problem = next(iter(validator.iter_validate(nb)), None)
    except KeyError:  # a minor version nbformat has no schema for
        raise NotebookError(f"{path}: nbformat_minor {shown(nb.get('nbformat_minor'))} is not an nbformat 4 "
                            "version this nbformat knows") from None
    if problem is not None:
        raise NotebookError(f"{path}: not a valid nbformat 4 notebook: {_describe(problem)}")


def _describe(error) -> str:
    """One line for a jsonschema error: where (``cells[2].metadata``) and what, the value shortened."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    where = where or "the top level"
    value = error.instance
    if (error.validator == "oneOf" and isinstance(value, dict) and where.startswith("cells[")
            and value.get("cell_type") not in CELL_TYPES):
        return f"{where}: cell_type {shown(value.get('cell_type'))} is not one of {', '.join(CELL_TYPES)}"
    if error.validator in ("oneOf", "anyOf") and error.context and all(c.validator == "type" for c in error.context):
        kinds = " or ".join(repr(c.validator_value) for c in error.context)
        return f"{where}: {shown(value)} is not of type {kinds}"
    message = error.message
    try:
        full = repr(value)
    except (ValueError, RecursionError):
        full = ""
    if full and message.startswith(full):
        message = shown(value) + message[len(full):]
    return f"{where}: {message if len(message) <= 200 else message[:197] + '...'}"


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def no_parameters_cell(path: Path | str) -> NotebookError:
    """The error of a notebook without a ``parameters`` cell that must have one (or is given values)."""
    return NotebookError(
        f"{path}: no code cell tagged 'parameters'; tag the cell holding the parameters "
        "(JupyterLab: property inspector > cell tags)"
    )


def find_parameters_cell(nb: dict, path: Path, required: bool = True) -> int | None:
    """Index of the one cell tagged ``parameters``; None when there is none and none is REQUIRED."""
    hits = [
        i for i, c in enumerate(nb["cells"])
        if c.get("cell_type") == "code" and PARAMETERS_TAG in (c.get("metadata", {}).get("tags") or [])
    ]
    if not hits:
        if not required:
            return None
        raise no_parameters_cell(path)
    if len(hits) > 1:
        raise NotebookError(f"{path}: {len(hits)} cells tagged 'parameters' (cells {hits}); keep exactly one")
    return hits[0]


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return comments


def _parse_annotation(node: ast.expr, source: str, where: str) -> tuple[str, list | None, bool]:
    """(type, choices, nullable) from an annotation node."""
    # X | None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        for inner, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(other, ast.Constant) and other.value is None:
                kind, choices, _ = _parse_annotation(inner, source, where)
                return kind, choices, True
    if isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute)):
        head = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
        if head == "Optional":
            kind, choices, _ = _parse_annotation(node.slice, source, where)
            return kind, choices, True
        if head == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            try:
                return "Literal", [ast.literal_eval(e) for e in elts], False
            except (ValueError, TypeError, RecursionError) as exc:
                raise NotebookError(f"{where}: Literal choices must be constants") from exc
        if head in ("list", "List", "dict", "Dict"):
            return head.lower(), None, False
    if isinstance(node, ast.Name) and node.id in SIMPLE_TYPES:
        return node.id, None, False
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in SIMPLE_TYPES:
        return node.value, None, False
    text = ast.get_source_segment(source, node) or ast.dump(node)
    raise NotebookError(
        f"{where}: unsupported parameter type {text!r}; use int, float, bool, str, list, dict or Literal[...]"
    )


def _infer_type(value: Any) -> str:
    for kind in ("bool", "int", "float", "str", "list", "dict"):
        if type(value).__name__ == kind:
            return kind
    return "str"


def parse_parameters(source: str, where: str) -> list[Parameter]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"{where}: the parameters cell is not valid Python (line {exc.lineno}: {exc.msg})") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes; nesting the parser cannot hold
        raise NotebookError(f"{where}: the parameters cell is not valid Python ({exc})") from exc
    comments = _comments_by_line(source)
    params: list[Parameter] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name, value_node = stmt.target.id, stmt.value
            if value_node is None:
                raise NotebookError(f"{where}: parameter {name!r} has a type but no default value")
            kind, choices, nullable = _parse_annotation(stmt.annotation, source, f"{where}: parameter {name!r}")
            annotation = ast.get_source_segment(source, stmt.annotation) or kind
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value_node = stmt.targets[0].id, stmt.value
            kind, choices, nullable, annotation = None, None, False, ""
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        elif isinstance(stmt, ast.ImportFrom) and stmt.module == "typing":
            continue  # `from typing import Literal`, needed for Literal annotations to run
        else:
            line = ast.get_source_segment(source, stmt) or ""
            raise NotebookError(
                f"{where}: the parameters cell may hold only assignments like `rows: int = 1000  # help`; "
                f"found {line.splitlines()[0] if line else type(stmt).__name__!r} on line {stmt.lineno}"
            )
        try:
            default = ast.literal_eval(value_node)
        except (ValueError, TypeError, RecursionError) as exc:
            raise NotebookError(f"{where}: the default of parameter {name!r} must be a literal value") from exc
        if kind is None:
            kind = _infer_type(default)
            nullable = default is None
        param = Parameter(name=name, type=kind, default=default, help=comments.get(stmt.lineno, ""),
                          choices=choices, nullable=nullable, annotation=annotation, line=stmt.lineno)
        _check_default(param, where)
        params.append(param)
    return params


def _check_default(p: Parameter, where: str) -> None:
    """A default of the declared type (None is allowed: the parameter is then optional)."""
    if p.default is None or p.accepts(p.default):
        return
    got = f"{shown(p.default)}, of type {type(p.default).__name__}"
    if not p.annotation:
        raise NotebookError(f"{where}: the default of parameter {p.name!r} is {got}, which stackbook cannot pass; "
                            "use an int, float, bool, str, list or dict")
    raise NotebookError(f"{where}: parameter {p.name!r} is declared {p.annotation} but its default is {got}; "
                        f"give it a default of type {p.describe_type()} or change the annotation (line {p.line})")


def _title(nb: dict, fallback: str) -> str:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "markdown":
            for line in cell_source(cell).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            break
    return fallback


def _metadata(nb: dict, path: Path) -> dict[str, Any]:
    raw = nb.get("metadata", {}).get("stackbook", {})
    if not isinstance(raw, dict):
        raise NotebookError(f"{path}: metadata.stackbook must be a mapping")
    meta = dict(raw)
    for key, (kind, default) in METADATA_FIELDS.items():
        if key not in meta or meta[key] is None:
            meta[key] = list(default) if isinstance(default, list) else default
        elif not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise NotebookError(f"{path}: metadata.stackbook.{key} has the wrong type ({meta[key]!r})")
    if not all(isinstance(c, str) and c.strip() for c in meta["controls"]):
        raise NotebookError(f"{path}: metadata.stackbook.controls must be a list of control ids such as "
                            f"\"SOC2 CC7.5\" or \"ISO27001 A.5.30\", not {meta['controls']!r}")
    return meta


def load(path: Path | str, runbooks_root: Path | None = None, *, require_parameters: bool = True) -> Runbook:
    """The runbook at PATH; REQUIRE_PARAMETERS False lets a notebook without a parameters cell load (no parameters).

    A notebook in another language than Python keeps its parameters cell's text unparsed: no declared parameters.
    """
    path = Path(path)
    nb = read_json(path)
    index = find_parameters_cell(nb, path, required=require_parameters)
    language = _kernel_language(nb)
    params = []
    if index is not None and language.lower() == DEFAULT_LANGUAGE:
        params = parse_parameters(cell_source(nb["cells"][index]), f"{path} (parameters cell)")
    area = ""
    if runbooks_root is not None:
        try:
            area = path.resolve().relative_to(runbooks_root.resolve()).parts[0]
        except (ValueError, IndexError):
            area = ""
    return Runbook(
        name=path.stem,
        path=path,
        area=area if area != path.name else "",
        title=_title(nb, path.stem),
        metadata=_metadata(nb, path),
        parameters=params,
        parameters_cell_index=index,
        kernel=_kernel_name(nb),
        language=language,
    )


def _kernel_name(nb: dict) -> str:
    """The notebook's ``metadata.kernelspec.name`` (the schema makes it a string when present), else python3."""
    spec = (nb.get("metadata") or {}).get("kernelspec") or {}
    return spec.get("name") or DEFAULT_KERNEL


def _kernel_language(nb: dict) -> str:
    """The notebook's ``metadata.kernelspec.language``, else ``metadata.language_info.name``, else python."""
    meta = nb.get("metadata") or {}
    spec, info = meta.get("kernelspec") or {}, meta.get("language_info") or {}
    language = spec.get("language") or info.get("name")
    return language if isinstance(language, str) and language else DEFAULT_LANGUAGE


def code_sha256(nb: dict) -> str:
    """SHA-256 of a notebook's code as it runs: the source of every code cell (the parameters cell included),
    in order, as canonical JSON; markdown and raw cells, outputs and metadata do not count, nor the cells a run
    adds (papermill's ``injected-parameters``). The run ledger records it; an approval is bound to it."""
    import hashlib

    sources = [cell_source(c) for c in nb.get("cells", []) if c.get("cell_type") == "code"
               and "injected-parameters" not in (c.get("metadata", {}).get("tags") or [])]
    text = json.dumps(sources, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
