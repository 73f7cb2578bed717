"""Writing runbook notebooks: the JSON layout every runbook shares.

``notebook(cells, metadata)`` builds an output-free nbformat 4.5 notebook from
``("md", text)`` and ``("code", text)`` pairs; ``("params", text)`` is the code
cell tagged ``parameters`` and ``("setup", text)`` a code cell tagged ``setup`` (imports and connections,
re-run when a failed run is resumed). Cell ids are derived from the content, so writing
the same runbook twice gives the same file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _lines(text: str) -> list[str]:
    text = text.strip("\n")
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + [parts[-1]]


def notebook(cells: Iterable[tuple[str, str]], stackbook_meta: dict[str, Any]) -> dict[str, Any]:
    out = []
    for n, (kind, text) in enumerate(cells):
        cid = hashlib.sha1(f"{n}:{kind}:{text}".encode()).hexdigest()[:8]
        if kind == "md":
            out.append({"cell_type": "markdown", "id": cid, "metadata": {}, "source": _lines(text)})
        elif kind in ("code", "params", "setup"):
            meta = {"tags": [{"params": "parameters", "setup": "setup"}[kind]]} if kind != "code" else {}
            out.append({"cell_type": "code", "execution_count": None, "id": cid, "metadata": meta,
                        "outputs": [], "source": _lines(text)})
        else:
            raise ValueError(f"unknown cell kind {kind!r}: use md, params, setup or code")
    return {
        "cells": out,
        "metadata": {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
            "stackbook": stackbook_meta,
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write(path: Path | str, cells: Iterable[tuple[str, str]], stackbook_meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook(cells, stackbook_meta), indent=1, ensure_ascii=False) + "\n")
    return path
