"""A worker: claim a batch, validate it in Python, apply it in one SQL statement, repeat.

Failure handling, by kind:
- an invalid event is dead-lettered by the apply statement itself, in the same transaction;
- a transient failure (lost connection, deadlock, serialization failure, timeout) gives the batch
  back with exponential backoff and jitter, and dead-letters what has used up its attempts;
- any other database error rolls the batch back and bisects it, so one poison event ends as a dead
  letter ('apply_error') while the rest of its batch is applied.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from inbox.apply.ports import WorkerDatabase
from inbox.apply.prepare import prepare
from inbox.apply.waker import Waker
from inbox.db.connect import Session
from inbox.db.errors import DatabaseError, is_transient, sqlstate
from inbox.db.queries import Backoff, ClaimedKey, DeadLetterLine, DictConnection, EventKeyRow, Queries
from inbox.settings import Settings
from inbox.text import shorten

log = logging.getLogger(__name__)


# How much longer than its stored size a payload's text may be before it is not read: jsonb prints
# ", " and ": " where a compact body had "," and ":", which can nearly double a small-valued array.
PRINTED_GROWTH = 4


@dataclass
class BatchCounts:
    claimed: int = 0
    applied: int = 0
    stale: int = 0
    dead: int = 0
    retried: int = 0
    not_owned: int = 0
    published: int = 0

    def add(self, other: BatchCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class Worker:
    def __init__(
        self,
        dsn: str,
        settings: Settings,
        name: str,
        database: Callable[[], WorkerDatabase] | None = None,
    ) -> None:
        """database: the port the worker calls (default: the named queries on its own session,
        reconnected after a failure); tests of the retry logic pass a fake."""
        self.dsn = dsn
        self.settings = settings
        self.name = name
        self._session = Session(
            dsn,
            application_name=f"quota-inbox {name}",
            statement_timeout_ms=settings.effective_statement_timeout_ms(),
        )
        self._db: Callable[[], WorkerDatabase] = database or self._session.queries

    def close(self) -> None:
        self._session.close()

    # -- one batch ----------------------------------------------------------------------------

    def claim(self) -> list[dict[str, Any]]:
        """Claim a batch and read its payloads: the rows prepare() takes. Rows whose payloads were not
        read within half the lease are given back (see read_payloads)."""
        conn = self._session.connection()
        keys = claim_keys(conn, self.name, self.settings)
        rows, unread = read_payloads(
            conn,
            self.name,
            keys,
            max_bytes=self.settings.max_body_bytes,
            budget_seconds=self.settings.lease_seconds / 2,
        )
        if unread:
            self._release(unread, "its payload was not read before half the lease had passed")
        return rows

    def process_once(self) -> BatchCounts:
        """Claim and finish one batch. Returns zero counts when nothing is due."""
        rows = self.claim()
        counts = BatchCounts(claimed=len(rows))
        if rows:
            counts.add(self.finish([prepare(row) for row in rows]))
        return counts

    def finish(self, prepared: Sequence[dict[str, Any]]) -> BatchCounts:
        """Apply prepared events this worker holds; on failure retry or bisect, never lose them."""
        try:
            return self._apply(prepared)
        except Exception as exc:
            if is_transient(exc):
                log.warning("transient failure applying %d events: %s", len(prepared), exc)
                return self._release(prepared, f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, DatabaseError):
                raise
            if len(prepared) == 1:
                return self._bury(prepared[0], exc)
            middle = len(prepared) // 2
            counts = self.finish(prepared[:middle])
            counts.add(self.finish(prepared[middle:]))
            return counts

    def _apply(self, prepared: Sequence[dict[str, Any]]) -> BatchCounts:
        row = self._db().apply_events(worker=self.name, events=prepared)
        if row.dead:
            self._log_dead_letters(prepared)
        return BatchCounts(
            applied=row.applied,
            stale=row.stale,
            dead=row.dead,
            not_owned=row.not_owned,
            published=row.published,
        )

    def _bury(self, event: dict[str, Any], exc: DatabaseError) -> BatchCounts:
        """Dead-letter one event the database refused, sending only its key and the reason: the
        columns it refused are not sent again, so this cannot fail the same way. Should it fail
        anyway, the event alone goes back with an attempt counted (dead when they are used up);
        either way its neighbours never pay for it."""
        error = shorten(f"[{sqlstate(exc)}] {str(exc).strip()}")
        try:
            return self._apply([{**_keys([event])[0], "error_class": "apply_error", "error": error}])
        except DatabaseError as again:
            if is_transient(again):
                raise
            log.error("could not dead-letter a refused event; it is released: %s", again)
            return self._release([event], error)

    def _release(self, prepared: Sequence[Mapping[str, Any]], error: str) -> BatchCounts:
        row = self._db().release_events(
            worker=self.name, keys=_keys(prepared), error=error[:2000], backoff=backoff(self.settings)
        )
        if row.dead:
            self._log_dead_letters(prepared)
        return BatchCounts(retried=row.retried, dead=row.dead)

    def _log_dead_letters(self, events: Sequence[Mapping[str, Any]]) -> None:
        # After the commit: a failure here loses log lines, never events, so it must not bubble up.
        try:
            log_dead_letters(self._db().dead_letters_for_keys(_keys(events)))
        except DatabaseError as exc:
            log.warning("could not read back the new dead letters to log them: %s", exc)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, waker: Waker) -> None:
        delay = 0.1
        while not stop.is_set():
            seen = waker.generation
            try:
                counts = self.process_once()
                delay = 0.1
            except Exception as exc:
                # The database is away (or the release itself failed): leases bring the rows back.
                log.warning("worker %s: %s; retrying in %.1fs", self.name, exc, delay)
                self.close()
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            if counts.claimed == 0:
                waker.wait(seen, timeout=self.settings.poll_seconds)
            elif counts.claimed >= self.settings.batch_size:
                waker.wake()  # a full batch: more may be due, bring in another worker
        self.close()


def claim_keys(conn: DictConnection, worker: str, settings: Settings) -> list[ClaimedKey]:
    """Claim up to a batch of due events: their keys and attempts, never their payloads. Once this
    returns (autocommit), each row has spent an attempt, whatever reading its payload does next."""
    return Queries(conn).claim_events(
        worker=worker, limit=settings.batch_size, lease=timedelta(seconds=settings.lease_seconds)
    )


def read_payloads(
    conn: DictConnection,
    worker: str,
    keys: Sequence[Mapping[str, Any]],
    *,
    max_bytes: int,
    budget_seconds: float = float("inf"),
) -> tuple[list[dict[str, Any]], list[EventKeyRow]]:
    """The payload text of each claimed row, or why it cannot be read; and the rows left unread.

    One payload can cost far more to print than to store (1e131071: 8 bytes stored, 131,072 digits
    printed), enough to pass the 1 GB string limit or statement_timeout. So the payloads are streamed,
    one row at a time as PostgreSQL prints them: when the statement fails, every row before the one
    that broke it has arrived. The rest are read again; a row that fails a statement on its own is
    unreadable, and is dead-lettered by the apply (error_class 'unreadable') with the reason, while
    its neighbours go on. A row stored larger than max_bytes is not printed at all ('unreadable' too).
    Past budget_seconds, what is still unread is returned as such, for the caller to give back.
    A lost connection is raised: the leases bring the rows back.
    """
    deadline = time.monotonic() + budget_seconds
    rows: list[dict[str, Any]] = []
    remaining = _keys(keys)
    while remaining and time.monotonic() < deadline:
        received: list[dict[str, Any]] = []
        failure = _stream_payloads(conn, worker, remaining, max_bytes, received)
        rows.extend(received)
        if failure is None:
            return rows, []  # a key that did not come back is no longer this worker's
        got = {_key_of(r) for r in received}
        remaining = [k for k in remaining if _key_of(k) not in got]
        if not received:
            # Nothing arrived: the first row broke the statement, or the statement failed before
            # it. Read alone, the first row tells which.
            alone: list[dict[str, Any]] = []
            failure = _stream_payloads(conn, worker, remaining[:1], max_bytes, alone)
            if failure is None:
                rows.extend(alone)
            else:
                reason = f"its payload cannot be read: [{sqlstate(failure)}] {str(failure).strip()}"
                rows.append({**remaining[0], "unreadable": reason[:2000]})
            remaining = remaining[1:]
    return rows, remaining


def _stream_payloads(
    conn: DictConnection, worker: str, keys: list[EventKeyRow], max_bytes: int, into: list[dict[str, Any]]
) -> DatabaseError | None:
    """Stream the payloads of keys into `into`; the error that ended the statement, if one did."""
    try:
        for row in Queries(conn).claimed_payloads(worker=worker, keys=keys, max_bytes=max_bytes):
            key = {"quota_id": str(row["quota_id"]), "version": row["version"], "is_delete": row["is_delete"]}
            text = row["payload"]
            if text is None:
                stored = row["stored_bytes"]
                reason = f"its payload is stored in {stored} bytes, over the {max_bytes} a worker reads"
                into.append({**key, "unreadable": reason})
            elif len(text) > PRINTED_GROWTH * max_bytes:
                # stored small, printed huge: numbers written with large exponents (1e131071)
                reason = (
                    f"its payload is stored in {row['stored_bytes']} bytes but prints to {len(text)} "
                    f"characters, over the {PRINTED_GROWTH * max_bytes} a worker reads"
                )
                into.append({**key, "unreadable": reason})
            else:
                into.append({**key, "payload": text})
    except DatabaseError as exc:
        if conn.closed or conn.broken:
            raise
        return exc
    return None


def _key_of(row: Mapping[str, Any]) -> tuple[str, int, bool]:
    return (str(row["quota_id"]), int(row["version"]), bool(row["is_delete"]))


def reap_expired_leases(conn: DictConnection, settings: Settings, limit: int = 1000) -> BatchCounts:
    queries = Queries(conn)
    # One transaction, so the dead letters it wrote can be found by their created_at (= now()).
    with conn.transaction():
        row = queries.reap_expired_leases(limit=limit, backoff=backoff(settings))
        if row.dead:
            log_dead_letters(queries.dead_letters_of_this_transaction())
    return BatchCounts(retried=row.retried, dead=row.dead)


def backoff(settings: Settings) -> Backoff:
    return Backoff(
        settings.max_attempts,
        timedelta(seconds=settings.backoff_base_seconds),
        timedelta(seconds=settings.backoff_cap_seconds),
    )


def _keys(events: Sequence[Mapping[str, Any]]) -> list[EventKeyRow]:
    return [
        EventKeyRow(quota_id=str(e["quota_id"]), version=e["version"], is_delete=e["is_delete"])
        for e in events
    ]


def log_dead_letters(rows: Sequence[DeadLetterLine]) -> None:
    """One line per event that just became a dead letter: its key, type, attempt and class, the
    reason shortened; never the payload (it stays in quota_processing_errors.event_data)."""
    for row in rows:
        log.warning(
            "event dead-lettered",
            extra={
                "quota_id": str(row["quota_id"]),
                "version": row["version"],
                "is_delete": row["is_delete"],
                "event_type": row["event_type"],
                "attempt": row["retry_count"],
                "error_class": row["error_class"],
                "error": row["error_message"],
            },
        )
