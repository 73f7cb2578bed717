"""The expectation suites: files in the repository, read into what Great Expectations runs.

Why files in ``pipelines/quality/expectations/`` beside the dbt project, one per raw table, in
GX's own suite format (``name``, ``expectations`` of ``type``, ``kwargs``, ``description``):
a reviewer sees a changed expectation in a diff, as a changed dbt test, and GX reads them as
they are. Two things in a suite are filled in at validation time and never edited by hand:

- ``{{ raw_schema }}`` inside an ``unexpected_rows_query`` is replaced by the quoted schema
  being validated (the foreign-key checks query the parent table in the same schema);
- ``{"$PARAMETER": name}`` values are GX's suite parameters, computed by ``parameters``:
  the generated years' time range and each table's row-count band around its last
  validated load.

``meta.stackbook.table`` names the table a suite validates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from stackbook.core import project
from stackbook.core.errors import QualityError
from stackbook.core.files import read_text

SCHEMA_TOKEN = "{{ raw_schema }}"
#: jafgen's calendar: its simulation starts here and runs 365 days per simulated year
JAFFLE_START = datetime(2018, 9, 1)


@dataclass(frozen=True)
class Suite:
    """One suite file: its name, the table it validates and its expectations (GX dicts)."""

    name: str
    table: str
    path: Path
    expectations: tuple[dict[str, Any], ...]
    notes: str = ""

    def parameter_names(self) -> set[str]:
        """The ``$PARAMETER`` names its expectations use."""
        return {v["$PARAMETER"] for e in self.expectations for v in e.get("kwargs", {}).values()
                if isinstance(v, dict) and "$PARAMETER" in v}

    def for_schema(self, schema: str) -> list[dict[str, Any]]:
        """The expectations with ``{{ raw_schema }}`` replaced by SCHEMA, quoted as an SQL identifier."""
        quoted = '"' + schema.replace('"', '""') + '"'
        out = []
        for e in self.expectations:
            kwargs = {k: (v.replace(SCHEMA_TOKEN, quoted) if isinstance(v, str) else v)
                      for k, v in e.get("kwargs", {}).items()}
            out.append({**e, "kwargs": kwargs})
        return out


def suites_dir() -> Path:
    return project.root() / "pipelines" / "quality" / "expectations"


def _parse(path: Path) -> Suite:
    try:
        doc = json.loads(read_text(path, what="expectation suite", error=QualityError))
    except json.JSONDecodeError as exc:
        raise QualityError(f"expectation suite {path} is not valid JSON (line {exc.lineno}: {exc.msg}): "
                           "fix the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("expectations"), list) or not doc.get("name"):
        raise QualityError(f"expectation suite {path} needs a `name` and a list of `expectations` "
                           "(GX's suite format)")
    table = ((doc.get("meta") or {}).get("stackbook") or {}).get("table") or doc["name"]
    for i, e in enumerate(doc["expectations"]):
        if not isinstance(e, dict) or not isinstance(e.get("type"), str) or not isinstance(e.get("kwargs", {}), dict):
            raise QualityError(f"expectation suite {path}: expectation {i} needs a `type` and `kwargs` mapping")
    return Suite(name=str(doc["name"]), table=str(table), path=path, notes=str(doc.get("notes") or ""),
                 expectations=tuple(doc["expectations"]))


def load(names: list[str] | None = None, folder: Path | None = None) -> list[Suite]:
    """The suites in FOLDER (default ``pipelines/quality/expectations``), sorted; NAMES picks some."""
    folder = folder or suites_dir()
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise QualityError(f"no expectation suites (*.json) in {folder}: restore pipelines/quality/expectations "
                           "from git")
    suites = [_parse(p) for p in paths]
    if names:
        known = {s.name for s in suites}
        unknown = sorted(set(names) - known)
        if unknown:
            raise QualityError(f"no expectation suite named {', '.join(unknown)} in {folder} "
                               f"(there are: {', '.join(sorted(known))})")
        suites = [s for s in suites if s.name in names]
    return suites


def time_range(years: int) -> tuple[str, str]:
    """The first and last moment of ``years`` simulated years (ISO timestamps), as jafgen generates them."""
    if isinstance(years, bool) or not isinstance(years, int) or years < 1:
        raise QualityError(f"years must be a whole number of at least 1, got {years!r}")
    end = JAFFLE_START + timedelta(days=365 * years) - timedelta(microseconds=1)
    return JAFFLE_START.isoformat(sep=" "), end.isoformat(sep=" ")


def row_band(previous: int | None, min_ratio: float, max_ratio: float) -> tuple[int, int | None]:
    """The accepted row counts given the last validated count: at least one row when there is none."""
    if not 0 <= min_ratio <= 1 <= max_ratio:
        raise QualityError(f"row-count band {min_ratio}..{max_ratio} must satisfy 0 <= min_row_ratio <= 1 <= "
                           "max_row_ratio")
    if previous is None:
        return 1, None
    return math.floor(previous * min_ratio), math.ceil(previous * max_ratio)


def parameters(suites: list[Suite], years: int, previous_counts: dict[str, int], min_ratio: float,
               max_ratio: float) -> dict[str, Any]:
    """Values for every ``$PARAMETER`` the suites use: ``ordered_at_min/max`` and ``<table>_rows_min/max``."""
    start, end = time_range(years)
    values: dict[str, Any] = {"ordered_at_min": start, "ordered_at_max": end}
    for suite in suites:
        low, high = row_band(previous_counts.get(suite.table), min_ratio, max_ratio)
        values[f"{suite.table}_rows_min"], values[f"{suite.table}_rows_max"] = low, high
    missing = sorted(n for s in suites for n in s.parameter_names() if n not in values)
    if missing:
        raise QualityError(f"the suites use parameters stackbook does not compute: {', '.join(missing)} "
                           f"(known: {', '.join(sorted(values))})")
    return values


def describe(suites: list[Suite]):
    """One row per suite: its table, how many expectations and of which kinds, its file."""
    import pandas as pd

    rows = [{"suite": s.name, "table": s.table, "expectations": len(s.expectations),
             "kinds": ", ".join(sorted({e["type"].removeprefix("expect_") for e in s.expectations})),
             "file": s.path.relative_to(project.root()).as_posix() if s.path.is_relative_to(project.root())
             else str(s.path)} for s in suites]
    return pd.DataFrame(rows, columns=["suite", "table", "expectations", "kinds", "file"])
