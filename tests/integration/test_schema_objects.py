"""sql/functions: a fresh install (the baseline, then 011 on) equals an upgrade of a database of 001-010;
changed files are applied again."""

from __future__ import annotations

import gzip
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from psycopg import sql

import inbox.db.migrate as migrate_module
from inbox.db.connect import DictConnection, connect
from inbox.db.embedded import _bin_dir
from inbox.db.migrate import SQUASHED, MigrationError, migrate, pending_migrations
from inbox.db.sqlfiles import migrations, object_files
from tests.fixtures import make_db_010
from tests.helpers import drain

# Plain catalog queries over the project's schemas, printed with nothing but pg_catalog on the path
# (every other name comes out qualified). No OIDs: they differ between any two databases.
_SCHEMAS = "('inbox', 'public', 'pgmq')"
CATALOG: dict[str, str] = {
    "schemas": """
        SELECT n.nspname, pg_get_userbyid(n.nspowner) AS owner, n.nspacl::text AS acl
        FROM pg_namespace n
        WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'""",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) AS args,
               pg_get_function_result(p.oid) AS result, p.prokind, l.lanname, p.provolatile,
               p.prosecdef, p.proconfig, p.prosrc, p.proacl::text AS acl,
               pg_get_userbyid(p.proowner) AS owner
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
        WHERE n.nspname IN {_SCHEMAS}""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relacl::text AS acl, c.reloptions,
               pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN {_SCHEMAS}""",
    "columns": f"""
        SELECT n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS default_value, a.attacl::text AS acl
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname IN {_SCHEMAS} AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": f"""
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes WHERE schemaname IN {_SCHEMAS}""",
    "constraints": f"""
        SELECT n.nspname, c.conrelid::regclass::text AS relation, c.conname, c.contype,
               pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname IN {_SCHEMAS}""",
    "triggers": f"""
        SELECT t.tgrelid::regclass::text AS relation, t.tgname, t.tgenabled,
               pg_get_triggerdef(t.oid) AS definition
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN {_SCHEMAS} AND NOT t.tgisinternal""",
    "views": f"""
        SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname IN {_SCHEMAS}""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "migrations": "SELECT version, name, checksum FROM inbox.schema_migrations",
    "object_files": "SELECT file, checksum FROM inbox.schema_objects",
}


def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = pg_catalog")
        snapshot: dict[str, list[tuple[Any, ...]]] = {}
        has_object_files = conn.execute("SELECT to_regclass('inbox.schema_objects') AS p").fetchone()
        for part, sql in CATALOG.items():
            if part == "object_files" and (has_object_files is None or has_object_files["p"] is None):
                snapshot[part] = []
                continue
            rows = conn.execute(sql).fetchall()
            snapshot[part] = sorted(tuple(str(v) for v in row.values()) for row in rows)
        return snapshot


FIXTURE = make_db_010.DUMP


