"""The least-privilege roles of migration 007: each can do its part of the job and nothing else.

Sessions take a role the way the service does: with_role() puts it in the DSN's startup options.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from inbox.apply.jobs import DatabaseWatch, check_alerts, metrics_job, purge_finished
from inbox.apply.worker import reap_expired_leases
from inbox.db.connect import DictConnection, connect, with_role
from inbox.db.migrate import migrate
from inbox.ingest import store_events
from inbox.metrics import MetricsSource
from inbox.settings import Settings
from tests.conftest import create_database, drop_database
from tests.helpers import dead_letters, drain, inbox_rows, ingest, quota, status_counts, titan_event, to_json
from tests.integration.test_sink_sql import SHAPES, Record, connector_session
from tests.processes import inbox_env, inbox_process, wait_for

ROLES = ("inbox_ingest", "inbox_worker", "inbox_readonly")


@contextmanager
def _sessions(dsn: str) -> Iterator[dict[str, DictConnection]]:
    sessions = {role: connect(with_role(dsn, role), autocommit=True) for role in ROLES}
    try:
        yield sessions
    finally:
        for conn in sessions.values():
            conn.close()


@pytest.fixture
def as_role(dsn: str) -> Iterator[dict[str, DictConnection]]:
    """One autocommit session per role on this test's database."""
    with _sessions(dsn) as sessions:
        yield sessions


@pytest.fixture(scope="module")
def refusing(pg_admin_dsn: str, template_db: str) -> Iterator[dict[str, DictConnection]]:
    """Sessions per role on one database shared by the refusal tests (a refused statement changes
    nothing), which holds an event, a quota and a dead letter to be refused access to."""
    name = f"inbox_roles_{os.getpid()}"
    dsn = create_database(pg_admin_dsn, name, template=template_db)
    with connect(dsn, autocommit=True) as conn:
        ingest(
            conn, [titan_event(uuid.uuid4(), 1, "INSERT"), titan_event(uuid.uuid4(), 1, "INSERT", qty_t=0)]
        )
        drain(dsn)
        ingest(conn, [titan_event(uuid.uuid4(), 1, "INSERT")])
    with _sessions(dsn) as sessions:
        yield sessions
    drop_database(pg_admin_dsn, name)


