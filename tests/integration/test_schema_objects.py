"""sql/functions: a fresh install equals an upgrade from migration 010; changed files are applied again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import inbox.db.migrate as migrate_module
from inbox.db.connect import DictConnection, connect
from inbox.db.migrate import MigrationError, migrate, pending_migrations
from inbox.db.pgmq_setup import ensure_pgmq
from inbox.db.sqlfiles import ObjectFile, migrations, object_files, query

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


def install_as_of_010(dsn: str) -> None:
    """What today's main leaves: the numbered migrations 001-010 only, as its `inbox migrate` applied them."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute(query("create_migrations_table"))
        ensure_pgmq(conn)
        for migration in migrations()[:10]:
            with conn.transaction():
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    query("record_migration"),
                    {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
                )


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

    upgraded_name = empty_dsn.rsplit("dbname=", 1)[-1].split()[0] + "_upgraded"
    upgraded = create_database(pg_admin_dsn, upgraded_name)
    try:
        install_as_of_010(upgraded)
        as_of_010 = catalog(upgraded)
        report = migrate(upgraded)
        assert report.applied == [f"{m.version:03d}_{m.name}" for m in migrations() if m.version >= 11]
        assert report.objects == [o.file for o in object_files()]

        migrate(empty_dsn)
        fresh, after_upgrade = catalog(empty_dsn), catalog(upgraded)
        for part in CATALOG:
            assert fresh[part] == after_upgrade[part], part

        # The object files take no privilege away and give none: every grant of 010 is still there,
        # but for those a later migration changes on purpose (012: role boundaries).
        before, after = _acls(as_of_010), _acls(after_upgrade)
        for kind in ("functions", "relations"):
            for name, acl in before[kind].items():
                if name[1] not in REGRANTED_SINCE_010:
                    assert after[kind].get(name) == acl, (kind, name)
    finally:
        drop_database(pg_admin_dsn, upgraded_name)


def _replaced(file: str, old: str, new: str) -> list[ObjectFile]:
    shipped = object_files()
    assert sum(old in o.sql for o in shipped if o.file == file) == 1
    return [replace(o, sql=o.sql.replace(old, new, 1)) if o.file == file else o for o in shipped]


def test_a_changed_function_file_is_applied_again_alone(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pending_migrations(db) == []
    changed = _replaced(
        "inbox.resolve_dead_letter.sql", "RETURNING resolved_at", "RETURNING resolved_at -- changed"
    )
    monkeypatch.setattr(migrate_module, "object_files", lambda: changed)
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
    changed = _replaced(
        "inbox.v_status.sql", "SELECT s.status, s.events, s.exact", "SELECT s.events, s.status"
    )
    monkeypatch.setattr(migrate_module, "object_files", lambda: changed)

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
    broken = _replaced(
        "inbox.v_lag.sql", "FROM pending p, processing r", "FROM no_such_table p, processing r"
    )
    monkeypatch.setattr(migrate_module, "object_files", lambda: broken)

    with pytest.raises(MigrationError, match=r"sql/functions/inbox\.v_lag\.sql failed"):
        migrate(dsn)

    # the DROP VIEW of the file went with it: the view of the last good file is still there
    assert db.execute("SELECT to_regclass('inbox.v_lag') IS NOT NULL AS ok").fetchone() == {"ok": True}
    assert pending_migrations(db) == ["sql/functions/inbox.v_lag.sql"]
