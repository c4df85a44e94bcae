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

from inbox.apply.jobs import DatabaseWatch, check_alerts, metrics_job, purge_finished, purge_history
from inbox.apply.worker import reap_abandoned_claims
from inbox.db.connect import DictConnection, connect, with_role
from inbox.db.migrate import MigrationError, migrate
from inbox.ingest import Source
from inbox.metrics import MetricsSource
from inbox.settings import Settings
from inbox.store import store_events
from tests.conftest import create_database, drop_database
from tests.helpers import dead_letters, drain, inbox_rows, ingest, quota, status_counts, titan_event, to_json
from tests.integration.test_sink_sql import SHAPES, Record, connector_session
from tests.processes import SERVICE_ROLES, inbox_env, inbox_process, wait_for

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
        'INSERT INTO inbox.rejects (source, topic, "partition", "offset", raw, reason)'
        " VALUES ('kafka', 'titan.quota', 0, 7, 'garbage', 'not JSON') ON CONFLICT DO NOTHING"
    )
    ingest_conn.execute(
        "INSERT INTO inbox.rejects (source, raw, reason) VALUES ('http', '\"x\"', 'item 0: ...')"
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
        "SELECT * FROM inbox.claim_batch(10)",
        "SELECT * FROM inbox.process_batch(NULL, '{}', '{}', '{}', NULL, NULL, 5)",
        "SELECT * FROM inbox.claim_ledger",
        "DELETE FROM inbox.claim_ledger",
        "UPDATE inbox.quota_versions SET version = 0",
        "SELECT * FROM inbox.rejects",
        "SELECT * FROM public.call_off",
        "SELECT pgmq.send('quota_changes', '{}')",
        "TRUNCATE inbox.quota_events",
        "CREATE TABLE inbox.mine (x int)",
        # M3: counters only through ingest_events and its trigger, never forged
        "SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['http'], ARRAY['NaN']::float8[])",
        "SELECT inbox.add_counters(ARRAY['forged'], ARRAY['x'], ARRAY[1e300]::float8[])",
        "INSERT INTO inbox.metric_counters (metric, label, minute, backend, value)"
        " VALUES ('x', '', now(), 0, 1)",
        "SELECT * FROM inbox.reset_gate(gen_random_uuid(), NULL, 'x')",
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
        "INSERT INTO inbox.claim_ledger (worker, backend_pid, session_token, quota_ids, versions, is_delete)"
        " SELECT 'vanished', 0, 42, array_agg(quota_id), array_agg(version), array_agg(is_delete)"
        " FROM inbox.quota_events WHERE version = 3"
    )
    quick = Settings(backoff_base_seconds=0.001, backoff_cap_seconds=0.001, alert_dead_letter_threshold=1)
    with connect(worker_dsn, autocommit=True) as conn:
        assert reap_abandoned_claims(conn, quick).retried == 1

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
        "DROP FUNCTION inbox.process_batch(bigint, uuid[], bigint[], boolean[], text, text, integer,"
        " boolean)",
        "DROP SCHEMA inbox CASCADE",
        "ALTER TABLE public.quota ADD COLUMN sneaky text",
        "ALTER TABLE inbox.quota_events DISABLE TRIGGER ALL",
        "ALTER FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[])"
        " SECURITY INVOKER",
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
        # what an event says is not the worker's to change, nor may it delete one in hand
        "UPDATE inbox.quota_events SET payload = '{}'",
        "UPDATE inbox.quota_events SET version = version + 1",
        "UPDATE inbox.quota_events SET quota_id = gen_random_uuid()",
        "UPDATE inbox.quota_events SET source = 'replay'",
        "DELETE FROM inbox.quota_events WHERE status = 'pending'",
        "DELETE FROM inbox.rejects",
        "SELECT * FROM inbox.reset_gate(gen_random_uuid(), NULL, 'x')",
        # nor file events, typed or not
        "SELECT inbox.ingest_typed_events('[]', '{}', '{}', '{}', 'http', '{}', '{}', '{}', '{}', '{}', '{}',"
        " '{}', '{}', '{}', '{}')",
        "UPDATE inbox.quota_events SET received_at = now()",
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
        "SELECT * FROM inbox.claim_batch(10)",
        "SELECT * FROM inbox.reap_abandoned_claims(10, 5, '1 second', '1 minute')",
        "DELETE FROM inbox.claim_ledger",
        "SELECT inbox.fold_counters()",
        "CREATE TABLE inbox.mine (x int)",
        # M5: counts and states, never payloads
        "SELECT payload FROM inbox.quota_events",
        "SELECT qty_t, counterparty_id FROM inbox.quota_events",  # the typed columns say as much
        "SELECT * FROM inbox.quota_events",
        "SELECT event_data FROM public.quota_processing_errors",
        "SELECT event_data FROM inbox.v_dead_letters",
        "SELECT * FROM inbox.v_dead_letters",
        "SELECT * FROM pgmq.q_quota_changes",
        "SELECT * FROM inbox.rejects",
        "SELECT * FROM inbox.reset_gate(gen_random_uuid(), NULL, 'x')",
    ],
)
def test_readonly_role_writes_nothing_and_reads_no_payload(
    refusing: dict[str, DictConnection], statement: str
) -> None:
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
        "inbox.ingest_typed_events",
        "inbox.add_counters",
        "inbox.titan_quota_sink_to_inbox",
        "inbox.purge_finished_events",
        "inbox.purge_history",
    }
    for row in rows:
        assert row["proconfig"] == ["search_path=pg_catalog, pg_temp"], row["name"]
        assert not row["public_execute"], row["name"]


