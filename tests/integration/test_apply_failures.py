"""Failures while applying: transient errors with backoff, poison events, dead workers and their claims."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from inbox.apply.worker import BatchCounts, Worker, backoff, reap_abandoned_claims
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import Keys, Queries
from inbox.settings import Settings
from tests.helpers import (
    dead_letters,
    dead_letters_for,
    drain,
    exhausted_reason,
    inbox_row,
    ingest,
    quota,
    titan_event,
    worker_settings,
)
from tests.processes import wait_for

pytestmark = pytest.mark.timeout(90)


@contextmanager
def row_lock(dsn: str, statement: str, params: list[Any]) -> Iterator[None]:
    """Hold row locks in an open transaction of a second connection until the block ends."""
    with connect(dsn) as holder:
        locked = holder.execute(statement, params).fetchall()
        assert locked, "the lock statement locked nothing"
        try:
            yield
        finally:
            holder.rollback()


def make_due(conn: DictConnection) -> None:
    """Test-only clock travel: every pending event is due now (the backoff was measured already)."""
    conn.execute("UPDATE inbox.quota_events SET next_attempt_at = now() WHERE status = 'pending'")


def db_clock(conn: DictConnection) -> datetime:
    row = conn.execute("SELECT clock_timestamp() AS t").fetchone()
    assert row is not None
    return row["t"]  # type: ignore[no-any-return]


# -- transient failures -------------------------------------------------------------------------------


def test_a_statement_timeout_gives_the_batch_back_then_dead_letters_it_when_attempts_run_out(
    db: DictConnection, dsn: str
) -> None:
    locked, bystander = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(locked, 1, "INSERT", qty_t=Decimal("1"))])
    drain(dsn, worker_settings())
    ingest(
        db,
        [titan_event(locked, 2, "UPDATE", qty_t=Decimal("2")), titan_event(bystander, 1, "INSERT")],
    )
    conf = worker_settings(
        statement_timeout_ms=300, max_attempts=3, backoff_base_seconds=2, backoff_cap_seconds=4
    )
    worker = Worker(dsn, conf, "w-timeout")
    try:
        with row_lock(dsn, "SELECT * FROM inbox.quota_versions WHERE quota_id = %s FOR UPDATE", [locked]):
            first = worker.process_once()
            assert (first.claimed, first.retried, first.applied, first.dead) == (2, 2, 0, 0)
            for qid, version in ((locked, 2), (bystander, 1)):
                row = inbox_row(db, qid, version)
                assert row["status"] == "pending"
                assert row["attempts"] == 1
                assert row["lease_owner"] is None
                assert row["next_attempt_at"] > db_clock(db)
                assert "QueryCanceled" in row["last_error"]
                assert "statement timeout" in row["last_error"]
            assert dead_letters(db) == []
            # Backing off: nothing is due right now.
            assert worker.process_once().claimed == 0

            make_due(db)
            second = worker.process_once()
            assert (second.retried, second.dead) == (2, 0)
            make_due(db)
            third = worker.process_once()
            assert (third.claimed, third.retried, third.dead, third.applied) == (2, 0, 2, 0)

        for qid, version in ((locked, 2), (bystander, 1)):
            assert exhausted_reason(db, qid, version, 3).startswith("QueryCanceled")
            assert inbox_row(db, qid, version)["lease_owner"] is None
        # The lock is gone, yet nothing comes back by itself and nothing was applied.
        assert worker.process_once().claimed == 0
    finally:
        worker.close()
    current = quota(db, locked)
    assert current is not None
    assert current["source_version"] == 1
    assert quota(db, bystander) is None


@pytest.mark.parametrize(
    ("sqlstate", "error_class"),
    [
        ("40P01", "DeadlockDetected"),
        ("40001", "SerializationFailure"),
        ("55P03", "LockNotAvailable"),
        ("57014", "QueryCanceled"),
        ("57P01", "AdminShutdown"),
    ],
)
def test_a_transient_error_gives_the_whole_batch_back_without_bisecting(
    db: DictConnection, dsn: str, sqlstate: str, error_class: str
) -> None:
    """PostgreSQL itself raises each transient SQLSTATE inside the apply (a trigger on public.quota):
    the worker gives the batch back with one attempt spent, bisects nothing, dead-letters nothing."""
    db.execute(
        "CREATE FUNCTION public.refuse_quota() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path = pg_catalog, pg_temp AS $$"
        f" BEGIN RAISE EXCEPTION 'transient trouble' USING ERRCODE = '{sqlstate}'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_quota BEFORE INSERT ON public.quota"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_quota()"
    )
    quotas = [uuid.uuid4() for _ in range(4)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in quotas])
    worker = Worker(dsn, worker_settings(), "w-transient")
    try:
        counts = worker.process_once()
    finally:
        worker.close()

    assert (counts.claimed, counts.retried, counts.applied, counts.dead) == (4, 4, 0, 0)
    for q in quotas:
        row = inbox_row(db, q, 1)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert row["last_error"].startswith(f"{error_class}: ")
        assert "transient trouble" in row["last_error"]
    assert dead_letters(db) == []
    assert db.execute("SELECT count(*) AS n FROM public.quota").fetchone() == {"n": 0}


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap(db: DictConnection, dsn: str) -> None:
    # equal jitter: base * 2^(n-1) * [0.5, 1.0], the exponential part capped
    base, cap = 10.0, 60.0
    expected = {1: (5.0, 10.0), 2: (10.0, 20.0), 3: (20.0, 40.0), 4: (30.0, 60.0), 5: (30.0, 60.0)}
    locked = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(19)]
    ingest(db, [titan_event(locked, 1, "INSERT")])
    drain(dsn, worker_settings())
    ingest(db, [titan_event(locked, 2), *(titan_event(q, 1, "INSERT") for q in others)])
    conf = worker_settings(
        statement_timeout_ms=300, max_attempts=6, backoff_base_seconds=base, backoff_cap_seconds=cap
    )
    worker = Worker(dsn, conf, "w-backoff")
    seen: dict[int, list[float]] = {}
    try:
        with row_lock(dsn, "SELECT * FROM public.quota WHERE quota_id = %s FOR UPDATE", [locked]):
            for n in range(1, 6):
                make_due(db)
                before = db_clock(db)
                counts = worker.process_once()
                after = db_clock(db)
                assert (counts.claimed, counts.retried) == (20, 20), f"attempt {n}"
                slack = (after - before).total_seconds()
                rows = db.execute(
                    "SELECT attempts, status, next_attempt_at FROM inbox.quota_events"
                    " WHERE status <> 'applied'"
                ).fetchall()
                assert {(r["attempts"], r["status"]) for r in rows} == {(n, "pending")}
                lo, hi = expected[n]
                # The release ran between `before` and `after`: bound its delay from both sides.
                delays_from_before = [(r["next_attempt_at"] - before).total_seconds() for r in rows]
                delays_from_after = [(r["next_attempt_at"] - after).total_seconds() for r in rows]
                assert min(delays_from_after) >= lo - slack - 0.01, (n, sorted(delays_from_after))
                assert max(delays_from_before) <= hi + slack + 0.01, (n, sorted(delays_from_before))
                seen[n] = delays_from_before
                # Jitter: twenty events of one batch do not all wait exactly as long.
                assert len({round(d, 3) for d in delays_from_before}) > 1
    finally:
        worker.close()
    # The waits grow: every delay of attempt 2 is at least the shortest possible one of attempt 1's bound.
    assert min(seen[2]) >= max(seen[1]) - 1.0
    assert sum(seen[3]) / len(seen[3]) > sum(seen[2]) / len(seen[2]) > sum(seen[1]) / len(seen[1])
    assert max(seen[5]) <= cap + 1.0  # capped
    assert dead_letters(db) == []


# -- a poison event ----------------------------------------------------------------------------------


def test_a_poison_event_is_dead_lettered_and_the_rest_of_its_batch_is_applied(
    db: DictConnection, dsn: str
) -> None:
    db.execute("ALTER TABLE public.quota ADD CONSTRAINT no_poison CHECK (metal_code <> 'POISON')")
    poisoned = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(12)]
    events = [
        titan_event(poisoned, 1, "INSERT", qty_t=Decimal("1")),  # an earlier version, same quota
        titan_event(poisoned, 2, "UPDATE", metal_code="POISON"),  # valid, but fails in SQL
    ]
    for i, q in enumerate(others):
        events.append(titan_event(q, 1, "INSERT", qty_t=Decimal(i + 1)))
        events.append(titan_event(q, 2, "UPDATE", qty_t=Decimal(i + 100)))
    ingest(db, events)
    conf = worker_settings(batch_size=100)

    counts = drain(dsn, conf)

    assert counts.claimed == len(events)
    assert counts.retried == 0
    poison_row = inbox_row(db, poisoned, 2)
    assert (poison_row["status"], poison_row["attempts"]) == ("dead", 1)
    [letter] = dead_letters_for(db, poisoned)
    assert (letter["error_class"], letter["version"], letter["retry_count"]) == ("apply_error", 2, 1)
    assert "no_poison" in letter["error_message"]
    assert "[23514]" in letter["error_message"]  # check_violation
    assert len(dead_letters(db)) == 1
    # Everything else of the batch: the poison's earlier version and every other quota.
    assert inbox_row(db, poisoned, 1)["status"] == "applied"
    row = quota(db, poisoned)
    assert row is not None
    assert (row["source_version"], row["metal_code"]) == (1, "CU")
    for i, q in enumerate(others):
        other = quota(db, q)
        assert other is not None
        assert (other["source_version"], other["qty_t"]) == (2, Decimal(i + 100))
        assert inbox_row(db, q, 2)["status"] == "applied"

    # Its quota's later events are not blocked.
    ingest(db, [titan_event(poisoned, 3, "UPDATE", metal_code="CU", qty_t=Decimal("3"))])
    later = drain(dsn, conf)
    assert later.applied == 1
    row = quota(db, poisoned)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (3, Decimal("3"))


def test_a_poison_event_superseded_in_its_own_batch_never_runs(db: DictConnection, dsn: str) -> None:
    db.execute("ALTER TABLE public.quota ADD CONSTRAINT no_poison CHECK (metal_code <> 'POISON')")
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", metal_code="POISON"), titan_event(q, 2, "UPDATE")])

    counts = drain(dsn, worker_settings())

    assert (counts.applied, counts.stale, counts.dead) == (1, 1, 0)
    row = quota(db, q)
    assert row is not None
    assert row["source_version"] == 2
    assert dead_letters(db) == []


def test_several_poison_events_in_one_batch_each_dead_letter_once(db: DictConnection, dsn: str) -> None:
    db.execute("ALTER TABLE public.quota ADD CONSTRAINT no_poison CHECK (metal_code <> 'POISON')")
    poisoned = [uuid.uuid4() for _ in range(3)]
    healthy = [uuid.uuid4() for _ in range(29)]
    ingest(
        db,
        [titan_event(q, 1, "INSERT", metal_code="POISON") for q in poisoned]
        + [titan_event(q, 1, "INSERT") for q in healthy],
    )

    counts = drain(dsn, worker_settings(batch_size=64))

    assert (counts.applied, counts.dead) == (29, 3)
    letters = dead_letters(db)
    assert sorted(str(r["quota_id"]) for r in letters) == sorted(str(q) for q in poisoned)
    assert {r["error_class"] for r in letters} == {"apply_error"}
    assert db.execute("SELECT count(*) AS n FROM public.quota").fetchone() == {"n": 29}


# -- dead workers and their claims -------------------------------------------------------------------


def claim_and_die(dsn: str, limit: int = 100, name: str = "w-dying", conf: Settings | None = None) -> Keys:
    """A worker claims a batch, records it in the claim ledger as the worker does (from a second
    session, committed; claims of workers gone before it are released there), and dies before its
    apply commits: its session ends, and with it the row locks and the advisory lock that said it
    was alive."""
    with connect(dsn) as apply, connect(dsn, autocommit=True) as ledger:
        pid, token = Queries(apply).apply_session(secrets.randbits(62) + 1)
        keys = Queries(apply).claim_batch(limit)
        if keys:
            Queries(ledger).record_claim(
                worker=name,
                backend_pid=pid,
                session_token=token,
                keys=keys,
                backoff=backoff(conf or worker_settings()),
            )
    # Leaving the block closed the apply session without a commit; its backend ends a moment later.
    with connect(dsn, autocommit=True) as conn:
        wait_for(
            lambda: (
                conn.execute("SELECT inbox.claim_session_alive(%s) AS alive", [token]).fetchone()
                == {"alive": False}
            ),
            "the dead worker's session to end",
        )
    return keys


def reap(conn: DictConnection, conf: Settings, expected: BatchCounts | None = None) -> BatchCounts:
    """Reap once; with expected, until that much was reaped in all (a dead session's locks go a moment
    after its connection closes)."""
    if expected is None:
        return reap_abandoned_claims(conn, conf)
    total = BatchCounts()

    def reaped_all() -> bool:
        total.add(reap_abandoned_claims(conn, conf))
        return total == expected

    wait_for(reaped_all, f"reaping {expected}")
    return total


def ledger_rows(conn: DictConnection) -> int:
    row = conn.execute("SELECT count(*) AS n FROM inbox.claim_ledger").fetchone()
    assert row is not None
    return int(row["n"])


def test_a_dead_workers_batch_is_applied_by_another_and_its_claim_still_costs_an_attempt(
    db: DictConnection, dsn: str
) -> None:
    """A living worker takes the events before the reaper runs: the dead claim's attempt is spent
    all the same, once (the living worker's claim releases the dead one first: a debt it pays), and
    the outcome the living worker wrote stands."""
    quotas = [uuid.uuid4() for _ in range(5)]
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("10")) for q in quotas])
    conf = worker_settings(backoff_base_seconds=0.05, backoff_cap_seconds=0.1)
    keys = claim_and_die(dsn)
    assert len(keys) == 5
    assert ledger_rows(db) == 1
    survivor = Worker(dsn, conf, "w-survivor")
    try:
        assert survivor.process_once().applied == 5  # claimable at once: the dead claim locks nothing

        for q in quotas:
            row = inbox_row(db, q, 1)
            assert (row["status"], row["attempts"]) == ("applied", 2)  # the survivor's and the dead one's
            assert row["last_error"] is None
            assert quota(db, q) is not None
        assert ledger_rows(db) == 0
        assert reap(db, conf) == BatchCounts()  # spent once
        before = db.execute("SELECT * FROM inbox.quota_events ORDER BY quota_id, version").fetchall()
        quota_before = db.execute("SELECT * FROM public.quota ORDER BY quota_id").fetchall()

        late = survivor.finish(keys)  # what the dead worker would have applied: nothing is left

        assert (late.not_owned, late.applied, late.stale, late.dead) == (5, 0, 0, 0)
        assert db.execute("SELECT * FROM inbox.quota_events ORDER BY quota_id, version").fetchall() == before
        assert db.execute("SELECT * FROM public.quota ORDER BY quota_id").fetchall() == quota_before
        assert dead_letters(db) == []
    finally:
        survivor.close()


def test_a_dead_claim_that_cannot_be_released_at_once_is_left_to_the_reaper_and_stops_no_claim(
    db: DictConnection, dsn: str
) -> None:
    """The next claim releases the dead claims it shares a quota with (inbox.record_claim), waiting at
    most its lock_timeout for one that another session holds; one it cannot release is left to the
    reaper, and the claim goes on: one dead claim never stops the workers."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("10"))])
    conf = worker_settings(backoff_base_seconds=0.05, backoff_cap_seconds=0.1)
    claim_and_die(dsn, conf=conf)
    survivor = Worker(dsn, conf, "w-survivor")
    try:
        with connect(dsn) as holder:  # holds the dead claim's ledger row, as a slow reaper would
            assert holder.execute("SELECT id FROM inbox.claim_ledger FOR UPDATE").fetchall() != []
            assert survivor.process_once().applied == 1
            assert (inbox_row(db, q, 1)["status"], inbox_row(db, q, 1)["attempts"]) == ("applied", 1)
            holder.rollback()
        assert ledger_rows(db) == 1  # the dead one, left to the reaper

        assert reap(db, conf, BatchCounts(retried=1)) == BatchCounts(retried=1)

        assert (inbox_row(db, q, 1)["status"], inbox_row(db, q, 1)["attempts"]) == ("applied", 2)
        assert ledger_rows(db) == 0
    finally:
        survivor.close()


def test_the_reaper_first_gives_a_dead_workers_batch_back_with_an_attempt_spent(
    db: DictConnection, dsn: str
) -> None:
    quotas = [uuid.uuid4() for _ in range(5)]
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("10")) for q in quotas])
    conf = worker_settings(backoff_base_seconds=0.05, backoff_cap_seconds=0.1)
    claim_and_die(dsn)

    assert reap(db, conf, BatchCounts(retried=5)) == BatchCounts(retried=5)

    for q in quotas:
        row = inbox_row(db, q, 1)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert row["last_error"] == "the worker ended before it finished the batch"
    survivor = Worker(dsn, conf, "w-survivor")
    try:
        applied = BatchCounts()

        def survivor_applies() -> bool:
            applied.add(survivor.process_once())
            return applied.applied == 5

        wait_for(survivor_applies, "the survivor applying the events")
    finally:
        survivor.close()
    assert {inbox_row(db, q, 1)["attempts"] for q in quotas} == {2}
    assert all(quota(db, q) is not None for q in quotas)


