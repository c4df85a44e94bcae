"""A worker: claim a batch and apply it in one transaction, from the events' typed columns; repeat.

One batch, on two sessions (migration 015):
1. apply session, in a transaction: inbox.claim_batch locks up to batch_size due events (SKIP
   LOCKED; no row is written to claim them) and returns their keys;
2. ledger session (autocommit): one inbox.claim_ledger row records the keys and the apply session,
   committed before the apply runs: if this worker dies with the batch, the reaper (or the next
   worker's ledger row, inbox.record_claim) sees the session gone and spends an attempt on each of
   its events, so a poison event kills exactly max_attempts workers;
3. apply session: inbox.process_batch gates, upserts, deletes, marks, dead-letters and publishes the
   batch by its typed columns (typed at ingest) and deletes the ledger row; commit.
No payload travels to the worker: it loops, retries, bisects and logs.

Failure handling, by kind:
- an invalid event (reasons stored when it was typed) is dead-lettered by process_batch, in the same
  transaction;
- a transient failure (lost connection, deadlock, serialization failure, timeout) rolls the batch
  back and spends an attempt on each event: pending again after an exponential backoff with jitter,
  or dead-lettered once it has used up its attempts;
- any other database error rolls the batch back and bisects it by keys, so one poison event ends as
  a dead letter ('apply_error') while the rest of its batch is applied.
Events stored without typed columns (before migration 015, by the sink trigger, by a replay) are
typed here first, from their payload, by the same validation the ingestor runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from inbox.apply.prepare import typed_columns
from inbox.apply.waker import Waker
from inbox.counts import Counts
from inbox.db.connect import Session
from inbox.db.errors import DatabaseError, RefusedValue, is_transient, sqlstate
from inbox.db.queries import Backoff, DeadLetterLine, DictConnection, EventKeyRow, Keys, Queries
from inbox.settings import Settings
from inbox.text import shorten

log = logging.getLogger(__name__)


# How much longer than its stored size a payload's text may be before it is not read: jsonb prints
# ", " and ": " where a compact body had "," and ":", which can nearly double a small-valued array.
PRINTED_GROWTH = 4
# Untyped events are looked for when a claim comes back short, and at least every this many batches.
TYPE_EVERY = 50


@dataclass
class BatchCounts(Counts):
    claimed: int = 0
    applied: int = 0
    stale: int = 0
    dead: int = 0
    retried: int = 0
    not_owned: int = 0
    published: int = 0
    typed: int = 0  # untyped events typed from their payload (not claimed: claimable now)


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class Worker:
    def __init__(
        self,
        dsn: str,
        settings: Settings,
        name: str,
    ) -> None:
        self.dsn = dsn
        self.settings = settings
        self.name = name
        timeout = settings.effective_statement_timeout_ms()
        self._session = Session(dsn, application_name=f"quota-inbox {name}", statement_timeout_ms=timeout)
        self._ledger = Session(
            dsn, application_name=f"quota-inbox {name} ledger", statement_timeout_ms=timeout
        )
        # the apply connection that holds the advisory lock on its token, its backend pid and token
        self._alive: tuple[DictConnection, int, int] | None = None
        self._batches = 0
        self._short = True  # the last claim came back short: look for untyped events first

    def open(self) -> None:
        """Open both sessions now (they open on first use otherwise; the benchmark opens them before
        its clock starts)."""
        self._apply_connection()
        self._ledger.connection()

    def close(self) -> None:
        self._session.close()
        self._ledger.close()
        self._alive = None

    def _apply_connection(self) -> tuple[DictConnection, int, int]:
        """The apply session, holding the advisory lock that says it is alive (taken once per connection)."""
        conn = self._session.connection()
        if self._alive is None or self._alive[0] is not conn:
            pid, token = Queries(conn).apply_session(secrets.randbits(62) + 1)
            self._alive = (conn, pid, token)
        return self._alive

    # -- one batch ----------------------------------------------------------------------------

    def process_once(self, look: bool | None = None) -> BatchCounts:
        """Claim and finish one batch. Zero counts (claimed and typed): nothing was due.

        look: whether to type untyped events before the claim (Worker.run says so when a hint told
        it, or after a poll). None, for callers that have no hints (a drain): when the last claim
        came back short, and after this claim if it came back short. Either way every TYPE_EVERY
        batches, in case hints were lost while workers never went idle."""
        hinted = look is not None
        looked = look or (not hinted and self._short) or self._batches % TYPE_EVERY == 0
        typed = self.type_untyped() if looked else 0
        counts = self._claim_and_finish()
        self._batches += 1
        self._short = counts.claimed < self.settings.batch_size
        if self._short and not looked and not hinted:
            typed = self.type_untyped()  # claimable at the next call
        counts.typed = typed
        return counts

    def _claim_and_finish(self) -> BatchCounts:
        conn, pid, token = self._apply_connection()
        keys: Keys | None = None
        ledger: int | None = None
        try:
            with conn.transaction():
                queries = Queries(conn)
                keys = queries.claim_batch(self.settings.batch_size)
                counts = BatchCounts()
                if keys:
                    ledger = self._ledger_queries().record_claim(
                        worker=self.name,
                        backend_pid=pid,
                        session_token=token,
                        keys=keys,
                        backoff=backoff(self.settings),
                    )
                    counts = self._counts(
                        queries.process_batch(
                            ledger=ledger, keys=keys, max_attempts=self.settings.max_attempts
                        ),
                        keys,
                    )
        except Exception as exc:
            if keys is None or ledger is None:
                raise  # nothing was recorded: the rollback gave every claimed row back
            counts = self._recover(ledger, keys, exc)
        counts.claimed = len(keys)
        return counts

    def _ledger_queries(self) -> Queries:
        return self._ledger.queries()

    def _recover(self, ledger: int, keys: Keys, exc: Exception) -> BatchCounts:
        """After a failed batch (rolled back): retry later, or bisect it by keys; then drop its ledger row."""
        if is_transient(exc):
            log.warning("transient failure applying %d events: %s", len(keys), exc)
            return self._release(ledger, keys, f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, DatabaseError):
            raise exc  # a bug: the session closes, and the reaper spends the batch's attempt
        counts = self._bisect(keys, exc)
        self._session.queries().drop_claim(ledger)
        return counts

    def finish(self, keys: Keys) -> BatchCounts:
        """Finish events this worker claimed (each part in its own transaction: one statement); on
        failure retry or bisect, never lose them."""
        try:
            return self._counts(
                self._session.queries().process_batch(
                    ledger=None, keys=keys, max_attempts=self.settings.max_attempts
                ),
                keys,
            )
        except Exception as exc:
            if is_transient(exc):
                log.warning("transient failure applying %d events: %s", len(keys), exc)
                return self._release(None, keys, f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, DatabaseError):
                raise
            return self._bisect(keys, exc)

    def _bisect(self, keys: Keys, exc: DatabaseError) -> BatchCounts:
        if len(keys) == 1:
            return self._bury(keys, exc)
        middle = len(keys) // 2
        counts = self.finish(keys[:middle])
        counts.add(self.finish(keys[middle:]))
        return counts

    def _bury(self, keys: Keys, exc: DatabaseError) -> BatchCounts:
        """Dead-letter one event the database refused, by its key and the reason: its typed columns
        are not used again, so this cannot fail the same way. Should it fail anyway, the event alone
        goes back with an attempt spent (dead when they are used up); either way its neighbours never
        pay for it."""
        error = shorten(f"[{sqlstate(exc)}] {str(exc).strip()}")
        try:
            row = self._session.queries().process_batch(
                ledger=None, keys=keys, max_attempts=self.settings.max_attempts, refused=error
            )
        except DatabaseError as again:
            if is_transient(again):
                raise
            log.error("could not dead-letter a refused event; it is released: %s", again)
            return self._release(None, keys, error)
        return self._counts(row, keys)

    def _counts(self, row: Any, keys: Keys) -> BatchCounts:
        if row.dead:
            self._log_dead_letters(keys)
        return BatchCounts(
            applied=row.applied,
            stale=row.stale,
            dead=row.dead,
            not_owned=row.not_owned,
            published=row.published,
        )

    def _release(self, ledger: int | None, keys: Keys, error: str) -> BatchCounts:
        row = self._session.queries().release_claim(
            ledger=ledger, keys=keys, error=error[:2000], backoff=backoff(self.settings)
        )
        if row.dead:
            self._log_dead_letters(keys)
        return BatchCounts(retried=row.retried, dead=row.dead)

    def _log_dead_letters(self, keys: Keys) -> None:
        # After the commit: a failure here loses log lines, never events, so it must not bubble up.
        try:
            log_dead_letters(self._session.queries().dead_letters_for_keys(keys.rows()))
        except DatabaseError as exc:
            log.warning("could not read back the new dead letters to log them: %s", exc)

    # -- events stored without typed columns --------------------------------------------------

    def type_untyped(self) -> int:
        """Type due events stored without typed columns, from their payload; how many were typed.
        Rows whose payloads were not read within half the lease are left for the next round."""
        conn, _, _ = self._apply_connection()
        with conn.transaction():
            queries = Queries(conn)
            keys = queries.untyped_keys(self.settings.batch_size)
            if not keys:
                return 0
            # Typing is derived from payloads already stored: a crash that loses it only means the
            # rows are typed again. Not waiting for the disk here keeps a WAL flush off the path of
            # every event that needs typing; the apply's commit flushes it anyway.
            queries.commit_without_flush()
            rows, _unread = read_payloads(
                conn,
                keys,
                max_bytes=self.settings.max_body_bytes,
                budget_seconds=self.settings.lease_seconds / 2,
            )
            if rows:
                self._type(conn, [typed_columns(row) for row in rows])
        return len(rows)

    def _type(self, conn: DictConnection, typed: list[dict[str, Any]]) -> None:
        """Store typed columns; a value PostgreSQL refuses (a validation gap) costs its event only:
        typed one by one, that one is stored with the refusal as its reason (an 'apply_error' dead
        letter), without the columns it was refused for."""
        try:
            with conn.transaction():  # a savepoint
                Queries(conn).type_events(typed)
            return
        except RefusedValue as exc:
            log.warning("typed columns refused, typing %d events one by one: %s", len(typed), exc)
        for row in typed:
            try:
                with conn.transaction():
                    Queries(conn).type_events([row])
            except RefusedValue as exc:
                key = {k: row[k] for k in ("quota_id", "version", "is_delete")}
                reason = shorten(f"[{sqlstate(exc)}] {str(exc).strip()}")
                Queries(conn).type_events([{**key, "errors": [reason], "error_class": "apply_error"}])

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, waker: Waker) -> None:
        """Claim and apply until stopped. Between batches, a worker goes on at once while a batch
        came back full or a hint came meanwhile; otherwise it sleeps until a hint or the poll: a
        short batch means nothing more was due when it was claimed, and what was stored since came
        with a hint (inbox/apply/waker.py), so another claim at once would only find nothing. A
        hint that another worker's claim answered while this one was busy does not count."""
        delay = 0.1
        look = True  # at start, and after a poll or a failure: untyped events may wait without a hint
        handed_on = False  # the last batch was full and its hint went to another worker
        while not stop.is_set():
            if not handed_on:
                waker.claiming()  # this claim answers the hints so far
            handed_on = False
            try:
                counts = self.process_once(look=waker.take_untyped() or look)
                delay = 0.1
            except Exception as exc:
                # The database is away (or the release itself failed): closing the apply session
                # ends its advisory lock, and the reaper spends the attempt of a batch it held.
                log.warning("worker %s: %s; retrying in %.1fs", self.name, exc, delay)
                self.close()
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
                look = True
                continue
            look = False
            if counts.claimed >= self.settings.batch_size:
                waker.wake()  # a full batch: more may be due, bring in another worker
                handed_on = True  # and go on at once, leaving that hint to the other worker
            elif counts.typed == 0:  # (typed events are claimable now: claim them at once)
                look = not waker.wait(timeout=self.settings.poll_seconds)
        self.close()


