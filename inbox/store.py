"""Store parsed events in the inbox: one transaction per batch (HTTP, Kafka, replay, the Python API)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from inbox.db.errors import RefusedValue
from inbox.db.queries import DictConnection, Keys, Queries, TypedBatch
from inbox.ingest import ParsedBatch, Rejected, Source, parse_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    # some event went in without typed columns: a worker must type it first (the wake-up hint of a
    # session that sends it after the commit says so: Queries.hint_workers)
    untyped: bool = False
    # of the accepted, how many were finished (applied, stale, dead) at ingest (store's apply_attempts)
    finished: int = 0


def store(
    conn: DictConnection, batch: ParsedBatch, source: Source, *, apply_attempts: int | None = None
) -> IngestResult:
    """Store the batch in one transaction: its events (a redelivered event counts as a duplicate and
    changes nothing) and its rejected items, verbatim with their reasons, in inbox.rejects. Events
    alone, on an autocommit session outside a transaction (HTTP's pool), are one statement: its own
    transaction, one round trip. With apply_attempts (the workers' max_attempts), the typed events
    are applied in that transaction too, as their first attempt; what the apply leaves (untyped
    events, an apply that failed) waits for the workers (inbox.ingest_typed_events)."""
    if not len(batch) and not batch.rejected:
        return _result(batch, 0)
    queries = Queries(conn)
    if not batch.rejected and queries.autocommitting():
        return _store_events(queries, batch, source, apply_attempts)
    with conn.transaction():
        result = _store_events(queries, batch, source, apply_attempts) if len(batch) else _result(batch, 0)
        if batch.rejected:
            queries.insert_request_rejects(
                source=source,
                raws=[r.raw.encode("utf-8") for r in batch.rejected],
                # PostgreSQL text cannot hold NUL
                reasons=[f"item {r.index}: {r.reason}".replace("\x00", "\\x00") for r in batch.rejected],
            )
    return result


def _store_events(
    queries: Queries, batch: ParsedBatch, source: Source, apply_attempts: int | None
) -> IngestResult:
    """Store the events with their typed columns; should PostgreSQL refuse a typed value the edge's
    validation let through (a validation gap), the batch is stored untyped instead, and the workers
    type each event alone: the one whose columns are refused again ends as a dead letter
    ('apply_error'), its neighbours are applied."""
    typed = typed_batch(batch)
    try:
        with queries.atomic():  # a savepoint in a transaction: it goes on after a refusal
            counts = queries.ingest_typed_events(
                events=batch.array_text, batch=typed, source=source, apply_attempts=apply_attempts
            )
            return _result(batch, counts.inserted, not all(typed.typed), counts.finished)
    except RefusedValue as exc:
        log.warning("a typed value was refused, the batch is stored untyped for the workers to type: %s", exc)
    inserted = queries.ingest_events(
        events=batch.array_text,
        quota_ids=[k.quota_id for k in batch.keys],
        versions=[k.version for k in batch.keys],
        is_delete=[k.is_delete for k in batch.keys],
        source_lsns=[k.source_lsn for k in batch.keys],
        source=source,
    )
    return _result(batch, inserted, untyped=True)


def typed_batch(batch: ParsedBatch) -> TypedBatch:
    """The keys and typed columns of a parsed batch, one list per column: the quota row of each valid
    upsert the edge read (ParsedBatch.rows); None where it read none (a delete, an invalid event,
    another format: stored untyped, the worker types them from the payload)."""
    columns = batch.columns
    if columns is not None and batch.of_its_columns():  # read column by column: sent as they are
        return TypedBatch(
            keys=Keys(columns.quota_ids, columns.versions, columns.is_delete),
            source_lsns=[None] * len(columns),
            typed=columns.typed,
            columns=columns.row_columns,
        )
    rows = batch.rows if len(batch.rows) == len(batch.keys) else [None] * len(batch.keys)
    return TypedBatch(
        keys=Keys(
            [k.quota_id for k in batch.keys],
            [k.version for k in batch.keys],
            [k.is_delete for k in batch.keys],
        ),
        source_lsns=[k.source_lsn for k in batch.keys],
        typed=[r is not None for r in rows],
        columns={
            "counterparty_ids": [r and r.counterparty_id for r in rows],
            "directions": [r and r.direction for r in rows],
            "period_months": [r and r.period_month for r in rows],
            "qty_t": [r and r.qty_t for r in rows],
            "tolerance_pct": [r and r.tolerance_pct for r in rows],
            "incoterm_codes": [r and r.incoterm_code for r in rows],
            "metal_codes": [r and r.metal_code for r in rows],
            "source_updated_at": [r and r.source_updated_at for r in rows],
        },
    )


def _result(batch: ParsedBatch, inserted: int, untyped: bool = False, finished: int = 0) -> IngestResult:
    return IngestResult(
        accepted=inserted,
        duplicates=len(batch) - inserted,
        skipped=batch.skipped,
        rejected=batch.rejected,
        untyped=untyped,
        finished=finished,
    )


def store_events(conn: DictConnection, events: Sequence[str | bytes], source: Source) -> IngestResult:
    """The Python ingest API: raw event texts in, one transaction, counts of new and duplicate events."""
    texts = [e.decode("utf-8") if isinstance(e, bytes) else e for e in events]
    return store(conn, parse_texts(texts), source)