def restore_010(dsn: str) -> None:
    """A database as a release before the baseline left it: migrations 001-010 and what its service
    stored (tests/fixtures/make_db_010.py made the dump). Restored by the psql of the embedded server;
    the roles it grants to exist in the cluster (`inbox migrate` creates them)."""
    restored = subprocess.run(
        [str(_bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", dsn],
        input=gzip.decompress(FIXTURE.read_bytes()),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr.decode(errors="replace")


# What an install keeps: each table's rows, by their columns as of 010 (later migrations add some).
KEPT = {
    "inbox.quota_events": "quota_id, version, is_delete",
    "inbox.quota_versions": "quota_id",
    "public.quota": "quota_id",
    "public.call_off": "call_off_id",
    "public.quota_processing_errors": "id",
    "inbox.titan_quota_sink": "quota_id, version",
    "inbox.rejects": 'topic, "partition", "offset"',
    "inbox.metric_counters": "metric, label, minute, backend",
    "inbox.alert_state": "alert",
    "pgmq.q_quota_changes": "msg_id",
    "pgmq.q_inbox_alerts": "msg_id",
}


def kept_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    with connect(dsn, autocommit=True) as conn:
        return {
            table: [
                row["r"]
                for row in conn.execute(
                    sql.SQL("SELECT to_jsonb(t) AS r FROM {} t ORDER BY {}").format(
                        sql.SQL(table), sql.SQL(order)
                    )
                )
            ]
            for table, order in KEPT.items()
        }


# Objects whose privileges a migration after 010 changes on purpose (012_role_boundaries).
REGRANTED_SINCE_010 = {
    "add_counters",
    "purge_finished_events",
    "quota_events",
    "quota_processing_errors",
    "v_dead_letters",
    "q_quota_changes",
    "a_quota_changes",
    "q_inbox_alerts",
    "a_inbox_alerts",
}

# Objects a migration after 010 drops on purpose (015: the claim ledger replaces the per-event claim,
# the payload-carrying apply and the lease reaper, and the lease's index).
DROPPED_SINCE_010 = {
    "apply_events",
    "claim_events",
    "release_events",
    "reap_expired_leases",
    "quota_events_leased_idx",
    "count_status_changes",  # 016: the batch counts its outcomes itself
    "count_inserted_events",  # 018: each writer counts the rows it stores
}

_INGEST_EVENTS_010 = (
    "p_events jsonb, p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[], p_source text"
)
# (schema, name, arguments) now -> as of 010
SIGNATURES_CHANGED = {
    # 014: the source LSN of each event
    ("inbox", "ingest_events", _INGEST_EVENTS_010 + ", p_source_lsns bigint[]"): (
        "inbox",
        "ingest_events",
        _INGEST_EVENTS_010,
    ),
}


def _acls(snapshot: dict[str, list[tuple[Any, ...]]]) -> dict[str, dict[tuple[Any, ...], str]]:
    """Each function's and relation's privileges, by name (a function's name as of 010: a later
    migration that changed its arguments is followed by SIGNATURES_CHANGED)."""
    return {
        "functions": {SIGNATURES_CHANGED.get(row[:3], row[:3]): row[10] for row in snapshot["functions"]},
        "relations": {row[:2]: row[3] for row in snapshot["relations"]},
    }


def test_a_fresh_install_and_an_upgrade_from_010_end_with_identical_schemas(
    empty_dsn: str, pg_admin_dsn: str
) -> None:
    from tests.conftest import create_database, drop_database

    migrate(empty_dsn)
    fresh = catalog(empty_dsn)
    upgraded_name = empty_dsn.rsplit("dbname=", 1)[-1].split()[0] + "_upgraded"
    upgraded = create_database(pg_admin_dsn, upgraded_name)
    try:
        restore_010(upgraded)
        as_of_010, stored = catalog(upgraded), kept_rows(upgraded)
        assert as_of_010["migrations"] == sorted(tuple(str(v) for v in m) for m in SQUASHED)
        assert [len(stored[t]) for t in ("inbox.quota_events", "public.quota_processing_errors")] == [9, 2]
        assert all(stored.values()), [table for table, rows in stored.items() if not rows]

        report = migrate(upgraded)

        # the baseline is skipped: the database has it, as 001-010
        assert report.applied == [f"{m.version:03d}_{m.name}" for m in migrations()[1:]]
        assert report.objects == [o.file for o in object_files()]
        after_upgrade = catalog(upgraded)
        for part in CATALOG:
            if part != "migrations":
                # pgmq's own objects come from the fixture's pgmq: a new pgmq wheel needs a new fixture
                assert fresh[part] == after_upgrade[part], (
                    f"{part} (pgmq's? python -m {make_db_010.__name__})"
                )
        # the history differs by what it says of 001-010 only: kept as it was recorded
        history = {"fresh": fresh["migrations"], "upgraded": after_upgrade["migrations"]}
        assert history["fresh"][0][:2] == ("10", "baseline")
        assert history["upgraded"] == sorted(as_of_010["migrations"] + history["fresh"][1:])

        # every stored row survives, each column of 010 unchanged (later migrations add columns)
        for table, rows in kept_rows(upgraded).items():
            assert [{k: r[k] for k in before} for before, r in zip(stored[table], rows, strict=True)] == (
                stored[table]
            ), table

        # and this version's worker takes over: the two events still pending at 010 are applied and
        # published after the four messages 010 published; nothing is left to migrate
        assert drain(upgraded).applied == 2
        with connect(upgraded, autocommit=True) as conn:
            assert pending_migrations(conn) == []
            published = conn.execute("SELECT message FROM pgmq.q_quota_changes ORDER BY msg_id").fetchall()
            statuses = conn.execute("SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY 1")
            assert {r["status"]: r["n"] for r in statuses} == {"applied": 6, "stale": 1, "dead": 2}
        assert [m["message"]["quota_id"] for m in published[-2:]] == [str(q) for q in make_db_010.QUOTAS[4:]]
        assert published[:-2] == [{"message": r["message"]} for r in stored["pgmq.q_quota_changes"]]

        # The object files take no privilege away and give none: every grant of 010 is still there,
        # but for those a later migration changes on purpose (012: role boundaries) or drops (015, 016).
        before, after = _acls(as_of_010), _acls(after_upgrade)
        for kind in ("functions", "relations"):
            for name, acl in before[kind].items():
                if name[1] not in REGRANTED_SINCE_010 | DROPPED_SINCE_010:
                    assert after[kind].get(name) == acl, (kind, name)
    finally:
        drop_database(pg_admin_dsn, upgraded_name)


def _ship_edited(monkeypatch: pytest.MonkeyPatch, file: str, old: str, new: str) -> None:
    """From now on migrate finds sql/functions/`file` with `old` (found once) replaced by `new`."""
    shipped = object_files()
    assert sum(old in o.sql for o in shipped if o.file == file) == 1
    edited = [replace(o, sql=o.sql.replace(old, new, 1)) if o.file == file else o for o in shipped]
    monkeypatch.setattr(migrate_module, "object_files", lambda: edited)


def test_a_changed_function_file_is_applied_again_alone(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pending_migrations(db) == []
    _ship_edited(
        monkeypatch,
        "inbox.resolve_dead_letter.sql",
        "RETURNING resolved_at",
        "RETURNING resolved_at -- changed",
    )
    assert pending_migrations(db) == ["sql/functions/inbox.resolve_dead_letter.sql"]

    report = migrate(dsn)

    assert (report.applied, report.objects) == ([], ["inbox.resolve_dead_letter.sql"])
    row = db.execute("SELECT prosrc FROM pg_proc WHERE oid = 'inbox.resolve_dead_letter'::regproc").fetchone()
    assert row is not None and "-- changed" in row["prosrc"]
    assert pending_migrations(db) == []
    assert migrate(dsn).objects == []


def test_a_view_whose_columns_change_is_recreated_with_its_grants(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ship_edited(
        monkeypatch, "inbox.v_status.sql", "SELECT s.status, s.events, s.exact", "SELECT s.events, s.status"
    )

    assert migrate(dsn).objects == ["inbox.v_status.sql"]

    columns = db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'inbox.v_status'::regclass AND attnum > 0 "
        "ORDER BY attnum"
    ).fetchall()
    assert [c["attname"] for c in columns] == ["events", "status"]
    granted = db.execute("SELECT has_table_privilege('inbox_readonly', 'inbox.v_status', 'SELECT') AS ok")
    assert granted.fetchone() == {"ok": True}


def test_a_failing_function_file_is_rolled_back_and_not_recorded(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ship_edited(
        monkeypatch, "inbox.v_lag.sql", "FROM pending p, processing r", "FROM no_such_table p, processing r"
    )

    with pytest.raises(MigrationError, match=r"sql/functions/inbox\.v_lag\.sql failed"):
        migrate(dsn)

    # the DROP VIEW of the file went with it: the view of the last good file is still there
    assert db.execute("SELECT to_regclass('inbox.v_lag') IS NOT NULL AS ok").fetchone() == {"ok": True}
    assert pending_migrations(db) == ["sql/functions/inbox.v_lag.sql"]
