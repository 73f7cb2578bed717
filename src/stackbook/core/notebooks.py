"""Reading runbooks: the parameters cell, the metadata and the title.

Notebooks are read as plain JSON (not through nbformat, whose schema
validation costs a second of imports) so that ``list`` and ``show`` start fast.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stackbook.core.errors import NotebookError

PARAMETERS_TAG = "parameters"
SIMPLE_TYPES = ("int", "float", "bool", "str", "list", "dict")

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


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            nb = json.load(fh)
    except FileNotFoundError as exc:
        raise NotebookError(f"{path}: no such notebook") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotebookError(f"{path}: not a valid notebook (malformed JSON: {exc})") from exc
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path}: not a valid notebook (no 'cells' list)")
    return nb


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def find_parameters_cell(nb: dict, path: Path) -> int:
    hits = [
        i for i, c in enumerate(nb["cells"])
        if c.get("cell_type") == "code" and PARAMETERS_TAG in (c.get("metadata", {}).get("tags") or [])
    ]
    if not hits:
        raise NotebookError(
            f"{path}: no code cell tagged 'parameters'; tag the cell holding the parameters "
            "(JupyterLab: property inspector > cell tags)"
        )
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
            except ValueError as exc:
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
        except ValueError as exc:
            raise NotebookError(f"{where}: the default of parameter {name!r} must be a literal value") from exc
        if kind is None:
            kind = _infer_type(default)
            nullable = default is None
        params.append(
            Parameter(name=name, type=kind, default=default, help=comments.get(stmt.lineno, ""),
                      choices=choices, nullable=nullable, annotation=annotation, line=stmt.lineno)
        )
    return params


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
    return meta


def load(path: Path | str, runbooks_root: Path | None = None) -> Runbook:
    path = Path(path)
    nb = read_json(path)
    index = find_parameters_cell(nb, path)
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
    )