def read_payloads(
    conn: DictConnection,
    keys: Sequence[EventKeyRow],
    *,
    max_bytes: int,
    budget_seconds: float = float("inf"),
) -> tuple[list[dict[str, Any]], list[EventKeyRow]]:
    """The payload text of each untyped row the caller's transaction has locked, or why it cannot
    be read; and the rows left unread.

    One payload can cost far more to print than to store (1e131071: 8 bytes stored, 131,072 digits
    printed), enough to pass the 1 GB string limit or statement_timeout. So the payloads are streamed,
    one row at a time as PostgreSQL prints them, each statement under a savepoint: when it fails,
    every row before the one that broke it has arrived. The rest are read again; a row that fails a
    statement on its own is unreadable, and is typed so (a dead letter, error_class 'unreadable')
    with the reason, while its neighbours go on. A row stored larger than max_bytes is not printed at
    all ('unreadable' too). Past budget_seconds, what is still unread is returned as such.
    A lost connection is raised: the transaction is gone, and the rows with it.
    """
    deadline = time.monotonic() + budget_seconds
    rows: list[dict[str, Any]] = []
    remaining = list(keys)
    while remaining and time.monotonic() < deadline:
        received: list[dict[str, Any]] = []
        failure = _stream_payloads(conn, remaining, max_bytes, received)
        rows.extend(received)
        if failure is None:
            return rows, []  # a key that did not come back is no longer an untyped pending row
        got = {_key_of(r) for r in received}
        remaining = [k for k in remaining if _key_of(k) not in got]
        if not received:
            # Nothing arrived: the first row broke the statement, or the statement failed before
            # it. Read alone, the first row tells which.
            alone: list[dict[str, Any]] = []
            failure = _stream_payloads(conn, remaining[:1], max_bytes, alone)
            if failure is None:
                rows.extend(alone)
            else:
                reason = f"its payload cannot be read: [{sqlstate(failure)}] {str(failure).strip()}"
                rows.append({**remaining[0], "unreadable": reason[:2000]})
            remaining = remaining[1:]
    return rows, remaining


