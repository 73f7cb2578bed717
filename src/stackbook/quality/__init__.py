"""Data quality of the raw tables with Great Expectations, for ``runbooks/quality``.

The dbt tests check the warehouse dbt builds; this checks what the loader put in ``raw``
before dbt reads it, so that bad data stops the daily flow before the marts are rebuilt
on top of it. Modules, one concern each:

- ``suites``: the expectation suites, files in ``pipelines/quality/expectations/``
- ``checkpoint``: an ephemeral GX context, one checkpoint over PostgreSQL (only module importing GX)
- ``results``: one row per expectation, the failure naming each one, the history of validated loads
- ``datadocs``: GX's Data Docs in a folder per run, rewritten to load nothing from outside
- ``validate``: ``validate_raw``, what the runbook calls
"""

from stackbook.core.errors import ExpectationsFailed, QualityError  # noqa: F401 (re-exported)
from stackbook.quality.results import ExpectationResult, Validation
from stackbook.quality.suites import Suite, suites_dir
from stackbook.quality.suites import describe as describe_suites
from stackbook.quality.suites import load as load_suites
from stackbook.quality.validate import validate_raw

__all__ = ["ExpectationResult", "ExpectationsFailed", "QualityError", "Suite", "Validation", "describe_suites",
           "load_suites", "suites_dir", "validate_raw"]
