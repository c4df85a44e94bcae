"""Store one consumed batch in one transaction: its events in the inbox, its rejects beside them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from inbox.db.errors import DatabaseError, Failure, classify
from inbox.db.queries import DictConnection, Queries
from inbox.kafka.batch import Batch, Event, Reject, parsed
from inbox.store import store
from inbox.text import shorten

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    accepted: int
    duplicates: int
    rejected: int


def store_batch(conn: DictConnection, batch: Batch, apply_attempts: int | None = None) -> Stored:
    """One transaction: the events (a redelivery is a no-op) and the rejects, or nothing at all. With
    apply_attempts, the typed events are applied in it too (inbox.store.store)."""
    with conn.transaction():
        accepted, duplicates, refused = _store_events(conn, batch.events, apply_attempts)
        rejects = [*batch.rejects, *refused]
        if rejects:
            _insert_rejects(conn, rejects)
    return Stored(accepted, duplicates, len(rejects))


def _store_events(
    conn: DictConnection, events: Sequence[Event], apply_attempts: int | None
) -> tuple[int, int, list[Reject]]:
    """(accepted, duplicates, events PostgreSQL refused). store() runs in a savepoint here, so when
    PostgreSQL refuses a value Python accepted, the batch is halved until the culprit is alone; it
    becomes a reject and the rest is stored."""
    if not events:
        return 0, 0, []
    try:
        result = store(conn, parsed(events), "kafka", apply_attempts=apply_attempts)
    except DatabaseError as exc:
        # Failure.POISON: what one event can make PostgreSQL refuse (a value it does not take; a batch
        # beyond its 1 GB limits): halving finds it. Anything else (connection, timeout, privileges)
        # is the database's trouble, not the batch's, and the consumer waits for it.
        if classify(exc) is not Failure.POISON:
            raise
        if len(events) == 1:
            (event,) = events
            log.warning(
                "PostgreSQL refused an event",
                extra={"offset": event.origin.offset, "error": shorten(str(exc))},
            )
            return 0, 0, [_refused(event, exc)]
        middle = len(events) // 2
        first = _store_events(conn, events[:middle], apply_attempts)
        second = _store_events(conn, events[middle:], apply_attempts)
        return first[0] + second[0], first[1] + second[1], first[2] + second[2]
    return result.accepted, result.duplicates, []


def _refused(event: Event, exc: DatabaseError) -> Reject:
    reason = shorten(f"PostgreSQL refused the event: {str(exc).strip()}")
    return Reject(event.origin, event.text.encode("utf-8", "surrogatepass"), reason)


def _insert_rejects(conn: DictConnection, rejects: list[Reject]) -> None:
    Queries(conn).insert_rejects(
        topics=[r.origin.topic for r in rejects],
        partitions=[r.origin.partition for r in rejects],
        offsets=[r.origin.offset for r in rejects],
        keys=[r.origin.key for r in rejects],
        raws=[r.raw for r in rejects],
        headers=[r.origin.headers for r in rejects],
        # text cannot hold NUL; a reason may quote the message
        reasons=[r.reason.replace("\x00", "\\x00") for r in rejects],
    )