def _denied(conn: DictConnection, statement: str) -> bool:
    try:
        conn.execute(statement.encode())
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_roles_exist_cannot_log_in_and_each_session_runs_as_its_role(
    db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    rows = db.execute(
        "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
        " FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
        [list(ROLES)],
    ).fetchall()
    assert [r["rolname"] for r in rows] == sorted(ROLES)
    for row in rows:
        assert not any(row[flag] for flag in ("rolcanlogin", "rolsuper", "rolcreaterole", "rolcreatedb"))
        assert not row["rolbypassrls"]
    for role, conn in as_role.items():
        assert conn.execute("SELECT current_user AS u").fetchone() == {"u": role}
        conn.execute("RESET ROLE")  # back to the role of the startup options, not to the login
        assert conn.execute("SELECT current_user AS u").fetchone() == {"u": role}


def test_with_role_keeps_the_dsns_own_options(dsn: str) -> None:
    with_options = with_role(f"{dsn} options='-c work_mem=7MB'", "inbox_readonly")
    with connect(with_options, autocommit=True) as conn:
        row = conn.execute("SELECT current_user AS u, current_setting('work_mem') AS w").fetchone()
    assert row == {"u": "inbox_readonly", "w": "7MB"}
    assert with_role(dsn, None) == dsn


def test_migrating_another_database_reuses_the_roles(empty_dsn: str, db: DictConnection) -> None:
    oids = db.execute("SELECT rolname, oid FROM pg_roles WHERE rolname = ANY(%s)", [list(ROLES)]).fetchall()

    migrate(empty_dsn)  # the roles exist already (created by the template's migration)

    again = db.execute("SELECT rolname, oid FROM pg_roles WHERE rolname = ANY(%s)", [list(ROLES)]).fetchall()
    assert sorted(again, key=str) == sorted(oids, key=str)
    with connect(with_role(empty_dsn, "inbox_ingest"), autocommit=True) as conn:
        assert store_events(conn, [to_json(titan_event(uuid.uuid4(), 1, "INSERT"))], "http").accepted == 1


# -- inbox_ingest --------------------------------------------------------------------------------


def test_ingest_role_files_events_from_every_feed(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    ingest_conn = as_role["inbox_ingest"]
    events = [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3)]

    first = ingest(ingest_conn, events)
    again = ingest(ingest_conn, events)
    ingest_conn.execute(
        'INSERT INTO inbox.rejects (topic, "partition", "offset", raw, reason)'
        " VALUES ('titan.quota', 0, 7, 'garbage', 'not JSON') ON CONFLICT DO NOTHING"
    )
    sink_dsn = with_role(dsn, "inbox_ingest")
    for shape, deliver in SHAPES.items():
        with connector_session(sink_dsn) as conn:
            deliver(conn, [Record(uuid.uuid4(), 1)])
            assert deliver(conn, [Record(uuid.uuid5(uuid.NAMESPACE_OID, shape), 2)]), shape

    assert (first.accepted, again.duplicates) == (3, 3)
    assert inbox_rows(db) == 3 + 2 * len(SHAPES)
    assert status_counts(db) == {"pending": 3 + 2 * len(SHAPES)}
    counters = db.execute("SELECT metric, sum(value) AS n FROM inbox.metric_counters GROUP BY metric")
    assert {r["metric"]: r["n"] for r in counters} == {"ingested": 3 + 2 * len(SHAPES), "duplicate": 3}


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM public.quota",
        "INSERT INTO public.quota (quota_id, counterparty_id, direction, period_month, qty_t, metal_code,"
        " source_version) VALUES (gen_random_uuid(), 'CP', 'BUY', '2026-01-01', 1, 'CU', 1)",
        "UPDATE public.quota SET qty_t = 1",
        "DELETE FROM public.quota",
        "SELECT * FROM public.quota_processing_errors",
        "INSERT INTO public.quota_processing_errors (event_data, error_message, quota_id, version,"
        " is_delete, error_class) VALUES ('{}', 'x', gen_random_uuid(), 1, false, 'invalid')",
        "UPDATE public.quota_processing_errors SET resolved_at = now()",
        "DELETE FROM public.quota_processing_errors",
        "SELECT * FROM inbox.v_dead_letters",
        "SELECT * FROM inbox.replay_dead_letters(ARRAY(SELECT gen_random_uuid()))",
        "SELECT inbox.resolve_dead_letter(gen_random_uuid(), 'x')",
        "SELECT * FROM inbox.quota_events",
        "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source, status)"
        " VALUES (gen_random_uuid(), 1, false, '{}', 'http', 'applied')",
        "UPDATE inbox.quota_events SET status = 'applied'",
        "DELETE FROM inbox.quota_events",
        "SELECT * FROM inbox.claim_events('intruder', 10, '1 minute')",
        "UPDATE inbox.quota_versions SET version = 0",
        "SELECT * FROM inbox.rejects",
        "SELECT * FROM public.call_off",
        "SELECT pgmq.send('quota_changes', '{}')",
        "TRUNCATE inbox.quota_events",
        "CREATE TABLE inbox.mine (x int)",
    ],
)
def test_ingest_role_cannot_touch_quota_dead_letters_or_event_state(
    refusing: dict[str, DictConnection], statement: str
) -> None:
    assert _denied(refusing["inbox_ingest"], statement)


# -- inbox_worker --------------------------------------------------------------------------------


