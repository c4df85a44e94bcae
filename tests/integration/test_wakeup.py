"""Idle workers wake on LISTEN/NOTIFY; without a NOTIFY the poll fallback still finds the event."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from psycopg.types.json import Jsonb

from inbox.apply.pool import WorkerPool
from inbox.db.connect import DictConnection, connect, open_pool
from inbox.db.queries import UNTYPED_HINT, Queries
from inbox.ingest import parse_texts
from inbox.settings import Settings
from inbox.store import store
from tests.cdc_events import debezium_event
from tests.helpers import event_status, inbox_row, ingest, quota, titan_event, to_json


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _idle(pool: WorkerPool) -> None:
    """Wait until the listener listens, then give the workers time to find nothing and go to sleep."""
    assert pool.listener.listening.wait(30), "the listener never started listening"
    time.sleep(1.0)


def test_notify_wakes_idle_workers_long_before_the_poll_interval(dsn: str, db: DictConnection) -> None:
    settings = Settings(poll_seconds=30, workers=2, reap_interval_seconds=60)
    quota_id = uuid.uuid4()
    with WorkerPool(dsn, settings) as pool:
        _idle(pool)
        generation = pool.waker.generation

        ingest(db, [titan_event(quota_id, 1, "INSERT")])

        # The poll fallback alone would take up to 30 s; a NOTIFY brings it well within 5 s.
        applied = _wait_for(lambda: event_status(db, quota_id, 1) == "applied", 5.0)
        woken = pool.waker.generation
    assert applied, f"not applied within 5 s (status {event_status(db, quota_id, 1)})"
    assert woken > generation, "the workers were not woken by a NOTIFY"
    assert quota(db, quota_id) is not None


def test_every_ingest_wakes_the_workers_again(dsn: str, db: DictConnection) -> None:
    settings = Settings(poll_seconds=30, workers=2, reap_interval_seconds=60)
    ids = [uuid.uuid4() for _ in range(3)]
    with WorkerPool(dsn, settings) as pool:
        _idle(pool)
        for quota_id in ids:
            generation = pool.waker.generation
            ingest(db, [titan_event(quota_id, 1, "INSERT")])
            assert _wait_for(_applied(db, quota_id), 5.0), quota_id
            assert pool.waker.generation > generation
            time.sleep(0.3)  # idle again before the next one


def _applied(db: DictConnection, quota_id: uuid.UUID) -> Callable[[], bool]:
    return lambda: event_status(db, quota_id, 1) == "applied"


def test_a_duplicate_sends_no_wakeup(dsn: str, db: DictConnection) -> None:
    settings = Settings(poll_seconds=30, workers=1, reap_interval_seconds=60)
    event = titan_event(uuid.uuid4(), 1, "INSERT")
    ingest(db, [event])
    with WorkerPool(dsn, settings) as pool:
        _idle(pool)
        assert event_status(db, event["data"]["quota_id"], 1) == "applied"
        generation = pool.waker.generation

        result = ingest(db, [event])
        time.sleep(1.0)

        assert (result.accepted, result.duplicates) == (0, 1)
        assert pool.waker.generation == generation


def test_poll_fallback_applies_an_event_that_sent_no_notify(dsn: str, db: DictConnection) -> None:
    settings = Settings(poll_seconds=0.5, workers=1, reap_interval_seconds=60)
    quota_id = uuid.uuid4()
    payload = titan_event(quota_id, 1, "INSERT")
    with WorkerPool(dsn, settings) as pool:
        _idle(pool)
        generation = pool.waker.generation

        # Straight into the table, bypassing inbox.ingest_events: no NOTIFY is sent.
        db.execute(
            "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source) "
            "VALUES (%s, 1, false, %s::jsonb, 'sink')",
            [quota_id, to_json(payload)],
        )

        applied = _wait_for(lambda: event_status(db, quota_id, 1) == "applied", 15.0)
        woken = pool.waker.generation
    assert applied, f"the poll fallback did not apply the event (status {event_status(db, quota_id, 1)})"
    assert woken == generation, "a wake-up arrived, so this did not test the poll fallback"
    assert quota(db, quota_id) is not None


def test_workers_apply_events_stored_before_the_pool_started(dsn: str, db: DictConnection) -> None:
    quota_id = uuid.uuid4()
    db.execute(
        "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source) "
        "VALUES (%s, 1, false, %s, 'sink')",
        [quota_id, Jsonb(titan_event(quota_id, 1, "INSERT", qty_t="3.5"))],
    )
    with WorkerPool(dsn, Settings(poll_seconds=30, workers=2, reap_interval_seconds=60)):
        assert _wait_for(lambda: event_status(db, quota_id, 1) == "applied", 10.0)
    row = quota(db, quota_id)
    assert row is not None
    assert str(row["qty_t"]) == "3.5"


def _hints(listener: DictConnection, timeout: float = 2.0) -> list[str]:
    """The payloads of the notifications the listener has received (delivered at each commit)."""
    return [n.payload for n in listener.notifies(timeout=timeout, stop_after=1)]


def test_a_hint_says_when_untyped_events_were_stored(dsn: str, db: DictConnection) -> None:
    """Workers type untyped events only when told (or after a poll): an ingest that stored one says
    so in its NOTIFY payload; one that stored typed events only does not. A Titan delete is typed at
    the edge (it needs only its key): before, every batch holding one sent workers to type it."""
    quota_id = uuid.uuid4()
    with connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN inbox_quota_events")
        ingest(db, [titan_event(quota_id, 1, "INSERT")])  # typed at the edge
        typed = _hints(listener)
        ingest(db, [titan_event(quota_id, 2, "DELETE")])  # typed at the edge too
        typed_delete = _hints(listener)
        ingest(db, [debezium_event(quota_id, 3)])  # another format: typed by a worker
        untyped = _hints(listener)
    assert (typed, typed_delete, untyped) == ([""], [""], [UNTYPED_HINT])
    assert inbox_row(db, quota_id, 2, is_delete=True)["typed"] is True


def test_an_untyped_event_is_typed_and_applied_on_its_hint_long_before_the_poll(
    dsn: str, db: DictConnection
) -> None:
    """Idle workers no longer look for untyped events before every claim: the hint of the ingest
    that stored one (here a Debezium change: only Titan events are typed at the edge) must bring it
    through typing and apply."""
    settings = Settings(poll_seconds=30, workers=2, reap_interval_seconds=60)
    quota_id = uuid.uuid4()
    with WorkerPool(dsn, settings) as pool:
        _idle(pool)
        ingest(db, [titan_event(quota_id, 1, "INSERT")])
        assert _wait_for(_applied(db, quota_id), 5.0)
        time.sleep(0.3)  # idle again
        ingest(db, [debezium_event(quota_id, 2)])
        applied = _wait_for(lambda: inbox_row(db, quota_id, 2)["status"] == "applied", 5.0)
    assert applied, f"the change was not applied within 5 s: {inbox_row(db, quota_id, 2)}"
    row = quota(db, quota_id)
    assert row is not None and row["source_version"] == 2


def test_the_http_pool_hints_after_its_commit_not_inside_it(dsn: str) -> None:
    """A transaction that NOTIFYs holds PostgreSQL's one NOTIFY lock from before its commit until after
    its WAL flush, so concurrent POSTs that notified committed one flush at a time. The HTTP pool's
    sessions store without notifying and send the hint themselves, after the commit, in a statement
    whose own commit does not wait for the disk (and leaves the session's synchronous_commit alone)."""
    pool = open_pool(dsn, application_name="quota-inbox http")
    pool.open(wait=True)
    try:
        with connect(dsn, autocommit=True) as listener, pool.connection() as conn:
            listener.execute("LISTEN inbox_quota_events")
            typed = store(conn, parse_texts([to_json(titan_event(uuid.uuid4(), 1, "INSERT"))]), "http")
            inside = _hints(listener, timeout=0.5)
            Queries(conn).hint_workers(untyped=typed.untyped)
            after_typed = _hints(listener)
            untyped = store(conn, parse_texts([to_json(debezium_event(uuid.uuid4(), 2))]), "http")
            Queries(conn).hint_workers(untyped=untyped.untyped)
            after_untyped = _hints(listener)
            session = conn.execute("SHOW synchronous_commit").fetchone()
            with conn.transaction(), pytest.raises(RuntimeError, match="autocommit"):
                Queries(conn).hint_workers(untyped=False)
    finally:
        pool.close()
    assert (typed.accepted, untyped.accepted) == (1, 1)
    assert inside == [], "the ingest notified inside its own transaction"
    assert (after_typed, after_untyped) == ([""], [UNTYPED_HINT])
    assert session is not None and session["synchronous_commit"] == "on"