def _stream_payloads(
    conn: DictConnection, keys: list[EventKeyRow], max_bytes: int, into: list[dict[str, Any]]
) -> DatabaseError | None:
    """Stream the payloads of keys into `into`; the error that ended the statement, if one did."""
    try:
        with conn.transaction():  # a savepoint: a failed statement leaves the transaction usable
            for row in Queries(conn).untyped_payloads(keys=keys, max_bytes=max_bytes):
                key = {
                    "quota_id": str(row["quota_id"]),
                    "version": row["version"],
                    "is_delete": row["is_delete"],
                }
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


def reap_abandoned_claims(conn: DictConnection, settings: Settings, limit: int = 100) -> BatchCounts:
    """Spend an attempt on the batches of workers that died holding them (claim ledger rows whose
    apply session is gone, once none of their events is locked); dead-letter what has used up its
    attempts."""
    queries = Queries(conn)
    # One transaction, so the dead letters it wrote can be found by their created_at (= now()).
    with conn.transaction():
        row = queries.reap_abandoned_claims(limit=limit, backoff=backoff(settings))
        if row.dead:
            log_dead_letters(queries.dead_letters_of_this_transaction())
    return BatchCounts(retried=row.retried, dead=row.dead)


def backoff(settings: Settings) -> Backoff:
    return Backoff(
        settings.max_attempts,
        timedelta(seconds=settings.backoff_base_seconds),
        timedelta(seconds=settings.backoff_cap_seconds),
    )


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