def test_worker_role_runs_the_whole_data_path_and_its_jobs(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    worker_dsn = with_role(dsn, "inbox_worker")
    kept, blocked, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(as_role["inbox_ingest"], [titan_event(q, 1, "INSERT") for q in (kept, blocked, gone)])
    assert drain(worker_dsn).applied == 3
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [blocked])
    ingest(
        as_role["inbox_ingest"],
        [
            titan_event(kept, 2, qty_t=Decimal("7.5")),
            titan_event(kept, 1),  # stale
            titan_event(blocked, 2, "DELETE"),  # dead: delete_blocked
            titan_event(gone, 2, "DELETE"),
            titan_event(uuid.uuid4(), 1, "INSERT", direction="HOLD"),  # dead: invalid
        ],
    )
    # One event claimed by a worker that vanished: the reaper gives it back.
    ingest(db, [titan_event(kept, 3, qty_t=Decimal("8"))])
    db.execute(
        "UPDATE inbox.quota_events SET status = 'processing', lease_owner = 'vanished',"
        " lease_expires_at = now() - interval '1 second', attempts = 1 WHERE version = 3"
    )
    quick = Settings(backoff_base_seconds=0.001, backoff_cap_seconds=0.001, alert_dead_letter_threshold=1)
    with connect(worker_dsn, autocommit=True) as conn:
        assert reap_expired_leases(conn, quick).retried == 1

    counts = drain(worker_dsn)

    assert (counts.applied, counts.stale, counts.dead, counts.published) == (2, 1, 2, 2)
    row = quota(db, kept)
    assert row is not None and (row["source_version"], row["qty_t"]) == (3, Decimal("8"))
    assert quota(db, gone) is None
    assert {d["error_class"] for d in dead_letters(db)} == {"delete_blocked", "invalid"}
    published = db.execute("SELECT count(*) AS n FROM pgmq.q_quota_changes").fetchone()
    assert published == {"n": 3 + 2}
    assert check_alerts(worker_dsn, quick, DatabaseWatch()) is not None
    metrics_job(worker_dsn, quick)  # folds counters, then reads the figures
    assert MetricsSource(worker_dsn, 60).refresh().database_up
    db.execute("UPDATE inbox.quota_events SET received_at = now() - interval '8 days'")
    assert purge_finished(worker_dsn, Settings(retention=timedelta(days=7)), 10) == 6  # dead stay


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE public.quota",
        "DROP TABLE inbox.quota_events",
        "DROP VIEW inbox.v_lag",
        "DROP FUNCTION inbox.apply_events(text, jsonb)",
        "DROP SCHEMA inbox CASCADE",
        "ALTER TABLE public.quota ADD COLUMN sneaky text",
        "ALTER TABLE inbox.quota_events DISABLE TRIGGER ALL",
        "ALTER FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) SECURITY INVOKER",
        "CREATE OR REPLACE FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text)"
        " RETURNS integer LANGUAGE sql AS 'SELECT 0'",
        "CREATE TABLE inbox.mine (x int)",
        "CREATE TABLE public.mine (x int)",
        "CREATE INDEX ON inbox.quota_events (payload)",
        "TRUNCATE public.quota",
        "TRUNCATE public.quota_processing_errors",
        "DELETE FROM public.quota_processing_errors",
        "UPDATE public.quota_processing_errors SET resolved_at = now()",
        "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source)"
        " VALUES (gen_random_uuid(), 1, false, '{}', 'http')",
        "DELETE FROM inbox.schema_migrations",
        "GRANT inbox_ingest TO inbox_worker",
        "DELETE FROM public.call_off",
        "SELECT * FROM pgmq.read('quota_changes', 30, 10)",
        "SELECT pgmq.drop_queue('quota_changes')",
    ],
)
def test_worker_role_cannot_change_the_schema_or_rewrite_history(
    refusing: dict[str, DictConnection], statement: str
) -> None:
    assert _denied(refusing["inbox_worker"], statement)


# -- inbox_readonly ------------------------------------------------------------------------------


def test_readonly_role_reads_the_dba_views_and_the_metrics(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT"), titan_event(uuid.uuid4(), 1, "INSERT", qty_t=-1)])
    drain(dsn)
    readonly = as_role["inbox_readonly"]

    states = {r["status"]: r["events"] for r in readonly.execute("SELECT * FROM inbox.v_status")}
    lag = readonly.execute("SELECT * FROM inbox.v_lag").fetchone()
    letters = readonly.execute("SELECT error_class FROM inbox.v_dead_letters").fetchall()

    assert (states["applied"], states["dead"], states["pending"]) == (1, 1, 0)
    assert lag is not None and lag["applied_5m"] == 1
    assert letters == [{"error_class": "invalid"}]
    snapshot = MetricsSource(with_role(dsn, "inbox_readonly"), 60).refresh()
    assert snapshot.database_up and snapshot.dead_letters_unresolved == 1


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM public.quota",
        "UPDATE inbox.quota_events SET status = 'pending'",
        "DELETE FROM public.quota_processing_errors",
        "SELECT * FROM inbox.replay_dead_letters(ARRAY(SELECT gen_random_uuid()))",
        "SELECT * FROM inbox.ingest_events('[]', '{}', '{}', '{}', 'http')",
        "SELECT * FROM inbox.claim_events('intruder', 10, '1 minute')",
        "SELECT inbox.fold_counters()",
        "CREATE TABLE inbox.mine (x int)",
    ],
)
def test_readonly_role_writes_nothing(refusing: dict[str, DictConnection], statement: str) -> None:
    assert _denied(refusing["inbox_readonly"], statement)


