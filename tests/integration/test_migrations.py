"""inbox migrate: fresh database, re-run, edited-file refusal, unknown versions, racing migrators, the
baseline."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg import sql

import inbox.db.migrate as migrate_module
from inbox.db.connect import DictConnection, connect
from inbox.db.migrate import (
    BEFORE_BASELINE,
    SQUASHED,
    MigrationError,
    MigrationReport,
    migrate,
    pending_migrations,
)
from inbox.db.sqlfiles import Migration, migrations, object_files, query
from tests.helpers import ingest, titan_event, to_json
from tests.processes import inbox_env, inbox_process, wait_for


def _label(m: Migration) -> str:
    return f"{m.version:03d}_{m.name}"


def _recorded(dsn: str) -> list[tuple[int, str, str]]:
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM inbox.schema_migrations ORDER BY version")
        return [(int(r["version"]), str(r["name"]), str(r["checksum"])) for r in rows]


def _relation_exists(conn: DictConnection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present", [name]).fetchone()
    assert row is not None
    return bool(row["present"])


def test_fresh_database_gets_every_migration_with_its_checksum(empty_dsn: str) -> None:
    shipped = migrations()
    # the baseline (001-010 squashed), then one number after another
    assert shipped[0].name == "baseline"
    assert [m.version for m in shipped] == list(range(shipped[0].version, shipped[0].version + len(shipped)))

    report = migrate(empty_dsn)

    assert report.applied == [_label(m) for m in shipped]
    assert report.already == 0
    recorded = _recorded(empty_dsn)
    assert recorded == [(m.version, m.name, m.checksum) for m in shipped]
    for (_, _, checksum), m in zip(recorded, shipped, strict=True):
        assert checksum == hashlib.sha256(m.sql.encode("utf-8")).hexdigest()
    with connect(empty_dsn, autocommit=True) as conn:
        for relation in (
            "public.quota",
            "public.call_off",
            "public.v_quota_balance",
            "public.quota_processing_errors",
            "inbox.quota_events",
        ):
            assert _relation_exists(conn, relation), relation
        assert pending_migrations(conn) == []


def test_rerun_is_a_no_op(empty_dsn: str) -> None:
    migrate(empty_dsn)
    before = _recorded(empty_dsn)
    with connect(empty_dsn, autocommit=True) as conn:
        applied_at = conn.execute("SELECT version, applied_at FROM inbox.schema_migrations").fetchall()

    report = migrate(empty_dsn)

    assert report == MigrationReport(applied=[], already=len(migrations()))
    assert _recorded(empty_dsn) == before
    with connect(empty_dsn, autocommit=True) as conn:
        assert (
            conn.execute("SELECT version, applied_at FROM inbox.schema_migrations").fetchall() == applied_at
        )


def test_unmigrated_database_reports_every_migration_pending(empty_dsn: str) -> None:
    with connect(empty_dsn, autocommit=True) as conn:
        assert pending_migrations(conn) == [_label(m) for m in migrations()]


def test_an_edited_applied_migration_is_refused(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations()
    edited = [replace(m, sql=m.sql + "\n-- a harmless edit\n") if m.version == 12 else m for m in shipped]
    monkeypatch.setattr(migrate_module, "migrations", lambda: edited)
    before = _recorded(dsn)

    with pytest.raises(MigrationError, match=r"012_\w+ was changed after it was applied") as refused:
        migrate(dsn)
    assert "new migration" in str(refused.value)

    with pytest.raises(MigrationError, match="changed after it was applied"):
        pending_migrations(db)
    assert _recorded(dsn) == before


def test_an_edited_migration_is_refused_before_anything_new_is_applied(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations()
    edited = [replace(m, sql=m.sql.replace("CREATE", "create", 1)) if m.version == 10 else m for m in shipped]
    extra = Migration(shipped[-1].version + 1, "later_table", "CREATE TABLE public.later_table (id int);")
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*edited, extra])

    with pytest.raises(MigrationError, match=r"010_baseline was changed"):
        migrate(dsn)

    assert not _relation_exists(db, "public.later_table")
    assert len(_recorded(dsn)) == len(shipped)


def test_a_new_migration_is_applied_alone_and_recorded(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations()
    extra = Migration(shipped[-1].version + 1, "later_table", "CREATE TABLE public.later_table (id int);")
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*shipped, extra])
    assert pending_migrations(db) == [_label(extra)]

    report = migrate(dsn)

    # after a numbered migration every object file is applied again: it may have dropped one
    assert report == MigrationReport(
        applied=[_label(extra)], already=len(shipped), objects=[o.file for o in object_files()]
    )
    assert _relation_exists(db, "public.later_table")
    assert _recorded(dsn)[-1] == (extra.version, extra.name, extra.checksum)
    assert pending_migrations(db) == []


def test_a_failing_migration_is_rolled_back_and_not_recorded(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrations()
    broken = Migration(
        shipped[-1].version + 1,
        "broken",
        "CREATE TABLE public.half_done (id int);\nSELECT * FROM public.no_such_table;",
    )
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*shipped, broken])

    with pytest.raises(MigrationError, match=_label(broken)):
        migrate(dsn)

    assert not _relation_exists(db, "public.half_done")
    assert len(_recorded(dsn)) == len(shipped)
    # The lock was released: a fixed migration goes through on the next run.
    fixed = replace(broken, sql="CREATE TABLE public.half_done (id int);")
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*shipped, fixed])
    assert migrate(dsn).applied == [_label(fixed)]


def test_a_database_with_a_migration_this_code_does_not_ship_is_refused(dsn: str, db: DictConnection) -> None:
    future = migrations()[-1].version + 1
    db.execute(
        "INSERT INTO inbox.schema_migrations (version, name, checksum) VALUES (%s, 'from_the_future', 'abc')",
        [future],
    )

    with pytest.raises(MigrationError, match=rf"{future:03d}_from_the_future.*does not ship"):
        migrate(dsn)
    with pytest.raises(MigrationError, match="does not ship"):
        pending_migrations(db)


def test_racing_migrators_both_succeed_and_record_each_migration_once(empty_dsn: str) -> None:
    shipped = migrations()
    racers = 4
    barrier = threading.Barrier(racers)
    reports: list[MigrationReport] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            report = migrate(empty_dsn)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            reports.append(report)

    threads = [threading.Thread(target=run) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert len(reports) == racers
    applied = [label for report in reports for label in report.applied]
    assert sorted(applied) == sorted(_label(m) for m in shipped)
    assert sorted(len(report.applied) for report in reports) == [0] * (racers - 1) + [len(shipped)]
    assert _recorded(empty_dsn) == [(m.version, m.name, m.checksum) for m in shipped]


# -- schemas others may create in (H3) --------------------------------------------------------------


@pytest.mark.parametrize("grantee", ["PUBLIC", "a role"])
def test_migrate_refuses_a_public_schema_others_may_create_in(
    dsn: str, db: DictConnection, grantee: str
) -> None:
    role = f"creator_{os.getpid()}"
    target = "PUBLIC" if grantee == "PUBLIC" else role
    if grantee != "PUBLIC":
        db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        db.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.SQL(target)))

        with pytest.raises(MigrationError) as refused:
            migrate(dsn)
        message = str(refused.value)
        assert "\n" not in message
        assert f"REVOKE CREATE ON SCHEMA public FROM {target};" in message

        db.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(sql.SQL(target)))
        assert migrate(dsn).applied == []
    finally:
        if grantee != "PUBLIC":
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_migrate_refuses_an_inbox_schema_others_may_create_in(dsn: str, db: DictConnection) -> None:
    db.execute("GRANT CREATE ON SCHEMA inbox TO PUBLIC")
    with pytest.raises(MigrationError, match="REVOKE CREATE ON SCHEMA inbox FROM PUBLIC;"):
        migrate(dsn)


def test_a_fresh_server_lets_nobody_else_create_in_public(empty_dsn: str) -> None:
    # PostgreSQL 15 and later: public belongs to pg_database_owner, with no CREATE for PUBLIC
    assert migrate(empty_dsn).applied


# -- the baseline (001-010 squashed) ------------------------------------------------------------------


def _record_history(dsn: str, rows: list[tuple[int, str, str]]) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute(query("create_migrations_table"))
        for version, name, checksum in rows:
            conn.execute(query("record_migration"), {"version": version, "name": name, "checksum": checksum})


def test_a_database_left_part_way_through_001_010_is_refused_with_the_fix(empty_dsn: str) -> None:
    _record_history(empty_dsn, list(SQUASHED[:5]))

    with pytest.raises(MigrationError) as refused:
        migrate(empty_dsn)
    message = str(refused.value)
    assert "\n" not in message
    assert "it has 005_kafka_and_sink, not 006_operations" in message
    assert f"release before the baseline (commit {BEFORE_BASELINE}) first" in message
    with connect(empty_dsn, autocommit=True) as conn:
        assert not _relation_exists(conn, "public.quota")  # nothing applied
        with pytest.raises(MigrationError, match="stopped part-way"):
            pending_migrations(conn)


def test_an_edited_squashed_migration_is_refused(empty_dsn: str) -> None:
    _record_history(empty_dsn, [(v, n, "0" * 64 if v == 3 else c) for v, n, c in SQUASHED])

    with pytest.raises(MigrationError, match=r"003_inbox_functions was changed after it was applied"):
        migrate(empty_dsn)


def test_a_database_of_001_010_has_the_baseline(empty_dsn: str) -> None:
    # (tests/integration/test_schema_objects.py upgrades a real one, with its data)
    _record_history(empty_dsn, list(SQUASHED))
    with connect(empty_dsn, autocommit=True) as conn:
        assert pending_migrations(conn) == [_label(m) for m in migrations()[1:]]


# The insert trigger as a database at 017 has it (sql/functions/inbox.count_inserted_events.sql
# until 018); its body does not matter to 018, which drops the trigger and the function by name.
OLD_INSERT_TRIGGER = """
CREATE FUNCTION inbox.count_inserted_events() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN NULL; END; $$;
CREATE TRIGGER quota_events_count_inserted AFTER INSERT ON inbox.quota_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_inserted_events();
"""


def test_migration_018_drops_the_insert_trigger_and_keeps_the_counts(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at 017 with the insert trigger: 018 drops it and its function, the counters so far
    stay, and an ingest after it is counted once (by inbox.ingest_typed_events)."""
    shipped = migrations()
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: [m for m in shipped if m.version < 18])
        migrate(empty_dsn)
    with connect(empty_dsn, autocommit=True) as conn:
        conn.execute(OLD_INSERT_TRIGGER)
        ingest(conn, [titan_event(uuid.uuid4(), 1)], "kafka")
        counted = conn.execute("SELECT * FROM inbox.metric_counters ORDER BY metric, label").fetchall()
        assert [(r["metric"], r["label"], r["value"]) for r in counted] == [("ingested", "kafka", 1.0)]

    report = migrate(empty_dsn)

    assert report.applied == [_label(m) for m in shipped if m.version >= 18]
    with connect(empty_dsn, autocommit=True) as conn:
        kept = conn.execute("SELECT * FROM inbox.metric_counters ORDER BY metric, label").fetchall()
        assert kept == counted
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger"
            " WHERE tgrelid = 'inbox.quota_events'::regclass AND NOT tgisinternal"
        ).fetchall()
        assert triggers == []
        gone = conn.execute("SELECT to_regprocedure('inbox.count_inserted_events()') AS f").fetchone()
        assert gone == {"f": None}
        ingest(conn, [titan_event(uuid.uuid4(), 1)], "kafka")
        ingested = conn.execute(
            "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'ingested'"
        ).fetchone()
        assert ingested == {"n": 2.0}


