"""stackbook.quality and validate_raw against real Great Expectations on the real PostgreSQL.

A small, consistent Jaffle Shop (jafgen's raw layout, money in cents) is written into a scratch
schema per test; bad rows are planted there on purpose. The committed suites in
pipelines/quality/expectations are what runs. Nothing outside the scratch schemas (and the test
session's own database and state folder) is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from stackbook import quality
from stackbook.core.errors import ExpectationsFailed, QualityError
from stackbook.quality import datadocs, results
from stackbook.run import db as stackbook_db
from tests.conftest import ROOT, run_cli

RAW_DDL = """
create table {s}.raw_customers (id text, name text);
create table {s}.raw_stores (id text, name text, opened_at timestamp, tax_rate numeric);
create table {s}.raw_products (sku text, name text, type text, price bigint, description text);
create table {s}.raw_supplies (id text, name text, cost bigint, perishable boolean, sku text);
create table {s}.raw_orders (id text, customer text, ordered_at timestamp, store_id text, subtotal bigint,
                             tax_paid bigint, order_total bigint);
create table {s}.raw_items (id text, order_id text, sku text);
insert into {s}.raw_customers select 'c' || i, 'Customer ' || i from generate_series(0, 11) i;
insert into {s}.raw_stores values ('s1', 'Philadelphia', '2018-09-01', 0.06), ('s2', 'Brooklyn', '2019-03-12', 0.04);
insert into {s}.raw_products values ('JAF-001', 'nutellaphone', 'jaffle', 1100, 'nutella'),
    ('JAF-002', 'doctor stew', 'jaffle', 1100, 'stew'), ('BEV-001', 'tangaroo', 'beverage', 600, 'smoothie'),
    ('BEV-002', 'chai', 'beverage', 500, 'latte');
insert into {s}.raw_supplies values ('SUP-001', 'knife', 7, false, 'JAF-001'),
    ('SUP-001', 'knife', 7, false, 'JAF-002'),
    ('SUP-002', 'bread', 33, true, 'JAF-001'), ('SUP-003', 'cup', 12, false, 'BEV-001');
insert into {s}.raw_orders
    select 'o' || n, 'c' || (n % 10), timestamp '2018-09-02 08:00' + n * interval '5 days', 's' || (1 + n % 2),
           1100, 66, 1166 from generate_series(0, 59) n;
insert into {s}.raw_items select 'o' || n || '-0', 'o' || n, 'JAF-001' from generate_series(0, 59) n;
"""

PLANTED = {  # what is planted -> the expectation whose failure names it
    "duplicate key": ("insert into {s}.raw_customers values ('c1', 'Another Customer 1')",
                      "raw_customers.expect_column_values_to_be_unique(id)"),
    "negative amount": ("update {s}.raw_orders set subtotal = -100, order_total = -34 where id = 'o3'",
                        "raw_orders.expect_column_values_to_be_between(subtotal)"),
    "unknown customer": ("update {s}.raw_orders set customer = 'nobody' where id = 'o4'",
                         "every order's customer is in raw_customers"),
    "timestamp out of range": ("update {s}.raw_orders set ordered_at = '2030-01-01' where id = 'o5'",
                               "raw_orders.expect_column_values_to_be_between(ordered_at)"),
}


@pytest.fixture()
def raw(db):
    """A scratch raw schema holding a small, valid shop."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    db.execute(f'create schema "{schema}"')
    db.execute(RAW_DDL.format(s=f'"{schema}"'))
    yield schema
    db.execute(f'drop schema if exists "{schema}" cascade')


def _history(db, schema: str) -> list[tuple]:
    exists = db.execute("select to_regclass(%s) is not null", (f'"{schema}".{results.HISTORY_TABLE}',)).fetchone()[0]
    if not exists:
        return []
    return db.execute(f'select suite, row_count, success from "{schema}".{results.HISTORY_TABLE} '
                      "order by suite, id").fetchall()


def test_the_committed_suites_cover_every_raw_table_jafgen_writes_but_tweets():
    suites = quality.load_suites()
    assert {s.table for s in suites} == {"raw_customers", "raw_orders", "raw_items", "raw_products", "raw_stores",
                                         "raw_supplies"}
    kinds = {e["type"] for s in suites for e in s.expectations}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_not_be_null",
            "expect_column_values_to_be_between", "unexpected_rows_expectation",
            "expect_table_row_count_to_be_between", "expect_compound_columns_to_be_unique"} <= kinds