def test_a_dead_claim_on_an_event_a_living_worker_holds_is_a_debt_that_worker_pays(
    db: DictConnection, dsn: str
) -> None:
    """The reaper cannot write an event a living worker holds: the dead claim's attempt becomes a
    debt (inbox.claim_debts), and the living worker pays it when it finishes the event."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    conf = worker_settings(backoff_base_seconds=0.05, backoff_cap_seconds=0.1)
    claim_and_die(dsn)
    with connect(dsn) as living:
        keys = Queries(living).claim_batch(10)  # a living worker's claim, not committed yet
        assert len(keys) == 1

        assert reap(db, conf) == BatchCounts(retried=1)

        assert ledger_rows(db) == 0
        assert db.execute("SELECT claims FROM inbox.claim_debts").fetchall() == [{"claims": 1}]
        assert inbox_row(db, q, 1)["attempts"] == 0
        assert Queries(living).process_batch(ledger=None, keys=keys, max_attempts=5).applied == 1
        living.commit()

    row = inbox_row(db, q, 1)
    assert (row["status"], row["attempts"]) == ("applied", 2)  # the dead claim's and its own
    assert db.execute("SELECT count(*) AS n FROM inbox.claim_debts").fetchone() == {"n": 0}


def test_a_debt_no_worker_paid_is_paid_by_the_reaper(db: DictConnection, dsn: str) -> None:
    """A worker may finish an event just after the reaper recorded a debt it did not see: the reaper
    pays it once the event is free, and the outcome stands."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    conf = worker_settings()
    assert drain(dsn, conf).applied == 1
    db.execute("INSERT INTO inbox.claim_debts (quota_id, version, is_delete) VALUES (%s, 1, false)", [q])

    assert reap(db, conf) == BatchCounts()  # the attempt was counted when the debt was recorded

    row = inbox_row(db, q, 1)
    assert (row["status"], row["attempts"]) == ("applied", 2)
    assert db.execute("SELECT count(*) AS n FROM inbox.claim_debts").fetchone() == {"n": 0}


