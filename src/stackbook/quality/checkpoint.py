"""Great Expectations (GX Core 1.x), run the way stackbook needs it: ephemeral, offline, in PostgreSQL.

Why an ephemeral context and no ``gx/`` project folder: the suites are files in the repository
(``quality.suites``), the results go to the ledger and to the history table, and the Data Docs
to a folder per run; a GX project folder would be a second copy of all three, drifting. The
context lives for one validation; it is cheap (milliseconds), the import of GX is not (about
3 s), so a runbook imports GX once and validates every suite in one checkpoint.

The data stays in the database: each raw table is a table asset of GX's SQL datasource for
PostgreSQL (SQLAlchemy with psycopg 3), so every expectation becomes a query (counts, ``not
in``, ``between``) and only the results and a bounded sample of unexpected values come back.

Usage statistics are off twice: ``GX_ANALYTICS_ENABLED=False`` in every process stackbook
starts (``core.privacy``) and ``analytics_enabled=False`` in the context's own configuration;
progress bars are off (they would fill the executed notebook).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stackbook.core.errors import QualityError
from stackbook.quality.results import ExpectationResult
from stackbook.quality.suites import Suite

DATASOURCE = "stackbook_postgres"
SITE = "stackbook"
CHECKPOINT = "validate_raw"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 10}


def sqlalchemy_url(database_url: str) -> str:
    """The psycopg URL as SQLAlchemy's ``postgresql+psycopg://`` (the driver the project ships)."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise QualityError(f"cannot validate through a {parts.scheme}:// database URL: GX's PostgreSQL datasource "
                           "needs postgresql://")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def context(docs_dir: Path | None):
    """An ephemeral GX context: analytics and progress bars off, a Data Docs site in DOCS_DIR (if given)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[SITE] = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                       "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                         "base_directory": str(docs_dir)},
                       "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False),
                               data_docs_sites=sites)
    return gx.get_context(mode="ephemeral", project_config=config)


def _validation_definitions(ctx, suites: list[Suite], raw_schema: str, database_url: str) -> list:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    source = ctx.data_sources.add_postgres(name=DATASOURCE, connection_string=sqlalchemy_url(database_url))
    definitions = []
    for suite in suites:
        with warnings.catch_warnings():  # GX 1.24 would rather have the schema in the connection; one
            warnings.filterwarnings("ignore", message="`schema_name` is deprecated")  # datasource serves both
            asset = source.add_table_asset(name=suite.table, table_name=suite.table, schema_name=raw_schema)
        batch = asset.add_batch_definition_whole_table("whole table")
        try:
            expectations = [ExpectationConfiguration(**{k: v for k, v in e.items() if k != "id"}).to_domain_obj()
                            for e in suite.for_schema(raw_schema)]
        except (TypeError, ValueError, KeyError) as exc:
            raise QualityError(f"expectation suite {suite.path}: an expectation GX cannot build ({exc}); fix the "
                               "file") from None
        gx_suite = ctx.suites.add(gx.ExpectationSuite(name=suite.name, expectations=expectations,
                                                      notes=suite.notes or None))
        definitions.append(ctx.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite)))
    return definitions


def run(suites: list[Suite], *, raw_schema: str, parameters: dict[str, Any], database_url: str,
        docs_dir: Path | None = None, run_name: str | None = None) -> tuple[list[ExpectationResult], float]:
    """Validate every suite in one checkpoint; (results, seconds). Builds the Data Docs into DOCS_DIR."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    started = time.perf_counter()
    ctx = context(docs_dir)
    definitions = _validation_definitions(ctx, suites, raw_schema, database_url)
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=CHECKPOINT, validation_definitions=definitions,
                                                   result_format=RESULT_FORMAT))
    outcome = checkpoint.run(expectation_parameters=parameters, run_id=RunIdentifier(run_name=run_name))
    if docs_dir is not None:  # once for all suites (GX's UpdateDataDocsAction rebuilds the site per suite)
        ctx.build_data_docs(site_names=[SITE])
    tables = {s.name: s.table for s in suites}
    results = [_result(tables[suite_result.suite_name], suite_result.suite_name, r)
               for suite_result in outcome.run_results.values() for r in suite_result.results]
    return results, round(time.perf_counter() - started, 3)


def plain(values: list) -> list:
    """VALUES as JSON values (timestamps and decimals as text), as the ledger and the tables show them."""
    return json.loads(json.dumps(list(values), default=str))


def _result(table: str, suite: str, r) -> ExpectationResult:
    """A GX ``ExpectationValidationResult`` as an ``ExpectationResult``."""
    config = r.expectation_config
    kwargs = config.kwargs or {}
    column = kwargs.get("column") or (", ".join(kwargs["column_list"]) if kwargs.get("column_list") else None)
    details = r.result or {}
    info = r.exception_info or {}
    if "raised_exception" not in info and info:  # several metrics failed: GX keys the infos by metric
        info = next(iter(info.values()), {})
    error = None
    if info.get("raised_exception"):
        error = " ".join(str(info.get("exception_message") or "unknown error").split())[:500]
    unexpected = details.get("unexpected_count")
    if config.type == "unexpected_rows_expectation" and error is None:
        unexpected = details.get("observed_value")
    return ExpectationResult(
        suite=suite, table=table, type=config.type, column=column, success=bool(r.success) and error is None,
        description=config.description or config.type.replace("_", " "), observed=details.get("observed_value"),
        unexpected_count=unexpected, element_count=details.get("element_count"),
        sample=plain(details.get("partial_unexpected_list") or []), error=error,
        query=kwargs.get("unexpected_rows_query"))
