"""stackbook.transform.dbt and build_warehouse against real dbt and the real PostgreSQL.

Everything builds into throwaway schemas (``<prefix>staging``, ``<prefix>marts``) from a small
raw Jaffle Shop written into a scratch schema; projects that are broken on purpose are temp
copies of ``pipelines/dbt``. The committed project and the shared schemas are never touched.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from stackbook.transform import dbt

ROOT = Path(__file__).resolve().parents[1]

# A tiny Jaffle Shop in jafgen's layout (file stem = table, money in cents), consistent with
# the project's tests: an order's subtotal is the sum of its items' prices.
PRODUCTS = [("JAF-001", "nutellaphone who dis?", "jaffle", 1100, "nutella and banana jaffle"),
            ("JAF-002", "doctor stew", "jaffle", 1100, "house-made beef stew jaffle"),
            ("BEV-001", "tangaroo", "beverage", 600, "mango and tangerine smoothie"),
            ("BEV-002", "chai and mighty", "beverage", 500, "oatmilk chai latte")]
SUPPLIES = [("SUP-001", "compostable cutlery - knife", 7, "False", "JAF-001"),
            ("SUP-001", "compostable cutlery - knife", 7, "False", "JAF-002"),
            ("SUP-002", "bread", 33, "True", "JAF-001"),
            ("SUP-002", "bread", 33, "True", "JAF-002"),
            ("SUP-003", "16oz cup", 12, "False", "BEV-001"),
            ("SUP-003", "16oz cup", 12, "False", "BEV-002")]
STORES = [("s1", "Philadelphia", "2018-09-01T00:00:00", "0.06"), ("s2", "Brooklyn", "2019-03-12T00:00:00", "0.04")]


def _raw_tables() -> dict[str, tuple[list[str], list[tuple]]]:
    customers = [(f"c{i}", f"Customer {i}") for i in range(12)]
    orders, items = [], []
    prices = {p[0]: p[3] for p in PRODUCTS}
    for n in range(60):
        store = STORES[n % 2]
        skus = [PRODUCTS[n % 4][0]] + ([PRODUCTS[(n + 1) % 4][0]] if n % 3 else [])
        subtotal = sum(prices[s] for s in skus)
        tax = round(subtotal * float(store[3]))
        oid = f"o{n:03d}"
        orders.append((oid, f"c{n % 10}", f"2019-01-{1 + n % 28:02d}T{8 + n % 10:02d}:00:00", store[0], subtotal, tax,
                       subtotal + tax))
        items += [(f"{oid}-{k}", oid, sku) for k, sku in enumerate(skus)]
    return {
        "raw_customers": (["id", "name"], customers),
        "raw_orders": (["id", "customer", "ordered_at", "store_id", "subtotal", "tax_paid", "order_total"], orders),
        "raw_items": (["id", "order_id", "sku"], items),
        "raw_products": (["sku", "name", "type", "price", "description"], PRODUCTS),
        "raw_stores": (["id", "name", "opened_at", "tax_rate"], STORES),
        "raw_supplies": (["id", "name", "cost", "perishable", "sku"], SUPPLIES),
    }


def _drop_schemas(url: str, *names: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'drop schema if exists "{name}" cascade')


@pytest.fixture(scope="module")
def warehouse(database_url, tmp_path_factory):
    """The tiny shop loaded by the ingest loader into a scratch raw schema, and a first build from it."""
    from stackbook.ingest import jaffle, load_folder

    tag = uuid.uuid4().hex[:8]
    raw, prefix = f"t_{tag}_raw", f"t_{tag}_"
    folder = tmp_path_factory.mktemp("jaffle")
    for table, (columns, rows) in _raw_tables().items():
        with open(folder / f"{table}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(rows)
    try:
        load_folder(folder, schema=raw, keys={t: k for t, k in jaffle.KEYS.items() if t in _raw_tables()})
        result = dbt.build(schema_prefix=prefix, raw_schema=raw, check=False, keep=False)
        yield {"raw": raw, "prefix": prefix, "result": result, "url": database_url}
    finally:
        _drop_schemas(database_url, f"{prefix}staging", f"{prefix}marts", raw)
        shutil.rmtree(dbt.target_dir("dev", dbt.project_dir(), prefix), ignore_errors=True)


@pytest.fixture()
def project_copy(tmp_path) -> Path:
    """A temp copy of pipelines/dbt to break on purpose."""
    dest = tmp_path / "dbt"
    shutil.copytree(dbt.project_dir(), dest, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return dest


def test_build_creates_staging_views_and_marts_in_prefixed_schemas(warehouse):
    result = warehouse["result"]
    assert result.success, result.message()
    assert result.failures == []
    counts = result.counts_by_type()
    assert counts["model"] == 12 and counts["unit_test"] >= 3 and counts["test"] >= 40
    assert set(result.counts()) <= {"success", "pass"}
    table = result.results
    assert list(table.columns) == ["node", "resource_type", "status", "rows_affected", "seconds", "message"]
    assert table.set_index("node").loc["orders", "rows_affected"] == 60

    rows = dbt.mart_row_counts(warehouse["prefix"], database_url=warehouse["url"])
    assert rows == {"customers": 12, "locations": 2, "order_items": 100, "orders": 60, "products": 4, "supplies": 6}
    with psycopg.connect(warehouse["url"]) as conn:
        views = {r[0] for r in conn.execute("select table_name from information_schema.views where table_schema = %s",
                                            (f"{warehouse['prefix']}staging",))}
        prospects = conn.execute(f'select count(*) from "{warehouse["prefix"]}marts".customers '
                                 "where customer_type = 'prospect' and lifetime_value = 0").fetchone()[0]
    assert views == {f"stg_jaffle_shop__{e}" for e in
                     ("customers", "orders", "order_items", "products", "locations", "supplies")}
    assert prospects == 2  # c10 and c11 never ordered


def test_source_freshness_follows_the_loaders_manifest(warehouse):
    fresh = dbt.freshness(schema_prefix=warehouse["prefix"], raw_schema=warehouse["raw"])
    assert len(fresh) == 6 and set(fresh["status"]) == {"pass"}
    with psycopg.connect(warehouse["url"], autocommit=True) as conn:
        conn.execute(f"""update "{warehouse['raw']}"._stackbook_loads set finished_at = now() - interval '60 hours'
                         where table_name = 'raw_orders'""")
        conn.execute(f"""update "{warehouse['raw']}"._stackbook_loads set finished_at = now() - interval '30 hours'
                         where table_name = 'raw_items'""")
    stale = dbt.freshness(schema_prefix=warehouse["prefix"], raw_schema=warehouse["raw"]).set_index("source")
    assert stale.loc["jaffle_shop.raw_orders", "status"] == "error"
    assert stale.loc["jaffle_shop.raw_items", "status"] == "warn"
    assert stale.loc["jaffle_shop.raw_customers", "status"] == "pass"
    assert stale.loc["jaffle_shop.raw_orders", "age_hours"] >= 60


def test_artifacts_are_kept_beside_the_run_notebook(warehouse, tmp_path, monkeypatch):
    output = tmp_path / "20990101T000000-abcdef.ipynb"
    monkeypatch.setenv("STACKBOOK_RUN_OUTPUT", str(output))
    dest = dbt.keep_artifacts(Path(warehouse["result"].target_dir))
    assert dest == str(tmp_path / "20990101T000000-abcdef.dbt")
    results = json.loads((Path(dest) / "run_results.json").read_text())
    assert len(results["results"]) == len(warehouse["result"].rows)
    assert (Path(dest) / "manifest.json").exists()


def test_lineage_graph_and_picture(warehouse):
    graph = dbt.lineage(warehouse["result"])
    names = {graph.nodes[n]["name"] for n in graph}
    assert "jaffle_shop.raw_orders" in names and "stg_jaffle_shop__orders" in names and "customers" in names
    layers = {graph.nodes[n]["layer"] for n in graph}
    assert layers == {"source", "staging", "marts"}
    by_name = {graph.nodes[n]["name"]: n for n in graph}
    assert graph.has_edge(by_name["orders"], by_name["customers"])
    figure = dbt.draw_lineage(graph, statuses={"orders": "error"})
    assert figure.axes and figure.axes[0].texts


def test_profiles_come_from_the_environment_without_the_password(database_url):
    folder = dbt.write_profiles("dev")
    from stackbook.core import project

    assert folder == project.state_dir() / "dbt" / "dev"
    text = (folder / "profiles.yml").read_text()
    from stackbook.core import environments
    from stackbook.run import db

    assert f"threads: {environments.load('dev').get('dbt_threads')}" in text
    assert db.password(db.url()) not in text
    assert dbt.PASSWORD_ENV in text


def test_failing_data_test_fails_the_build_naming_it_with_failing_rows(warehouse, project_copy):
    (project_copy / "tests" / "assert_every_order_is_free.sql").write_text(
        "select order_id, order_total from {{ ref('orders') }} where order_total > 0\n")
    with pytest.raises(dbt.DbtBuildFailed) as caught:
        dbt.build("assert_every_order_is_free", schema_prefix=warehouse["prefix"], raw_schema=warehouse["raw"],
                  project_path=project_copy, keep=False)
    assert "assert_every_order_is_free" in str(caught.value)
    failure = caught.value.result.failures[0]
    assert failure.resource_type == "test" and failure.status == "fail" and failure.failing_rows == 60
    assert list(failure.sample.columns) == ["order_id", "order_total"] and len(failure.sample) == dbt.SAMPLE_ROWS
    assert "assert_every_order_is_free" in caught.value.result.failures_html()


def test_broken_model_fails_the_build_naming_it_and_skips_downstream(warehouse, project_copy):
    (project_copy / "models" / "marts" / "orders.sql").write_text(
        "select no_such_column from {{ ref('stg_jaffle_shop__orders') }}\n")
    # dbt build runs the model's unit test first: it errors on the broken SQL and names the model
    result = dbt.build("orders+", schema_prefix=warehouse["prefix"], raw_schema=warehouse["raw"],
                       project_path=project_copy, check=False, keep=False)
    assert not result.success
    failure = result.failures[0]
    assert (failure.resource_type, failure.model) == ("unit_test", "orders")
    assert "no_such_column" in failure.message
    assert result.statuses()["orders"] == "skipped" and result.statuses()["customers"] == "skipped"
    with pytest.raises(dbt.DbtBuildFailed, match=r"of model orders error"):
        result.check()
    # without unit tests the model itself fails, by name, and what depends on it is skipped
    result = dbt.build("orders+", exclude="test_type:unit", schema_prefix=warehouse["prefix"],
                       raw_schema=warehouse["raw"], project_path=project_copy, check=False, keep=False)
    assert [(f.resource_type, f.name) for f in result.failures] == [("model", "orders")]
    assert "no_such_column" in result.failures[0].message
    assert result.statuses()["customers"] == "skipped"
    with pytest.raises(dbt.DbtBuildFailed, match=r"model orders error"):
        result.check()
    # the previous build of the mart is still there: a failed build replaced nothing
    assert dbt.mart_row_counts(warehouse["prefix"], database_url=warehouse["url"])["orders"] == 60


def test_unparseable_project_is_a_clear_error(warehouse, project_copy):
    (project_copy / "models" / "marts" / "locations.sql").write_text("select {{ ref('locations' }}\n")
    with pytest.raises(dbt.DbtError, match=r"dbt build could not run"):
        dbt.build(schema_prefix=warehouse["prefix"], raw_schema=warehouse["raw"], project_path=project_copy,
                  keep=False)


def test_missing_project_is_a_clear_error(tmp_path):
    with pytest.raises(dbt.DbtError, match=r"no dbt project at"):
        dbt.build(project_path=tmp_path, keep=False)


def test_build_warehouse_runbook_fails_naming_the_failed_test(warehouse, project_copy, cli):
    (project_copy / "tests" / "assert_no_orders_in_brooklyn.sql").write_text(
        "select order_id from {{ ref('orders') }} where location_id = 's2'\n")
    res = cli("run", "build_warehouse", "-e", "dev", "--json",
              "-p", f"schema_prefix={warehouse['prefix']}", "-p", f"raw_schema={warehouse['raw']}",
              "-p", "select=orders assert_no_orders_in_brooklyn", "-p", "check_freshness=false",
              env={dbt.PROJECT_ENV: str(project_copy)})
    assert res.code == 1, res
    record = res.json()
    assert record["status"] == "failed"
    assert record["error"]["ename"] == "DbtBuildFailed"
    assert "assert_no_orders_in_brooklyn" in record["error"]["evalue"]
    assert record["results"]["dbt_failed"] == ["assert_no_orders_in_brooklyn"]
    statuses = record["results"]["dbt_statuses"]
    assert statuses["fail"] == 1 and statuses["success"] == 1 and "error" not in statuses
    artifacts = Path(record["output"].removesuffix(".ipynb") + ".dbt")
    assert (artifacts / "run_results.json").exists() and (artifacts / "manifest.json").exists()
