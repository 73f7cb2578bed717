"""What a load did: per-table figures and totals (the errors a load raises are in ``core.errors``)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from stackbook.core.errors import LoadError, TooManyBadRows  # noqa: F401 (re-exported)

QUARANTINE = "_stackbook_quarantine"  # same as stackbook.ingest.manifest.QUARANTINE

#: the columns of a per-table entry, in display order
COLUMNS = ("table", "file", "status", "method", "rows_loaded", "rows_inserted", "rows_updated",
           "rows_quarantined", "bad_ratio", "table_rows", "seconds", "message")


@dataclass
class LoadReport:
    """Per-table entries (dicts with the keys in ``COLUMNS``) and totals."""

    schema: str
    source_dir: str
    tables: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    max_bad_ratio: float = 0.001

    def check(self) -> LoadReport:
        """Raise :class:`TooManyBadRows` (a file over ``max_bad_ratio``) or :class:`LoadError` (a file that
        could not be loaded), naming every such file; else return the report."""
        rejected = [t for t in self.tables if t["status"] == "rejected"]
        failed = [t for t in self.tables if t["status"] == "failed"]
        if not rejected and not failed:
            return self
        parts = []
        for t in rejected:
            parts.append(f"{t['file']}: {t['rows_quarantined']} of {t['rows_quarantined'] + t['good_rows']} rows "
                         f"bad ({t['bad_ratio']:.2%}), over max_bad_ratio {self.max_bad_ratio:.2%}; "
                         f"nothing of it was loaded")
        for t in failed:
            parts.append(f"{t['file']}: {t['message']}")
        where = f" (bad rows are in {self.schema}.{QUARANTINE})" if rejected else ""
        msg = f"load of {self.source_dir} into {self.schema}: " + "; ".join(parts) + where
        raise (TooManyBadRows if rejected else LoadError)(msg, self)

    @property
    def rows_loaded(self) -> int:
        return sum(t["rows_loaded"] for t in self.tables)

    @property
    def rows_quarantined(self) -> int:
        return sum(t["rows_quarantined"] for t in self.tables)

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Files that were not loaded as a whole: empty, header only, rejected, failed."""
        return [t for t in self.tables if t["status"] not in ("loaded", "skipped")]

    def table(self, name: str) -> dict[str, Any]:
        for t in self.tables:
            if t["table"] == name:
                return t
        raise KeyError(f"no table {name!r} in this load; tables: {[t['table'] for t in self.tables]}")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per table plus a TOTAL row."""
        out = [{c: t.get(c) for c in COLUMNS} for t in self.tables]
        out.append({c: None for c in COLUMNS} | {
            "table": "TOTAL", "rows_loaded": self.rows_loaded, "rows_quarantined": self.rows_quarantined,
            "seconds": round(self.seconds, 3), "status": f"{len(self.tables)} files"})
        return out

    def _repr_html_(self) -> str:
        """The rows as an HTML table, for notebooks (no pandas import, which costs a runbook about a second)."""
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(r[c]))}</td>" for c in COLUMNS)
                       + "</tr>" for r in self.rows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (for ``stackbook.record``)."""
        return {
            "schema": self.schema,
            "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "seconds": round(self.seconds, 3),
            "tables": {t["table"]: {k: t.get(k) for k in ("status", "rows_loaded", "rows_quarantined",
                                                        "table_rows", "seconds")} for t in self.tables},
        }

    def __str__(self) -> str:
        lines = [f"load of {self.source_dir} into schema {self.schema}: {self.rows_loaded} rows loaded, "
                 f"{self.rows_quarantined} quarantined, {self.seconds:.2f}s"]
        for t in self.tables:
            lines.append(f"  {t['table']:<28} {t['status']:<12} loaded={t['rows_loaded']:<9} "
                         f"quarantined={t['rows_quarantined']:<6} {t['seconds']:.2f}s"
                         + (f"  {t['message']}" if t.get("message") else ""))
        return "\n".join(lines)
