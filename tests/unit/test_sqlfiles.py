"""Loading sql/: numbered migrations, object files and named queries; no database."""

from __future__ import annotations

import hashlib

import pytest

from inbox.db.migrate import SQUASHED
from inbox.db.sqlfiles import (
    Migration,
    ObjectFile,
    migrations,
    object_files,
    parse_manifest,
    parse_migrations,
    parse_object_files,
    parse_queries,
    queries,
    query,
)


def test_migrations_in_order() -> None:
    parsed = parse_migrations({"002_b.sql": "B", "001_a.sql": "A", "003_c_d.sql": "C"})
    assert [(m.version, m.name, m.sql) for m in parsed] == [(1, "a", "A"), (2, "b", "B"), (3, "c_d", "C")]


def test_no_migrations_is_an_empty_list() -> None:
    assert parse_migrations({}) == []


def test_checksum_is_the_sha256_of_the_text() -> None:
    migration = Migration(1, "a", "CREATE TABLE t ();")
    assert migration.checksum == hashlib.sha256(b"CREATE TABLE t ();").hexdigest()
    assert Migration(1, "a", "CREATE TABLE t ( );").checksum != migration.checksum


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"001_a.sql": "", "003_c.sql": ""}, "migration 002 is missing"),
        ({"002_b.sql": ""}, "migration 001 is missing"),
        ({"001_a.sql": "", "002_b.sql": "", "004_d.sql": ""}, "migration 003 is missing"),
    ],
    ids=["gap", "no-first", "late-gap"],
)
def test_gaps_are_refused(files: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_migrations(files)


def test_migrations_may_start_at_a_baseline() -> None:
    parsed = parse_migrations({"011_b.sql": "B", "010_baseline.sql": "A"})
    assert [(m.version, m.name) for m in parsed] == [(10, "baseline"), (11, "b")]
    with pytest.raises(ValueError, match="migration 011 is missing"):
        parse_migrations({"010_baseline.sql": "", "012_c.sql": ""})
    with pytest.raises(ValueError, match="migration 001 is missing"):
        parse_migrations({"010_not_a_baseline.sql": ""})
    with pytest.raises(ValueError, match="011_baseline: only the first migration may be a baseline"):
        parse_migrations({"010_baseline.sql": "", "011_baseline.sql": ""})


def test_the_baseline_stands_for_the_migrations_it_squashed() -> None:
    shipped = migrations()
    assert (shipped[0].version, shipped[0].name) == (SQUASHED[-1][0], "baseline")
    assert [version for version, _, _ in SQUASHED] == list(range(1, shipped[0].version + 1))


def test_duplicate_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="migration version 2 appears twice"):
        parse_migrations({"001_a.sql": "", "002_b.sql": "", "002_other.sql": ""})


@pytest.mark.parametrize(
    "name",
    [
        "1_a.sql",
        "0001_a.sql",
        "001-a.sql",
        "001_A.sql",
        "001_.sql",
        "001_a b.sql",
        "a_001.sql",
        "001_a.SQL",
        "001_a.sql.bak",
    ],
)
def test_badly_named_files_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"is not named NNN_lower_case_name\.sql"):
        parse_migrations({"001_a.sql": "", name: ""})


def test_shipped_migrations_are_well_formed() -> None:
    shipped = migrations()
    assert shipped
    assert [m.version for m in shipped] == list(range(shipped[0].version, shipped[0].version + len(shipped)))
    assert all(m.sql.strip() for m in shipped)


def test_queries_are_split_by_name() -> None:
    text = (
        "-- a comment before any name\n-- name: first\nSELECT 1;\n\n-- name: second_one\nSELECT 2\nFROM t;\n"
    )
    assert parse_queries(text) == {"first": "SELECT 1;", "second_one": "SELECT 2\nFROM t;"}


def test_query_text_keeps_its_comments() -> None:
    parsed = parse_queries("-- name: q\n-- why this query exists\nSELECT 1;\n")
    assert parsed["q"] == "-- why this query exists\nSELECT 1;"


def test_duplicate_query_names_are_refused() -> None:
    with pytest.raises(ValueError, match="query 'same' is defined twice"):
        parse_queries("-- name: same\nSELECT 1;\n-- name: other\nSELECT 2;\n-- name: same\nSELECT 3;\n")


def test_no_names_means_no_queries() -> None:
    assert parse_queries("SELECT 1;") == {}


def test_shipped_queries_load() -> None:
    loaded = queries()
    expected = {"ingest_typed_events", "claim_batch", "process_batch", "try_lock_migrations", "ping"}
    assert expected <= set(loaded)
    assert "applied_migrations_if_any" not in loaded  # nothing ran it
    assert all(text.strip() for text in loaded.values())
    assert query("ping") == loaded["ping"]
    with pytest.raises(KeyError):
        query("no_such_query")


# -- object files (sql/functions) -------------------------------------------------------------------


def test_object_files_come_in_manifest_order() -> None:
    manifest = "# why this order\ninbox.b.sql\n\n  public.a.sql  \n"
    parsed = parse_object_files(manifest, {"public.a.sql": "A", "inbox.b.sql": "B"})
    assert parsed == [ObjectFile("inbox.b.sql", "B"), ObjectFile("public.a.sql", "A")]


def test_manifest_skips_comments_and_blank_lines() -> None:
    assert parse_manifest("# a\n\ninbox.x.sql\n  # b\n") == ["inbox.x.sql"]


@pytest.mark.parametrize(
    ("manifest", "files", "message"),
    [
        ("inbox.a.sql\ninbox.a.sql\n", {"inbox.a.sql": ""}, "lists inbox.a.sql twice"),
        ("inbox.a.sql\ninbox.b.sql\n", {"inbox.a.sql": ""}, "lists inbox.b.sql, which is not in sql/"),
        ("inbox.a.sql\n", {"inbox.a.sql": "", "inbox.b.sql": ""}, "inbox.b.sql is not listed in manifest"),
        ("a.sql\n", {"a.sql": ""}, r"'a\.sql', which is not named <schema>\.<object>\.sql"),
        ("inbox.A.sql\n", {"inbox.A.sql": ""}, "not named"),
    ],
    ids=["twice", "missing-file", "unlisted-file", "no-schema", "upper-case"],
)
def test_a_manifest_that_disagrees_with_the_folder_is_refused(
    manifest: str, files: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_object_files(manifest, files)


def test_object_file_checksum_is_the_sha256_of_the_text() -> None:
    assert ObjectFile("inbox.f.sql", "SELECT 1;").checksum == hashlib.sha256(b"SELECT 1;").hexdigest()


def test_shipped_object_files_are_each_listed_once_and_replace_what_they_define() -> None:
    shipped = object_files()
    assert len({o.file for o in shipped}) == len(shipped) >= 20
    for obj in shipped:
        schema, name, _ = obj.file.split(".")
        qualified = f"{schema}.{name}"
        # the header first, then the definition, which replaces (or drops and re-creates) its object
        assert obj.sql.startswith("-- ----"), obj.file
        assert f"CREATE OR REPLACE FUNCTION {qualified}(" in obj.sql or (
            f"DROP VIEW IF EXISTS {qualified};\nCREATE VIEW {qualified} AS" in obj.sql
        ), obj.file
        assert "\nCREATE FUNCTION" not in obj.sql and "\nCREATE TRIGGER" not in obj.sql, obj.file