def test_clean_data_passes_with_history_and_offline_data_docs(raw, db, database_url):
    validation = quality.validate_raw(raw, years=1)
    assert validation.success, validation.table()
    table = validation.table()
    assert len(table) == len(validation.results) >= 39 and table["success"].all()
    assert validation.row_counts == {"raw_customers": 12, "raw_orders": 60, "raw_items": 60, "raw_products": 4,
                                     "raw_stores": 2, "raw_supplies": 4}
    assert sorted(r[0] for r in _history(db, raw)) == sorted(validation.suite_success())
    assert all(ok for _, _, ok in _history(db, raw))
    validation.check()  # nothing to raise

    folder = Path(validation.docs_dir)
    assert set(validation.pages) == set(validation.suite_success())
    password = stackbook_db.password(database_url)
    for page in folder.rglob("*.html"):
        text = page.read_text()
        assert "https://" not in text and "http://" not in text and "//cdn" not in text, page
        assert "<script" not in text, page
        if password:
            assert password not in text, page
    for suite, rel in validation.pages.items():
        text = (folder / rel).read_text()
        assert suite in text and datadocs.OFFLINE_CSS in text
    assert (folder / datadocs.OFFLINE_CSS).is_file() and (folder / "index.html").is_file()


def test_planted_bad_rows_fail_naming_each_expectation_with_samples(raw, db):
    for statement, _ in PLANTED.values():
        db.execute(statement.format(s=f'"{raw}"'))
    validation = quality.validate_raw(raw, years=1, data_docs=False)
    assert not validation.success
    with pytest.raises(ExpectationsFailed) as caught:
        validation.check()
    message = str(caught.value)
    for what, (_, name) in PLANTED.items():
        assert name in message, f"{what}: {name} not named in {message}"
    failed = {r.name: r for r in validation.failures}
    assert failed["raw_customers.expect_column_values_to_be_unique(id)"].sample == ["c1", "c1"]
    assert -100 in failed["raw_orders.expect_column_values_to_be_between(subtotal)"].sample
    fk = next(r for r in validation.failures if r.description == "every order's customer is in raw_customers")
    assert fk.unexpected_count == 1 and fk.sample[0]["customer"] == "nobody" and fk.sample[0]["id"] == "o4"
    assert "2030-01-01" in str(failed["raw_orders.expect_column_values_to_be_between(ordered_at)"].sample)
    samples = validation.samples()
    assert set(samples["expectation"]) == set(failed)
    # passing expectations stay passing: the rest of the shop is fine
    assert validation.suite_success()["raw_products"] and validation.suite_success()["raw_items"]
    assert {suite for suite, _, ok in _history(db, raw) if not ok} == {"raw_customers", "raw_orders"}


def test_row_count_band_follows_the_last_validated_load(raw, db):
    first = quality.validate_raw(raw, data_docs=False)
    assert first.success
    db.execute(f'delete from "{raw}".raw_items where id > %s', ("o3",))  # most of the items gone
    shrunk = quality.validate_raw(raw, data_docs=False, min_row_ratio=0.9)
    assert [r.name for r in shrunk.failures] == ["raw_items.expect_table_row_count_to_be_between"]
    assert shrunk.parameters["raw_items_rows_min"] == 54 and shrunk.parameters["raw_items_rows_max"] == 600
    # the failed validation does not move the band: the next one still compares with 60 rows
    again = quality.validate_raw(raw, data_docs=False, min_row_ratio=0.9)
    assert again.parameters["raw_items_rows_min"] == 54 and not again.success
    assert quality.validate_raw(raw, data_docs=False, min_row_ratio=0.0).success


def test_missing_tables_and_bad_suites_are_clear_errors_and_record_nothing(scratch_schema, db, tmp_path):
    with pytest.raises(QualityError, match=rf"no table {scratch_schema}\.raw_customers, .*load_jaffle_shop"):
        quality.validate_raw(scratch_schema, data_docs=False)
    assert _history(db, scratch_schema) == []
    (tmp_path / "broken.json").write_text('{"name": "broken", "expectations": [')
    with pytest.raises(QualityError, match=r"broken\.json is not valid JSON .*fix the file"):
        quality.load_suites(folder=tmp_path)
    with pytest.raises(QualityError, match=r"no expectation suite named nope"):
        quality.load_suites(["nope"])
    with pytest.raises(QualityError, match=r"years must be a whole number"):
        quality.validate_raw(scratch_schema, years=0, data_docs=False)


def test_offline_html_removes_everything_fetched_from_outside():
    page = ('<html><head><link rel="stylesheet" href="https://cdn.example/b.css"/>'
            '<script src="https://code.jquery.com/jquery.js"></script></head><body>'
            '<img class="x" src="https://bucket.example/logo.png?d=1" alt="l"/>'
            '<button onclick="showAll()">all</button><div style="background: url(\'https://x.example/a.png\')"></div>'
            "<script>$('.x').modal();</script><footer><a href='https://x.example'>news</a></footer></body></html>")
    out = datadocs.offline_html(page, depth=2)
    assert "https" not in out and "<script" not in out and "onclick" not in out and "<footer" not in out
    assert f'href="../../{datadocs.OFFLINE_CSS}"' in out and f'src="../../{datadocs.LOGO}"' in out