def test_the_jsonb_entry_is_held_to_the_typed_entrys_checks(as_role: dict[str, DictConnection]) -> None:
    """inbox.ingest_events files through inbox.ingest_typed_events (migration 019), whose check of the
    arrays is the one of both entries: every key array, and the LSNs when given, one per event."""
    q, text = uuid.uuid4(), to_json(titan_event(uuid.uuid4(), 1, "INSERT"))
    call = (
        "SELECT inbox.ingest_events(%s::jsonb, %s::uuid[], %s::bigint[], %s::boolean[], 'http', %s::bigint[])"
    )
    for keys in (
        [[q], [1], [False], None],  # two events, one key
        [[q, q], [1], [False, False], None],
        [[q, q], [1, 2], [False, False], [7]],
    ):
        with pytest.raises(psycopg.errors.RaiseException, match=r"2 events, [12] quota ids, and arrays of"):
            as_role["inbox_ingest"].execute(call, [f"[{text},{text}]", *keys])
    assert as_role["inbox_ingest"].execute(call, [f"[{text}]", [q], [1], [False], None]).fetchone() == {
        "ingest_events": 1
    }


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
        make_conninfo(dsn, user=login), INBOX_HTTP_PORT="0", INBOX_POLL_SECONDS="0.1", **SERVICE_ROLES
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


# -- issue 12: what the ingest role may claim --------------------------------------------------------


def _file(
    conn: DictConnection, event: dict[str, object], key: tuple[uuid.UUID, int, bool], source: str
) -> int:
    """inbox.ingest_events called directly, with the key given apart from the payload."""
    row = conn.execute(
        "SELECT inbox.ingest_events(%s::jsonb, %s::uuid[], %s::bigint[], %s::boolean[], %s) AS n",
        [f"[{to_json(event)}]", [key[0]], [key[1]], [key[2]], source],
    ).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize("source", ["replay", "sink", "reconcile"])
def test_ingest_role_files_only_as_http_or_kafka(
    db: DictConnection, as_role: dict[str, DictConnection], source: str
) -> None:
    """The source says where an event came from (replay: an operator put it back); the ingest role
    may not pass its events off as something else. The sink's trigger still files as 'sink'
    (test_ingest_role_files_events_from_every_feed), and the owner replays."""
    q = uuid.uuid4()
    event = titan_event(q, 1, "INSERT")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not file events as source"):
        _file(as_role["inbox_ingest"], event, (q, 1, False), source)
    assert _file(as_role["inbox_ingest"], event, (q, 1, False), "kafka") == 1
    assert store_events(db, [to_json(titan_event(q, 2))], "replay").accepted == 1
    sources = db.execute("SELECT version, source FROM inbox.quota_events ORDER BY version").fetchall()
    assert sources == [{"version": 1, "source": "kafka"}, {"version": 2, "source": "replay"}]