# -- the definer functions -----------------------------------------------------------------------


def test_every_security_definer_function_pins_its_search_path_and_is_not_public(db: DictConnection) -> None:
    """A definer function runs with its owner's rights: a caller must not be able to reach it
    through PUBLIC, nor slip an object of its own into the names it resolves."""
    rows = db.execute(
        """SELECT p.oid::regprocedure::text AS name, p.proconfig,
                  has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname IN ('inbox', 'public') AND p.prosecdef
           ORDER BY 1"""
    ).fetchall()
    assert {r["name"].split("(")[0] for r in rows} == {
        "inbox.ingest_events",
        "inbox.add_counters",
        "inbox.titan_quota_sink_to_inbox",
    }
    for row in rows:
        assert row["proconfig"] == ["search_path=pg_catalog, pg_temp"], row["name"]
        assert not row["public_execute"], row["name"]


# -- login roles, as a DBA sets them up ----------------------------------------------------------


@pytest.fixture
def login_roles(db: DictConnection) -> Iterator[dict[str, str]]:
    """LOGIN roles that are members of one group each (cluster-wide: dropped after the test)."""
    names = {group: f"t_{group}_{os.getpid()}" for group in ROLES}
    for group, name in names.items():
        db.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(group))
        )
    yield names
    for name in names.values():
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_login_role_granted_a_group_gets_exactly_its_rights(dsn: str, login_roles: dict[str, str]) -> None:
    q = uuid.uuid4()
    with connect(make_conninfo(dsn, user=login_roles["inbox_ingest"]), autocommit=True) as conn:
        assert ingest(conn, [titan_event(q, 1, "INSERT")]).accepted == 1
        assert _denied(conn, "SELECT * FROM public.quota")
    assert drain(make_conninfo(dsn, user=login_roles["inbox_worker"])).applied == 1
    with connect(make_conninfo(dsn, user=login_roles["inbox_readonly"]), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) AS n FROM inbox.v_dead_letters").fetchone() == {"n": 0}
        assert _denied(conn, "SELECT * FROM public.quota")


def test_inbox_run_needs_no_ddl_right_once_the_owner_has_migrated(
    dsn: str, db: DictConnection, tmp_path: Path
) -> None:
    """One login for `inbox run`, a member of the three groups and nothing more: it starts (nothing to
    migrate), serves and applies, each part as its own role."""
    login = f"t_app_{os.getpid()}"
    db.execute(
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE inbox_ingest, inbox_worker, inbox_readonly").format(
            sql.Identifier(login)
        )
    )
    env = inbox_env(
        make_conninfo(dsn, user=login),
        INBOX_HTTP_PORT="0",
        INBOX_POLL_SECONDS="0.1",
        INBOX_INGEST_ROLE="inbox_ingest",
        INBOX_WORKER_ROLE="inbox_worker",
        INBOX_READONLY_ROLE="inbox_readonly",
    )
    q = uuid.uuid4()
    try:
        with inbox_process("run", env=env, log=tmp_path / "run.log") as service:
            response = httpx.post(
                f"{service.url()}/events", content=to_json(titan_event(q, 1, "INSERT")), timeout=30
            )
            wait_for(lambda: quota(db, q) is not None, "the event applied")
            metrics = httpx.get(f"{service.url()}/metrics", timeout=30)
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
    assert response.status_code == 202
    assert "inbox_database_up 1.0" in metrics.text
