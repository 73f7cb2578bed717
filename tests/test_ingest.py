"""Ingest: type inference, idempotent reruns, keyed replacement, quarantine, thresholds, the runbook via the CLI.

Real PostgreSQL; every test loads into its own scratch schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stackbook.ingest import LoadError, TooManyBadRows, infer, load_folder, table_checksum, table_counts
from stackbook.ingest.csvfile import EncodingNotSupported, encoding
from stackbook.ingest.loader import SourceError
from stackbook.ingest.manifest import LOADS, QUARANTINE


def write(folder: Path, name: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def quarantined(db, schema: str) -> list[tuple]:
    return db.execute(f'select file_name, line_number, reason, raw_line from "{schema}".{QUARANTINE} '
                      f"order by file_name, line_number").fetchall()


PEOPLE = """id,name,born,score,active,joined_at
1,Ada,1815-12-10,9.5,true,2024-01-01 09:00:00
2,Grace,1906-12-09,8.25,false,2024-01-02 10:30:00
3,"Hopper, Grace",1906-12-09,7,true,2024-01-03T11:45:00
4,Linus,1969-12-28,,t,2024-01-04 12:00:00
"""


# ---------------------------------------------------------------- type inference (no database)


@pytest.mark.parametrize("value,expected", [
    ("42", "integer"), ("-7", "integer"), ("007", "text"), ("0", "integer"), ("3.14", "numeric"),
    ("1e5", "numeric"), ("99999999999999999999", "numeric"), ("true", "boolean"), ("F", "boolean"),
    ("2024-02-29", "date"), ("2023-02-29", "text"), ("2024-01-01 10:00:00", "timestamp"),
    ("2024-01-01T10:00:00.123456", "timestamp"), ("2024-01-01T10:00:00+02:00", "timestamptz"),
    ("2024-01-01 10:00Z", "timestamptz"), ("hello", "text"), ("12abc", "text"),
])
def test_classify_one_value(value, expected):
    assert infer.classify(value) == expected


def test_infer_types_widens_and_ignores_empty_and_ragged_rows():
    cols = ["a", "b", "c", "d", "e", "f"]
    rows = [["1", "1", "2024-01-01", "", "yes", "x"],
            ["2", "2.5", "2024-01-01 10:00:00", "", "no", "1"],
            ["3", "", "", "", "", "2"],
            ["too", "short"]]
    assert infer.infer_types(cols, rows) == {
        "a": "integer", "b": "numeric", "c": "timestamp", "d": "text", "e": "boolean", "f": "text"}


def test_value_checks_follow_postgres_syntax():
    assert infer.fits("bigint")(" 12 ") and not infer.fits("bigint")("1.5")
    assert not infer.fits("integer")("9223372036854775808")  # over bigint
    assert not infer.fits("int4")("2147483648")
    assert infer.fits("boolean")("Yes") and infer.fits("boolean")("of") and not infer.fits("boolean")("o")
    assert infer.fits("numeric")("-.5e-3") and infer.fits("numeric")("NaN") and not infer.fits("numeric")("1,5")
    assert infer.fits("date")("2024-02-29") and not infer.fits("date")("2024-02-30")
    assert not infer.fits("date")("yesterday-ish")
    assert infer.fits("timestamp without time zone")("2024-01-01 10:00:00")
    assert not infer.fits("timestamp")("2024-01-01 25:00:00")
    assert infer.fits("uuid") is None  # PostgreSQL judges types without a check


def test_spec_file_and_its_errors(tmp_path):
    spec = write(tmp_path, "spec.yml", "tables:\n  people:\n    columns: {id: integer, born: date}\n")
    assert infer.load_spec(spec) == {"people": {"id": "integer", "born": "date"}}
    assert infer.load_spec({"people": {"id": "uuid"}}) == {"people": {"id": "uuid"}}
    assert infer.load_spec("") == {}
    with pytest.raises(infer.SpecError, match="does not exist"):
        infer.load_spec(tmp_path / "nope.yml")
    with pytest.raises(infer.SpecError, match="people.id"):
        infer.load_spec({"people": {"id": "int; drop table x"}})


def test_encodings():
    assert encoding("latin-1").postgres == "LATIN1"
    assert encoding("UTF8").postgres == "UTF8"
    with pytest.raises(EncodingNotSupported, match="utf-16"):
        encoding("utf-16")
    with pytest.raises(EncodingNotSupported, match="unknown encoding"):
        encoding("klingon")


# ---------------------------------------------------------------- loads


def test_types_inferred_and_tables_created(tmp_path, db, scratch_schema):
    write(tmp_path, "people.csv", PEOPLE)
    report = load_folder(tmp_path, schema=scratch_schema, conn=db)
    assert report.rows_loaded == 4 and report.rows_quarantined == 0
    types = dict(db.execute("select column_name, data_type from information_schema.columns "
                            "where table_schema = %s and table_name = 'people'", [scratch_schema]).fetchall())
    assert types == {"id": "bigint", "name": "text", "born": "date", "score": "numeric", "active": "boolean",
                     "joined_at": "timestamp without time zone"}
    assert db.execute(f'select name, score from "{scratch_schema}".people where id = 3').fetchone() == (
        "Hopper, Grace", 7)
    assert db.execute(f'select score from "{scratch_schema}".people where id = 4').fetchone() == (None,)


def test_same_folder_three_times_changes_nothing_after_the_first(tmp_path, db, scratch_schema):
    write(tmp_path, "people.csv", PEOPLE)
    write(tmp_path, "events.csv", "kind,at\nopen,2024-01-01\nclose,2024-01-02\nopen,2024-01-02\n")
    keys = {"people": ["id"]}
    first = load_folder(tmp_path, schema=scratch_schema, keys=keys, conn=db)
    assert first.rows_loaded == 7
    counts = table_counts(scratch_schema, ["people", "events"], conn=db)
    sums = {t: table_checksum(scratch_schema, t, conn=db) for t in counts}
    for _ in range(2):
        again = load_folder(tmp_path, schema=scratch_schema, keys=keys, conn=db)
        assert again.rows_loaded == 0
        assert {t["status"] for t in again.tables} == {"skipped"}
        assert table_counts(scratch_schema, ["people", "events"], conn=db) == counts == {"people": 4, "events": 3}
        assert {t: table_checksum(scratch_schema, t, conn=db) for t in counts} == sums
    statuses = db.execute(f'select table_name, status from "{scratch_schema}".{LOADS} order by id').fetchall()
    assert [s for _, s in statuses] == ["loaded", "loaded"] + ["skipped"] * 4


def test_changed_file_with_keys_replaces_the_rows_whose_keys_it_carries(tmp_path, db, scratch_schema):
    path = write(tmp_path, "people.csv", PEOPLE)
    load_folder(tmp_path, schema=scratch_schema, keys={"people": "id"}, conn=db)
    # id 1 is gone from the file, id 2 changes, id 3 and 4 are the same, id 5 is new
    lines = PEOPLE.splitlines()
    path.write_text("\n".join([lines[0], lines[2].replace("8.25", "9.75"), lines[3], lines[4],
                               "5,Barbara,1939-11-07,9,true,2024-02-01 08:00:00"]) + "\n")
    report = load_folder(tmp_path, schema=scratch_schema, keys={"people": "id"}, conn=db)
    entry = report.table("people")
    assert (entry["status"], entry["rows_loaded"], entry["rows_inserted"], entry["rows_updated"]) == (
        "loaded", 4, 1, 1)
    rows = dict(db.execute(f'select id, score from "{scratch_schema}".people').fetchall())
    assert rows == {1: 9.5, 2: 9.75, 3: 7, 4: None, 5: 9}
    # a key repeated within one file: the last occurrence wins
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[1].replace("9.5", "1.5") + "\n")
    load_folder(tmp_path, schema=scratch_schema, keys={"people": "id"}, conn=db)
    assert db.execute(f'select score from "{scratch_schema}".people where id = 1').fetchone() == (1.5,)


def test_changed_file_without_keys_replaces_the_table(tmp_path, db, scratch_schema):
    path = write(tmp_path, "events.csv", "kind,at\nopen,2024-01-01\nclose,2024-01-02\n")
    load_folder(tmp_path, schema=scratch_schema, conn=db)
    path.write_text("kind,at\nopen,2024-01-01\nclose,2024-01-02\nreopen,2024-01-03\n")
    report = load_folder(tmp_path, schema=scratch_schema, conn=db)
    assert report.rows_loaded == 3
    assert table_counts(scratch_schema, ["events"], conn=db) == {"events": 3}


def test_parallel_jobs_give_the_same_tables_manifest_and_quarantine_as_one(tmp_path, db, scratch_schema):
    good = make_faults(tmp_path)
    write(tmp_path, "people.csv", PEOPLE)
    keys = {"people": ["id"], "bad_date": ["id"]}
    tables = [*good, "people"]
    seen = {}
    for jobs, schema in ((1, scratch_schema), (3, f"{scratch_schema}_j3")):
        try:
            report = load_folder(tmp_path, schema=schema, keys=keys, max_bad_ratio=0.5, conn=db, jobs=jobs)
            seen[jobs] = (
                [(t["table"], t["status"], t["method"], t["rows_loaded"], t["rows_quarantined"])
                 for t in report.tables],
                {t: table_checksum(schema, t, conn=db) for t in tables},
                [row[:3] for row in quarantined(db, schema)],
                db.execute(f'select table_name, status, rows_loaded from "{schema}".{LOADS} order by table_name'
                           ).fetchall())
            rerun = load_folder(tmp_path, schema=schema, keys=keys, max_bad_ratio=0.5, conn=db, jobs=jobs)
            assert rerun.rows_loaded == 0 and {t["status"] for t in rerun.tables} >= {"skipped"}
        finally:
            if schema != scratch_schema:
                db.execute(f'drop schema if exists "{schema}" cascade')
    assert seen[1] == seen[3]
    assert [t for t, *_ in seen[3][0]] == sorted(tables + ["empty", "header_only"])  # report in file order
    assert len(seen[3][2]) == 3


def test_jobs_must_be_a_small_whole_number(tmp_path, db, scratch_schema):
    write(tmp_path, "people.csv", PEOPLE)
    for bad in (1.5, -1, 10_000, "2"):
        with pytest.raises(SourceError, match="jobs must be a whole number"):
            load_folder(tmp_path, schema=f"{scratch_schema}_never", jobs=bad, conn=db)
    assert db.execute("select to_regnamespace(%s)", [f"{scratch_schema}_never"]).fetchone() == (None,)


def test_first_load_of_a_keyed_table_copies_straight_in_and_still_quarantines(tmp_path, db, scratch_schema):
    write(tmp_path / "clean", "people.csv", PEOPLE)
    entry = load_folder(tmp_path / "clean", schema=scratch_schema, keys={"people": "id"}, conn=db).table("people")
    assert (entry["method"], entry["rows_inserted"], entry["rows_updated"], entry["table_rows"]) == ("copy", 4, 0, 4)
    assert db.execute("select constraint_type from information_schema.table_constraints where table_schema = %s "
                      "and table_name = 'people' and constraint_type <> 'CHECK'", [scratch_schema]).fetchall() == [
        ("PRIMARY KEY",)]
    # a new keyed table whose file has a bad date, a repeated key and an empty key: checked, quarantined, merged
    lines = PEOPLE.splitlines()
    write(tmp_path / "bad", "folk.csv", "\n".join(lines + [
        "5,Eve,not-a-date,1,true,2024-01-05 00:00:00", lines[1].replace("9.5", "1.5"),
        ",Nobody,2000-01-01,1,true,2024-01-06 00:00:00"]) + "\n")
    report = load_folder(tmp_path / "bad", schema=scratch_schema, keys={"folk": "id"}, max_bad_ratio=0.5,
                         spec={"folk": {"born": "date"}}, conn=db)
    entry = report.table("folk")
    assert (entry["status"], entry["method"], entry["rows_quarantined"], entry["table_rows"]) == (
        "loaded", "checked", 2, 4)
    assert [(f, line, reason) for f, line, reason, _ in quarantined(db, scratch_schema)] == [
        ("folk.csv", 6, "column born: 'not-a-date' is not a valid date"), ("folk.csv", 8, "key column id is empty")]
    assert db.execute(f'select score from "{scratch_schema}".folk where id = 1').fetchone() == (1.5,)
    assert db.execute("select constraint_type from information_schema.table_constraints where table_schema = %s "
                      "and table_name = 'folk' and constraint_type <> 'CHECK'", [scratch_schema]).fetchall() == [
        ("PRIMARY KEY",)]


def make_faults(folder: Path) -> dict[str, int]:
    """The planted-faults folder; returns the good rows per table."""
    write(folder, "extra_column.csv", "id,name\n1,a\n2,b,EXTRA\n3,c\n")
    # the unparsable date comes after the inference sample (1000 rows), so the column is a date
    rows = [f"{i},2024-01-{1 + i % 28:02d}" for i in range(1, 1201)]
    rows[1099] = "1100,2024-13-45"
    write(folder, "bad_date.csv", "id,happened_on\n" + "\n".join(rows) + "\n")
    write(folder, "latin1.csv", b"id,city\n" + b"1,Lisbon\n" + b"2,Caf\xe9 Town\n"
          + "3,Zürich\n".encode())
    write(folder, "empty.csv", b"")
    write(folder, "header_only.csv", "id,name\n")
    return {"extra_column": 2, "bad_date": 1199, "latin1": 2}


def test_planted_faults_are_quarantined_with_file_line_and_reason(tmp_path, db, scratch_schema):
    good = make_faults(tmp_path)
    report = load_folder(tmp_path, schema=scratch_schema, max_bad_ratio=0.5, conn=db)
    assert table_counts(scratch_schema, list(good), conn=db) == good
    assert report.rows_loaded == sum(good.values()) and report.rows_quarantined == 3
    q = quarantined(db, scratch_schema)
    assert [(f, line) for f, line, _, _ in q] == [("bad_date.csv", 1101), ("extra_column.csv", 3),
                                                  ("latin1.csv", 3)]
    reasons = {f: (reason, raw) for f, _, reason, raw in q}
    assert "happened_on" in reasons["bad_date.csv"][0] and "2024-13-45" in reasons["bad_date.csv"][0]
    assert reasons["bad_date.csv"][1] == "1100,2024-13-45"
    assert reasons["extra_column.csv"] == ("expected 2 columns, found 3", "2,b,EXTRA")
    assert "not valid utf-8" in reasons["latin1.csv"][0] and reasons["latin1.csv"][1] == "2,Caf\\xe9 Town"
    assert db.execute(f'select city from "{scratch_schema}".latin1 where id = 3').fetchone() == ("Zürich",)
    problems = {t["file"]: t for t in report.problems}
    assert set(problems) == {"empty.csv", "header_only.csv"}
    assert problems["empty.csv"]["status"] == "empty" and problems["empty.csv"]["line"] == 1
    assert "empty file" in problems["empty.csv"]["message"]
    assert problems["header_only.csv"]["status"] == "header_only" and "header only" in problems[
        "header_only.csv"]["message"]
    assert table_counts(scratch_schema, ["empty", "header_only"], conn=db) == {"empty": None, "header_only": None}
    # a rerun of the same files adds neither rows nor quarantine rows
    again = load_folder(tmp_path, schema=scratch_schema, max_bad_ratio=0.5, conn=db)
    assert again.rows_loaded == 0 and len(quarantined(db, scratch_schema)) == 3


def test_over_the_threshold_the_file_loads_nothing_and_the_run_fails(tmp_path, db, scratch_schema):
    make_faults(tmp_path)
    write(tmp_path, "clean.csv", "id,name\n1,a\n2,b\n")
    with pytest.raises(TooManyBadRows) as err:
        load_folder(tmp_path, schema=scratch_schema, max_bad_ratio=0.001, conn=db)
    msg = str(err.value)
    for name, ratio in [("extra_column.csv", "1 of 3 rows bad (33.33%)"), ("latin1.csv", "1 of 3 rows bad (33.33%)")]:
        assert f"{name}: {ratio}" in msg
    assert "bad_date.csv" not in msg  # 1 of 1200 is under 0.1%
    assert "max_bad_ratio 0.10%" in msg and QUARANTINE in msg
    report = err.value.report
    assert report.table("extra_column")["status"] == "rejected"
    with pytest.raises(TooManyBadRows, match="extra_column.csv"):
        report.check()
    # rejected files loaded nothing (a table they would have created is not there), the others loaded,
    # and the bad rows are quarantined either way
    assert table_counts(scratch_schema, ["extra_column", "latin1", "bad_date", "clean"], conn=db) == {
        "extra_column": None, "latin1": None, "bad_date": 1199, "clean": 2}
    assert len(quarantined(db, scratch_schema)) == 3
    # with a looser threshold the same files load; the quarantine does not double
    load_folder(tmp_path, schema=scratch_schema, max_bad_ratio=0.5, conn=db)
    assert table_counts(scratch_schema, ["extra_column", "latin1"], conn=db) == {"extra_column": 2, "latin1": 2}
    assert len(quarantined(db, scratch_schema)) == 3
    # a worse version of a loaded file is rejected and the table keeps what it had
    before = table_checksum(scratch_schema, "extra_column", conn=db)
    write(tmp_path, "extra_column.csv", "id,name\n1,a\n2,b,EXTRA\n3\n4,d\n")
    with pytest.raises(TooManyBadRows, match="extra_column.csv: 2 of 4 rows bad"):
        load_folder(tmp_path, schema=scratch_schema, max_bad_ratio=0.1, conn=db)
    assert table_checksum(scratch_schema, "extra_column", conn=db) == before


def test_spec_types_and_postgres_judging_what_no_check_knows(tmp_path, db, scratch_schema):
    write(tmp_path, "things.csv", "id,ref,on_day\n1,0b7e3c1e-58a6-4f3b-9a55-0c8d5b4a1f00,2024-01-01\n"
          "2,not-a-uuid,2024-01-02\n3,6f1c2d8e-0000-4000-8000-000000000000,soon\n"
          "4,6f1c2d8e-0000-4000-8000-000000000001,2024-01-04\n")
    spec = {"things": {"id": "integer", "ref": "uuid", "on_day": "date"}}
    report = load_folder(tmp_path, schema=scratch_schema, spec=spec, max_bad_ratio=0.5, conn=db)
    assert report.rows_loaded == 2
    q = {line: reason for _, line, reason, _ in quarantined(db, scratch_schema)}
    assert set(q) == {3, 4}
    assert "rejected by PostgreSQL" in q[3] and "uuid" in q[3]
    assert "on_day" in q[4]
    assert db.execute("select data_type from information_schema.columns where table_schema = %s "
                      "and table_name = 'things' and column_name = 'ref'", [scratch_schema]).fetchone() == ("uuid",)


def test_postgres_rejections_are_traced_to_their_lines_in_a_larger_file(tmp_path, db, scratch_schema):
    rows = [f"{i},00000000-0000-4000-8000-{i:012d}" for i in range(1, 20001)]
    for bad in (50, 12345, 19999):
        rows[bad - 1] = f"{bad},not-a-uuid-{bad}"
    write(tmp_path, "refs.csv", "id,ref\n" + "\n".join(rows) + "\n")
    report = load_folder(tmp_path, schema=scratch_schema, spec={"refs": {"ref": "uuid"}}, max_bad_ratio=0.01,
                         conn=db)
    assert report.rows_loaded == 19997 and report.table("refs")["method"] == "checked"
    assert [(line, raw) for _, line, _, raw in quarantined(db, scratch_schema)] == [
        (51, "50,not-a-uuid-50"), (12346, "12345,not-a-uuid-12345"), (20000, "19999,not-a-uuid-19999")]


def test_declared_encoding_and_multiline_fields(tmp_path, db, scratch_schema):
    write(tmp_path, "cities.csv", "id,name,note\n1,Café,\"two\nlines\"\n2,Zoë,x\n3,bad,y,z\n".encode("latin-1"))
    report = load_folder(tmp_path, schema=scratch_schema, encoding="latin-1", max_bad_ratio=0.5, conn=db)
    assert report.rows_loaded == 2
    assert db.execute(f'select name, note from "{scratch_schema}".cities order by id').fetchall() == [
        ("Café", "two\nlines"), ("Zoë", "x")]
    assert [(line, reason) for _, line, reason, _ in quarantined(db, scratch_schema)] == [
        (5, "expected 3 columns, found 4")]


def test_bad_input_is_refused_with_a_clear_error(tmp_path, db, scratch_schema):
    with pytest.raises(SourceError, match="is not a folder"):
        load_folder(tmp_path / "missing", schema=scratch_schema, conn=db)
    with pytest.raises(SourceError, match="no files matching"):
        load_folder(tmp_path, schema=scratch_schema, conn=db)
    write(tmp_path, "people.csv", PEOPLE)
    with pytest.raises(SourceError, match="keys name tables with no file.*nobody"):
        load_folder(tmp_path, schema=scratch_schema, keys={"nobody": ["id"]}, conn=db)
    with pytest.raises(LoadError, match="key column.*person_id.*not in the header"):
        load_folder(tmp_path, schema=scratch_schema, keys={"people": ["person_id"]}, conn=db)
    # schema drift: a new column in the file that the table lacks fails that file and keeps the table
    load_folder(tmp_path, schema=scratch_schema, conn=db)
    write(tmp_path, "people.csv", PEOPLE.replace("joined_at", "joined_at,extra").replace("\n", ",x\n")
          .replace("extra,x", "extra"))
    with pytest.raises(LoadError, match="column\\(s\\) extra that table .*people lacks"):
        load_folder(tmp_path, schema=scratch_schema, conn=db)
    assert table_counts(scratch_schema, ["people"], conn=db) == {"people": 4}


# ---------------------------------------------------------------- the runbook through the CLI


def test_load_csv_folder_runbook_via_cli(cli, tmp_path, db, scratch_schema):
    good = make_faults(tmp_path / "faults")
    write(tmp_path / "ok", "people.csv", PEOPLE)
    spec = write(tmp_path, "spec.yml", "tables:\n  people:\n    columns: {born: text}\n")
    res = cli("run", "load_csv_folder", "-p", f"source_dir={tmp_path / 'ok'}", "-p", f"schema={scratch_schema}",
              "-p", 'keys={"people": ["id"]}', "-p", f"spec={spec}", "--json")
    assert res.code == 0, res
    assert db.execute("select data_type from information_schema.columns where table_schema = %s and "
                      "table_name = 'people' and column_name = 'born'", [scratch_schema]).fetchone() == ("text",)
    results = res.json()["results"]
    assert results["rows_loaded"] == 4 and results["rows_quarantined"] == 0
    assert results["tables"]["people"]["status"] == "loaded"
    res = cli("run", "load_csv_folder", "-p", f"source_dir={tmp_path / 'faults'}", "-p", f"schema={scratch_schema}",
              "--json")
    assert res.code == 1, res
    assert "TooManyBadRows" in res.out and "extra_column.csv" in res.out and "latin1.csv" in res.out
    failed = res.json()
    assert failed["status"] == "failed"
    assert failed["results"]["rows_quarantined"] == 3  # the figures are recorded before the check fails the run
    assert {p["file"] for p in failed["results"]["problems"]} >= {"empty.csv", "header_only.csv", "latin1.csv"}
    assert table_counts(scratch_schema, list(good), conn=db)["bad_date"] == good["bad_date"]


@pytest.mark.parametrize("name,data", [
    ("crlf", b"id,name\r\n1,a\r\n2,\"b\r\nc\"\r\n3,c\r\n"),
    ("bom_no_final_newline", "\ufeffid,name\n1,a\n2,b\n3,c".encode("utf-8")),
    ("blank_lines", b"\nid,name\n1,a\n\n2,b\n3,c\n\n"),
])
def test_line_endings_bom_and_blank_lines(tmp_path, db, scratch_schema, name, data):
    write(tmp_path, f"{name}.csv", data)
    report = load_folder(tmp_path, schema=scratch_schema, conn=db)
    assert report.rows_loaded == 3 and report.rows_quarantined == 0
    assert [c for c, in db.execute("select column_name from information_schema.columns where table_schema = %s "
                                   "and table_name = %s order by ordinal_position", [scratch_schema, name])] == [
        "id", "name"]
    assert db.execute(f'select count(*) from "{scratch_schema}"."{name}" where id = 3').fetchone() == (1,)


def test_jaffle_generate_is_cached_and_keys_cover_every_file():
    from stackbook.core.errors import UsageError
    from stackbook.ingest import jaffle

    folder = jaffle.generate(1)  # generated once per checkout (about a minute), then cached
    assert folder == jaffle.cache_dir(1) and (folder / jaffle.DONE).exists()
    assert {p.stem for p in folder.glob("*.csv")} == set(jaffle.KEYS)
    for table, keys in jaffle.KEYS.items():
        header = (folder / f"{table}.csv").open(encoding="utf-8").readline().strip().split(",")
        assert set(keys) <= set(header), (table, keys, header)
    assert jaffle.generate(1) == folder
    with pytest.raises(UsageError, match="years"):
        jaffle.generate(0)
