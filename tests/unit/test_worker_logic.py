"""The worker's retry and bisect logic, against a fake of its port (inbox/apply/ports.py).

What the database does with each call (the apply function, release, dead letters) is tested against
real PostgreSQL in tests/integration/test_apply_failures.py; here only the worker's decisions: which
failure releases a batch, which bisects it, which raises, and that one poison event costs only itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import psycopg
import pytest
from psycopg import errors as pg_errors

from inbox.apply.ports import WorkerDatabase
from inbox.apply.worker import BatchCounts, Worker
from inbox.db.queries import ApplyCounts, Backoff, DeadLetterLine, EventKeyRow, Keys, RetryCounts
from inbox.settings import Settings


class FakeDatabase:
    """Applies every event but the poison ones; `fail_with` fails any batch (transient trouble)."""

    def __init__(self, poison: AbstractSet[str] = frozenset(), fail_with: Exception | None = None) -> None:
        self.poison = poison
        self.fail_with = fail_with
        self.applied: list[list[str]] = []  # each successful process_batch call: its quota ids
        self.released: list[tuple[list[str], str]] = []
        self.buried: list[str] = []
        self.dropped: list[int] = []

    def process_batch(
        self, *, ledger: int | None, keys: Keys, max_attempts: int, refused: str | None = None
    ) -> ApplyCounts:
        ids = [NAMES[q] for q in keys.quota_ids]
        if self.fail_with is not None:
            raise self.fail_with
        if refused is not None:
            self.buried.extend(ids)
            return ApplyCounts(applied=0, stale=0, dead=len(ids), not_owned=0, published=0)
        if self.poison & set(ids):
            raise pg_errors.NumericValueOutOfRange("numeric field overflow")
        self.applied.append(ids)
        return ApplyCounts(applied=len(ids), stale=0, dead=0, not_owned=0, published=len(ids))

    def release_claim(self, *, ledger: int | None, keys: Keys, error: str, backoff: Backoff) -> RetryCounts:
        ids = [NAMES[q] for q in keys.quota_ids]
        self.released.append((ids, error))
        return RetryCounts(retried=len(ids), dead=0)

    def drop_claim(self, ledger: int) -> None:
        self.dropped.append(ledger)

    def dead_letters_for_keys(self, keys: Iterable[EventKeyRow]) -> list[DeadLetterLine]:
        return []


def _worker(fake: WorkerDatabase) -> Worker:
    # The DSN is never used: the worker calls the fake port, never its own session.
    return Worker("postgresql://never-used", Settings(), "test:1:0", database=lambda: fake)


QUOTAS = [uuid.uuid4() for _ in range(10)]
NAMES = {q: f"q{i}" for i, q in enumerate(QUOTAS)}


def _events(n: int) -> Keys:
    return Keys(QUOTAS[:n], [1] * n, [False] * n)


def test_a_poison_event_is_bisected_out_and_costs_only_itself() -> None:
    fake = FakeDatabase(poison={"q5"})
    counts = _worker(fake).finish(_events(8))
    assert fake.buried == ["q5"]
    assert sorted(i for batch in fake.applied for i in batch) == [f"q{i}" for i in range(8) if i != 5]
    assert counts == BatchCounts(applied=7, dead=1, published=7)
    assert fake.released == []


def test_two_poison_events_end_as_two_dead_letters() -> None:
    fake = FakeDatabase(poison={"q0", "q6"})
    counts = _worker(fake).finish(_events(7))
    assert sorted(fake.buried) == ["q0", "q6"]
    assert counts.applied == 5 and counts.dead == 2


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        pg_errors.DeadlockDetected("deadlock detected"),
        pg_errors.SerializationFailure("could not serialize access"),
        pg_errors.QueryCanceled("canceling statement due to statement timeout"),
        pg_errors.LockNotAvailable("could not obtain lock"),
    ],
)
def test_a_transient_failure_releases_the_whole_batch_without_bisecting(error: Exception) -> None:
    fake = FakeDatabase(fail_with=error)
    counts = _worker(fake).finish(_events(4))
    assert fake.released == [(["q0", "q1", "q2", "q3"], f"{type(error).__name__}: {error}")]
    assert fake.buried == [] and fake.applied == []
    assert counts == BatchCounts(retried=4)


def test_an_error_that_is_no_database_error_is_a_bug_and_raises() -> None:
    fake = FakeDatabase(fail_with=KeyError("quota_id"))
    with pytest.raises(KeyError):
        _worker(fake).finish(_events(4))
    assert fake.released == [] and fake.buried == []
