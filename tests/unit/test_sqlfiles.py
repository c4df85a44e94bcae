"""Loading sql/: numbered migrations and named queries; no database."""

from __future__ import annotations

import hashlib

import pytest

from inbox.db.sqlfiles import Migration, migrations, parse_migrations, parse_queries, queries, query


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
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
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
    assert {"ingest_events", "claim_events", "apply_events", "lock_migrations", "ping"} <= set(loaded)
    assert all(text.strip() for text in loaded.values())
    assert query("ping") == loaded["ping"]
    with pytest.raises(KeyError):
        query("no_such_query")