def test_validation_contacts_no_outside_host(raw, tmp_path):
    """GX's usage statistics are off; an audit hook sees every connection and name lookup of a full validation."""
    from stackbook.core.privacy import TELEMETRY_OFF

    assert TELEMETRY_OFF["GX_ANALYTICS_ENABLED"] == "False"
    probe = tmp_path / "probe.py"
    probe.write_text(f"""
import json, sys
seen = []
def hook(event, args):
    if event == "socket.connect":
        seen.append(["connect", str(args[1])])
    elif event == "socket.getaddrinfo":
        seen.append(["getaddrinfo", str(args[0])])
sys.addaudithook(hook)
from stackbook import quality
from stackbook.quality import checkpoint
assert checkpoint.context(None).config.analytics_enabled is False
v = quality.validate_raw({raw!r}, save_history=False)
outside = list(seen)
# control: a loopback connection through Python's socket module (what requests, GX's HTTP client, uses);
# PostgreSQL's own connections go through libpq, below the hook
import socket
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname()).close()
print(json.dumps({{"success": v.success, "seen": outside, "control": seen[len(outside):]}}))
""")
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["success"]
    assert any(kind == "connect" and "127.0.0.1" in where for kind, where in found["control"]), found["control"]
    local = ("127.", "localhost", "::1", "/")  # loopback addresses, or a unix socket path
    outside = [s for s in found["seen"] if not any(s[1].lstrip("('").startswith(p) for p in local)]
    assert outside == [], outside


def test_pipeline_stops_before_the_warehouse_on_bad_raw_data(raw, db, tmp_path):
    """validate_raw -> build_warehouse, as in the daily pipeline: bad rows fail the check and nothing is built."""
    from stackbook.pipelines import run

    db.execute(PLANTED["unknown customer"][0].format(s=f'"{raw}"'))
    prefix = f"{raw}_"
    folder = tmp_path / f"q{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    spec = {"tasks": [
        {"source": "validate_raw", "product": {"nb": "validate_raw.ipynb"}, "params": {"raw_schema": raw}},
        {"source": "build_warehouse", "upstream": ["validate_raw"], "product": {"nb": "build_warehouse.ipynb"},
         "params": {"raw_schema": raw, "schema_prefix": prefix}},
    ]}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        summary = run(str(folder / "pipeline.yaml"), env="dev")
        tasks = {t["name"]: t for t in summary["tasks"]}
        assert summary["status"] == "failed"
        assert tasks["validate_raw"]["status"] == "failed"
        assert tasks["build_warehouse"]["status"] == "upstream_failed"
        row = db.execute("select error, results from stackbook.runs where pipeline_run_id = %s and runbook = %s",
                         (summary["pipeline_run_id"], "validate_raw")).fetchone()
        error, recorded = row
        assert error["ename"] == "ExpectationsFailed"
        assert "every order's customer is in raw_customers" in error["evalue"]
        assert recorded["expectations_failed"] == ["raw_orders.unexpected_rows_expectation"]
        built = db.execute("select count(*) from information_schema.schemata where schema_name in (%s, %s)",
                           (f"{prefix}staging", f"{prefix}marts")).fetchone()[0]
        assert built == 0, "the warehouse was built on bad data"
    finally:
        db.execute(f'drop schema if exists "{prefix}staging" cascade')
        db.execute(f'drop schema if exists "{prefix}marts" cascade')


def test_runbook_publishes_data_docs_in_the_book(raw, tmp_path, database_url):
    """The runbook's ledger row names its Data Docs; the book copies them and links each suite from the chapter."""
    from stackbook.book import generate

    res = run_cli("run", "validate_raw", "-e", "dev", "--json", "-p", f"raw_schema={raw}")
    assert res.code == 0, res
    recorded = res.json()["results"]
    assert recorded["expectations_failed"] == [] and set(recorded["data_docs_pages"]) == set(recorded["suite_success"])
    src = tmp_path / "src"
    generate.generate("dev", src, runbook_paths=[ROOT / "runbooks" / "quality" / "validate_raw.ipynb"])
    chapter = json.loads((src / "runbooks" / "quality" / "validate_raw.ipynb").read_text())
    section = next(c["source"] for c in chapter["cells"] if c["source"].startswith("## Data Docs"))
    for suite, page in recorded["data_docs_pages"].items():
        assert (src / "_extra" / "data_docs" / page).is_file()
        assert f'href="../../data_docs/{page}"' in section and f">{suite}</a>" in section
    assert (src / "_extra" / "data_docs" / "index.html").is_file()