# The unchecked store both ingest functions shared, as a database at 018 has it (sql/functions/
# inbox.store_events.sql until 019); its body does not matter to 019, which drops it by its signature.
OLD_STORE = (
    "inbox.store_events(jsonb, uuid[], bigint[], boolean[], text, bigint[], boolean[], text[], text[],"
    " date[], numeric[], numeric[], text[], text[], timestamptz[])"
)


def test_migration_019_drops_the_unchecked_store_and_both_entries_still_store(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at 018 with inbox.store_events: 019 drops it, and the typed and the jsonb entry
    each store and count their event (through inbox.ingest_typed_events)."""
    shipped = migrations()
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: [m for m in shipped if m.version < 19])
        migrate(empty_dsn)
    with connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {OLD_STORE} RETURNS integer"
            " LANGUAGE sql SET search_path = pg_catalog, pg_temp AS 'SELECT 0'"
        )
        conn.execute(f"REVOKE EXECUTE ON FUNCTION {OLD_STORE} FROM PUBLIC")

    report = migrate(empty_dsn)

    assert report.applied == [_label(m) for m in shipped if m.version >= 19]
    with connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regprocedure(%s) AS f", [OLD_STORE]).fetchone() == {"f": None}
        ingest(conn, [titan_event(uuid.uuid4(), 1)], "kafka")
        untyped = uuid.uuid4()
        filed = conn.execute(
            "SELECT inbox.ingest_events(%s::jsonb, %s::uuid[], '{1}', '{f}', 'kafka') AS n",
            [f"[{to_json(titan_event(untyped, 1))}]", [untyped]],
        ).fetchone()
        assert filed == {"n": 1}
        rows = conn.execute("SELECT typed FROM inbox.quota_events ORDER BY typed").fetchall()
        assert rows == [{"typed": False}, {"typed": True}]
        ingested = conn.execute(
            "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'ingested'"
        ).fetchone()
        assert ingested == {"n": 2.0}


def test_the_typed_events_migration_keeps_every_stored_event_and_dead_letter(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Migrations 015 to 018 on a database at 014 with events in every state: each stored event,
    dead letter and counter survives as it was (an old worker's claim given back, its attempt kept);
    `inbox work` then types the untyped pending ones from their payload and applies them, exactly,
    counting them per batch."""
    shipped = migrations()
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: [m for m in shipped if m.version < 15])
        patch.setattr(migrate_module, "object_files", lambda: [])  # the tables are what 015 changes
        migrate(empty_dsn)
    pending, claimed, applied, invalid, dead, stale = (uuid.uuid4() for _ in range(6))
    rows = [
        (pending, "pending", titan_event(pending, 1, "INSERT", qty_t=Decimal("1000.0010"))),
        (claimed, "processing", titan_event(claimed, 2, "INSERT")),
        (applied, "applied", titan_event(applied, 1, "INSERT")),
        (invalid, "pending", titan_event(invalid, 1, "INSERT", direction="HOLD")),
        (dead, "dead", titan_event(dead, 1, "INSERT", qty_t=Decimal("-1"))),
        (stale, "stale", titan_event(stale, 1, "INSERT")),
    ]
    with connect(empty_dsn, autocommit=True) as conn:
        for quota_id, status, event in rows:
            held = status == "processing"
            conn.execute(
                "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source, status,"
                " attempts, lease_owner, lease_expires_at, last_error)"
                " VALUES (%s, %s, false, %s::jsonb, 'http', %s, %s, %s, %s, %s)",
                [
                    quota_id,
                    event["metadata"]["version"],
                    to_json(event),
                    status,
                    1 if status in ("processing", "applied", "dead", "stale") else 0,
                    "old-worker" if held else None,
                    datetime.now(UTC) + timedelta(minutes=5) if held else None,
                    "qty_t must be > 0" if status == "dead" else None,
                ],
            )
        conn.execute(
            "INSERT INTO public.quota_processing_errors (event_data, error_message, quota_id, version,"
            " is_delete, error_class) SELECT payload, last_error, quota_id, version, false, 'invalid'"
            " FROM inbox.quota_events WHERE status = 'dead'"
        )
        before = conn.execute(
            "SELECT quota_id, version, payload::text, source, received_at, status, attempts, last_error"
            " FROM inbox.quota_events ORDER BY quota_id"
        ).fetchall()
        letters = conn.execute("SELECT * FROM public.quota_processing_errors ORDER BY id").fetchall()
        counted = conn.execute(
            "SELECT * FROM inbox.metric_counters ORDER BY metric, label, backend"
        ).fetchall()

    report = migrate(empty_dsn)

    assert report.applied == [_label(m) for m in shipped if m.version >= 15]
    with connect(empty_dsn, autocommit=True) as conn:
        after = conn.execute(
            "SELECT quota_id, version, payload::text, source, received_at, status, attempts, last_error"
            " FROM inbox.quota_events ORDER BY quota_id"
        ).fetchall()
        # every row kept; the old worker's claim given back, with the attempt it spent
        assert [dict(r, status="pending") if r["quota_id"] == claimed else r for r in before] == after
        assert conn.execute("SELECT * FROM public.quota_processing_errors ORDER BY id").fetchall() == letters
        assert conn.execute("SELECT count(*) AS n FROM inbox.quota_events WHERE typed").fetchone() == {"n": 0}
        # 016, 018: the counters so far kept; no trigger on the inbox's updates or inserts any more
        assert (
            conn.execute("SELECT * FROM inbox.metric_counters ORDER BY metric, label, backend").fetchall()
            == counted
        )
        assert (
            conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'inbox.quota_events'::regclass"
                " AND NOT tgisinternal AND tgtype & (4 | 16) <> 0"  # TRIGGER_TYPE_INSERT, _UPDATE
            ).fetchall()
            == []
        )
        assert conn.execute("SELECT to_regprocedure('inbox.count_inserted_events()') AS f").fetchone() == {
            "f": None
        }

        with inbox_process(
            "work", env=inbox_env(empty_dsn, INBOX_POLL_SECONDS="0.2"), log=tmp_path / "w.log"
        ):
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) AS n FROM inbox.quota_events WHERE status = 'pending'"
                    ).fetchone()
                    == {"n": 0}
                ),
                "the worker to type and apply the old pending events",
            )
        states = {
            r["quota_id"]: (r["status"], r["typed"])
            for r in conn.execute("SELECT quota_id, status, typed FROM inbox.quota_events")
        }
        assert states == {
            pending: ("applied", True),
            claimed: ("applied", True),
            applied: ("applied", False),
            invalid: ("dead", True),
            dead: ("dead", False),
            stale: ("stale", False),
        }
        # ... and the batches count what they applied: the two pending events
        applied_count = conn.execute(
            "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'applied'"
        ).fetchone()
        assert applied_count == {"n": 2.0}
        kept = conn.execute("SELECT qty_t FROM public.quota WHERE quota_id = %s", [pending]).fetchone()
        assert kept is not None and str(kept["qty_t"]) == "1000.0010"
        classes = conn.execute(
            "SELECT quota_id, error_class FROM public.quota_processing_errors ORDER BY created_at"
        ).fetchall()
        assert {(r["quota_id"], r["error_class"]) for r in classes} == {
            (dead, "invalid"),
            (invalid, "invalid"),
        }
