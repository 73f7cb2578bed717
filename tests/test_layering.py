"""Contract over the package's layers: which part of stackbook may import which.

From the bottom: ``core`` < ``run`` < the adapters (``k8s``, ``notify``) < the runbook areas (``ops``,
``ingest``, ``quality``, ``transform``, ``train``, ``provision``, ``audit``, ``dr``) < ``pipelines``,
``schedules``, ``book`` < ``cli``. A module imports from its own layer's package and from
layers below, never above; an area never imports another area; only ``cli`` imports click.
The package root (``stackbook``: ``record`` for runbooks) counts as core.

Every module under src/stackbook is parsed with ``ast``, so imports inside functions (the
lazy ones that keep start-up fast) count as much as those at the top. A violation fails
naming the module, the line and the imported name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
AREAS = ("ops", "ingest", "quality", "transform", "train", "provision", "audit", "dr")
LAYERS = {  # top-level package under stackbook -> (rank, layer name)
    "core": (0, "core"),
    "run": (1, "run"),
    "k8s": (2, "k8s adapter"),
    "notify": (2, "notify adapter"),  # sends run events out (mail, chat): uses core and run, used from above
    **{area: (3, "areas") for area in AREAS},
    **{upper: (4, "pipelines/schedules/book") for upper in ("pipelines", "schedules", "book")},
    "cli": (5, "cli"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: Path
    line: int
    name: str  # the imported module, dotted (``from a import b`` gives a.b when b is a module, else a)
    names: tuple[str, ...] = ()  # what ``from a import x, y`` takes from module a

    def where(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.path.relative_to(SRC.parent)}:{self.line} {self.module} imports {self.name}{taken}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import in the module at ``path`` (its text, or ``source``), resolved to the module it names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            modules = [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]
            names = tuple(alias.name for alias in node.names if f"{base}.{alias.name}" not in modules)
            found += [Import(module, path, node.lineno, name) for name in modules]
            if names:
                found.append(Import(module, path, node.lineno, base, names))
    return found


ALL_IMPORTS = [imp for path in sorted((SRC / "stackbook").rglob("*.py")) for imp in _imports_of(path)]


def _package(dotted: str) -> str | None:
    """The layer package of a stackbook module (``stackbook.run.db`` -> ``run``); None for the package root."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def _internal(imports: list[Import]) -> list[tuple[Import, str | None, str | None]]:
    return [(imp, _package(imp.module), _package(imp.name)) for imp in imports
            if imp.name == "stackbook" or imp.name.startswith("stackbook.")]


def _rank(package: str | None) -> int:
    """The package's rank; -1 for a package without a layer (test_every_package_has_a_layer names it)."""
    return LAYERS.get(package, (-1,))[0] if package else 0


def test_the_walk_sees_every_layer():
    packages = {_package(imp.module) for imp in ALL_IMPORTS}
    assert set(LAYERS) <= packages, f"no module found for {set(LAYERS) - packages}"
    assert len(ALL_IMPORTS) > 300


def test_every_package_has_a_layer():
    packages = {p.name for p in (SRC / "stackbook").iterdir() if p.is_dir() and any(p.glob("*.py"))}
    unknown = sorted(packages - set(LAYERS))
    assert unknown == [], f"packages without a layer (add them to LAYERS in {Path(__file__).name}): {unknown}"


def test_no_module_imports_a_layer_above_its_own():
    wrong = [f"{imp.where()}: {LAYERS[own][1] if own else 'core'} may not import {LAYERS[target][1]}"
             for imp, own, target in _internal(ALL_IMPORTS) if _rank(target) > _rank(own) >= 0]
    assert wrong == [], "imports from a higher layer:\n" + "\n".join(wrong)


def test_no_area_imports_another_area():
    wrong = [f"{imp.where()}: area {own!r} may not use area {target!r} (move what both need down to core or run)"
             for imp, own, target in _internal(ALL_IMPORTS) if own in AREAS and target in AREAS and own != target]
    assert wrong == [], "imports across areas:\n" + "\n".join(wrong)


def test_only_the_cli_imports_click():
    wrong = [f"{imp.where()}: only stackbook.cli talks to click" for imp in ALL_IMPORTS
             if (imp.name == "click" or imp.name.startswith("click.")) and _package(imp.module) != "cli"]
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from stackbook.run import db\n", ["stackbook.run.db"]),
    ("from stackbook.core.errors import UsageError\n", ["stackbook.core.errors"]),
    ("def f():\n    import stackbook.cli\n", ["stackbook.cli"]),
    ("from . import toc\nfrom ..core import project\n", ["stackbook.book.toc", "stackbook.core.project"]),
])
def test_the_parser_resolves_what_is_imported(source, expected):
    """Imports inside functions and relative imports resolve to the module they name."""
    probe = SRC / "stackbook" / "book" / "probe.py"  # never written: the text is parsed as if it lived there
    assert [imp.name for imp in _imports_of(probe, source)] == expected
