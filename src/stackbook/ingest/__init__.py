"""Ingest: folders of CSV files into PostgreSQL, streamed with COPY, idempotent, bad rows quarantined.

``load_folder(source_dir, schema="raw", keys=None, encoding="utf-8", max_bad_ratio=0.001, spec=None,
conn=None, jobs=None) -> LoadReport`` is the entry point (see :mod:`stackbook.ingest.loader` for the rules);
:mod:`stackbook.ingest.jaffle` generates the Jaffle Shop data with dbt Labs' ``jafgen``.
"""

from __future__ import annotations

from stackbook.ingest.loader import FileError, SourceError, load_folder
from stackbook.ingest.report import LoadError, LoadReport, TooManyBadRows
from stackbook.ingest.tables import quarantine, table_checksum, table_counts

__all__ = ["load_folder", "LoadReport", "LoadError", "TooManyBadRows", "FileError", "SourceError",
           "quarantine", "table_checksum", "table_counts"]