@pytest.mark.parametrize("source", ["replay", "sink", "reconcile"])
def test_ingest_role_files_typed_events_only_as_http_or_kafka(
    db: DictConnection, as_role: dict[str, DictConnection], source: Source
) -> None:
    """inbox.ingest_typed_events checks the source for both entries (migration 019): 'sink' only from
    the sink's trigger (test_ingest_role_files_events_from_every_feed), not from a session's call."""
    text = to_json(titan_event(uuid.uuid4(), 1, "INSERT"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not file events as source"):
        store_events(as_role["inbox_ingest"], [text], source)
    assert store_events(as_role["inbox_ingest"], [text], "kafka").accepted == 1
    assert db.execute("SELECT source, typed FROM inbox.quota_events").fetchall() == [
        {"source": "kafka", "typed": True}
    ]


def test_an_event_filed_under_a_key_not_its_own_is_a_dead_letter_not_applied(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    """M4: quota A took quota B's fields at the highest version, because the gate trusted the key
    the caller gave and apply took the columns from the payload."""
    a, b = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(a, 1, "INSERT", qty_t=Decimal("1"))])
    drain(dsn)
    top = 2**63 - 1
    _file(as_role["inbox_ingest"], titan_event(b, 1, "INSERT", qty_t=Decimal("999")), (a, top, False), "http")
    _file(as_role["inbox_ingest"], titan_event(a, 2, "UPDATE", qty_t=Decimal("2")), (a, 3, False), "http")

    counts = drain(dsn)

    assert (counts.applied, counts.dead) == (0, 2)
    row = quota(db, a)
    assert row is not None and (row["source_version"], row["qty_t"]) == (1, Decimal("1"))
    assert quota(db, b) is None
    gate = db.execute("SELECT version FROM inbox.quota_versions WHERE quota_id = %s", [a]).fetchone()
    assert gate == {"version": 1}
    letters = {d["version"]: d for d in dead_letters(db)}
    assert letters[top]["error_class"] == "invalid"
    assert f"the payload's key is ({b}, version 1, upsert)" in letters[top]["error_message"]
    assert (
        "the payload's key is (" in letters[3]["error_message"] and "version 2" in letters[3]["error_message"]
    )


def test_counters_only_grow(db: DictConnection) -> None:
    """M3: NaN, -Infinity or a negative delta made /metrics lie and v_lag fail (bigint out of range);
    refused even for the owner."""
    for value in ("NaN", "-Infinity", "Infinity", "-1"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="finite number >= 0"):
            db.execute(
                "SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['http'], ARRAY[%s]::float8[])", [value]
            )
    assert db.execute("SELECT count(*) AS n FROM inbox.metric_counters").fetchone() == {"n": 0}
    assert db.execute("SELECT received_5m FROM inbox.v_lag").fetchone() == {"received_5m": 0}


# -- issue 12: read-only means counts and states -----------------------------------------------------


def test_pg_monitor_does_not_read_the_outbox(dsn: str, db: DictConnection) -> None:
    """pgmq grants SELECT on every table of its schema to pg_monitor; the outbox carries whole quotas."""
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT")])
    drain(dsn)
    with connect(with_role(dsn, "pg_monitor"), autocommit=True) as monitor:
        for table in ("q_quota_changes", "a_quota_changes", "q_inbox_alerts", "a_inbox_alerts"):
            assert _denied(monitor, f"SELECT * FROM pgmq.{table}"), table


def test_readonly_role_still_sees_every_count_and_state(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT", qty_t=-1)])
    drain(dsn)
    readonly = as_role["inbox_readonly"]
    row = readonly.execute(
        "SELECT quota_id, version, status, attempts, last_error FROM inbox.quota_events"
    ).fetchone()
    assert row is not None and row["status"] == "dead"
    letter = readonly.execute(
        "SELECT error_class, event_type, inbox_status, superseded FROM inbox.v_dead_letters"
    ).fetchone()
    assert letter == {
        "error_class": "invalid",
        "event_type": "INSERT",
        "inbox_status": "dead",
        "superseded": False,
    }


# -- issue 12: the version gate can be reset, and is audited -----------------------------------------


def test_a_delete_at_the_highest_version_can_be_undone_by_resetting_the_gate(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    """M2: a DELETE at 2^63 - 1 removed the quota for good: nothing can pass such a gate."""
    q = uuid.uuid4()
    top = 2**63 - 1
    ingest(db, [titan_event(q, 1, "INSERT"), titan_event(q, top, "DELETE")])
    drain(dsn)
    ingest(db, [titan_event(q, 2, qty_t=Decimal("2"))])
    assert drain(dsn).stale == 1 and quota(db, q) is None

    for role in ROLES:
        assert _denied(as_role[role], f"SELECT * FROM inbox.reset_gate('{q}', NULL, 'mine')"), role
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="say why"):
        db.execute("SELECT * FROM inbox.reset_gate(%s, 1, ' ')", [q])
    reset = db.execute("SELECT * FROM inbox.reset_gate(%s, 1, 'forged delete, ticket 42')", [q]).fetchone()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="only lowers it"):
        db.execute("SELECT * FROM inbox.reset_gate(%s, 2, 'up again')", [q])
    ingest(db, [titan_event(q, 3, qty_t=Decimal("3"))])
    counts = drain(dsn)

    assert reset == {"old_version": top, "old_is_delete": True, "new_version": 1}
    assert counts.applied == 1
    row = quota(db, q)
    assert row is not None and (row["source_version"], row["qty_t"]) == (3, Decimal("3"))
    audit = db.execute(
        "SELECT old_version, old_is_delete, new_version, note, reset_by = session_user AS by_me"
        " FROM inbox.gate_resets WHERE quota_id = %s",
        [q],
    ).fetchall()
    assert audit == [
        {
            "old_version": top,
            "old_is_delete": True,
            "new_version": 1,
            "note": "forged delete, ticket 42",
            "by_me": True,
        }
    ]


# -- issue 12: retention of the history tables -------------------------------------------------------


def test_retention_prunes_old_rejects_resolved_dead_letters_and_only_safe_delete_gates(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    gone, alive, in_hand, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(
        db,
        [titan_event(q, 1, "INSERT") for q in (gone, alive, in_hand, recent)]
        + [titan_event(uuid.uuid4(), 1, "INSERT", direction="HOLD") for _ in range(2)],
    )
    drain(dsn)
    ingest(db, [titan_event(q, 2, "DELETE") for q in (gone, in_hand, recent)])
    drain(dsn)
    ingest(db, [titan_event(in_hand, 1, "INSERT", qty_t=Decimal("5"))], source="replay")
    db.execute(
        "UPDATE inbox.quota_events SET status = 'pending' WHERE quota_id = %s AND version = 1", [in_hand]
    )
    for offset in (1, 2):
        as_role["inbox_ingest"].execute(
            'INSERT INTO inbox.rejects (topic, "partition", "offset", raw, reason)'
            " VALUES (%s, 0, %s, %s, %s)",
            ["titan.quota", offset, b"garbage", "not JSON"],
        )
    db.execute("UPDATE inbox.rejects SET received_at = now() - interval '40 days' WHERE \"offset\" = 1")
    first, second = (d["id"] for d in dead_letters(db))
    db.execute("SELECT inbox.resolve_dead_letter(%s, 'seen')", [first])
    db.execute(
        "UPDATE public.quota_processing_errors SET resolved_at = now() - interval '40 days' WHERE id = %s",
        [first],
    )
    db.execute(
        "UPDATE public.quota_processing_errors SET created_at = now() - interval '40 days'"
    )  # second stays open
    db.execute(
        "UPDATE inbox.quota_versions SET applied_at = now() - interval '400 days' WHERE quota_id <> %s",
        [recent],
    )
    worker_dsn = with_role(dsn, "inbox_worker")

    kept_gates = purge_history(worker_dsn, Settings(), 10)
    assert kept_gates == {"rejects": 1, "dead_letters": 1, "gates": 0}

    pruned = purge_history(worker_dsn, Settings(gate_retention=timedelta(days=365)), 10)
    assert pruned == {"rejects": 0, "dead_letters": 0, "gates": 1}
    gates = {r["quota_id"] for r in db.execute("SELECT quota_id FROM inbox.quota_versions")}
    assert gone not in gates and {alive, in_hand, recent} <= gates
    assert [d["id"] for d in dead_letters(db)] == [second]
    rejects = db.execute('SELECT "offset" FROM inbox.rejects').fetchall()
    assert rejects == [{"offset": 2}]


# -- issue 12: what every role can do anyway ---------------------------------------------------------


def test_a_stuck_holder_of_the_migration_lock_is_named_not_waited_for(
    dsn: str, as_role: dict[str, DictConnection]
) -> None:
    """Advisory locks are granted to PUBLIC: inbox_readonly could take the migration lock and hang
    every `inbox migrate` (and `inbox run` start) for as long as it liked."""
    holder = as_role["inbox_readonly"]
    holder.execute("SELECT pg_advisory_lock(7215830113390201)")
    pid = holder.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert pid is not None
    with pytest.raises(MigrationError, match=rf"held the migration lock for over 0.5 s: pid {pid['pid']} "):
        migrate(dsn, lock_wait_seconds=0.5)
    holder.execute("SELECT pg_advisory_unlock_all()")
    assert migrate(dsn, lock_wait_seconds=0.5).applied == []


def test_a_notify_from_any_role_is_only_a_hint(
    dsn: str, db: DictConnection, as_role: dict[str, DictConnection]
) -> None:
    """NOTIFY cannot be revoked per channel: any role that connects can send inbox_quota_events. A
    worker woken by it claims what is due, as its poll would: nothing else happens."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    db.execute("UPDATE inbox.quota_events SET next_attempt_at = now() + interval '1 hour'")
    as_role["inbox_readonly"].execute("NOTIFY inbox_quota_events, 'apply everything now'")

    assert drain(dsn).claimed == 0
    assert status_counts(db) == {"pending": 1}