def test_an_event_whose_dead_claims_used_up_its_attempts_is_dead_lettered_not_applied(
    db: DictConnection, dsn: str
) -> None:
    """The next worker to take an event that killed every worker before it buries it unapplied."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    conf = worker_settings(max_attempts=2)
    db.execute(
        "INSERT INTO inbox.claim_debts (quota_id, version, is_delete, claims) VALUES (%s, 1, false, 2)", [q]
    )

    counts = drain(dsn, conf)

    assert (counts.applied, counts.dead) == (0, 1)
    assert exhausted_reason(db, q, 1, 2) == "the worker ended before it finished the batch"
    assert quota(db, q) is None


def test_an_event_that_kills_every_worker_ends_as_a_dead_letter(db: DictConnection, dsn: str) -> None:
    """Each worker that dies holding it spends one attempt, whether the reaper runs before the next
    worker takes it or after: out of attempts, it is a dead letter, and its neighbours are applied."""
    q, neighbour = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    conf = worker_settings(max_attempts=3, backoff_base_seconds=0.01, backoff_cap_seconds=0.01)
    claim_and_die(dsn, name="w-1", conf=conf)
    claim_and_die(dsn, name="w-2", conf=conf)  # takes it again before any reaper ran: w-1's is a debt
    assert db.execute("SELECT claims FROM inbox.claim_debts").fetchall() == [{"claims": 1}]
    assert reap(db, conf, BatchCounts(retried=1)) == BatchCounts(retried=1)  # w-2's, and the debt paid
    assert inbox_row(db, q, 1)["attempts"] == 2
    make_due(db)
    claim_and_die(dsn, name="w-3", conf=conf)
    ingest(db, [titan_event(neighbour, 1, "INSERT")])

    assert reap(db, conf, BatchCounts(dead=1)) == BatchCounts(dead=1)

    assert exhausted_reason(db, q, 1, 3) == "the worker ended before it finished the batch"
    assert drain(dsn, conf).applied == 1
    assert quota(db, q) is None and quota(db, neighbour) is not None


def test_a_transient_failure_after_a_lost_connection_is_retried(db: DictConnection, dsn: str) -> None:
    """The worker's apply session is killed before it applies: the batch comes back, then applies."""
    q = uuid.uuid4()
    conf = worker_settings(backoff_base_seconds=0.05, backoff_cap_seconds=0.1, lease_seconds=0.5)
    worker = Worker(dsn, conf, "w-cut")
    try:
        assert worker.process_once().claimed == 0  # its sessions are open
        ingest(db, [titan_event(q, 1, "INSERT")])
        killed = db.execute(
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = %s",
            ["quota-inbox w-cut"],
        ).fetchall()
        assert killed == [{"ok": True}]
        wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'quota-inbox w-cut'"
                ).fetchone()
                == {"n": 0}
            ),
            "the backend to go",
        )

        counts = worker.finish(Keys([q], [1], [False]))

        # The apply failed on the lost connection; the release reconnected and gave the batch back.
        assert (counts.retried, counts.applied, counts.dead) == (1, 0, 0)
        row = inbox_row(db, q, 1)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert "terminating connection" in row["last_error"]
        wait_for(lambda: worker.process_once().applied == 1, "the retry")
    finally:
        worker.close()
    row = inbox_row(db, q, 1)
    assert (row["status"], row["attempts"]) == ("applied", 2)
    assert quota(db, q) is not None
