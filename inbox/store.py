"""Store parsed events in the inbox: one transaction per batch (HTTP, Kafka, replay, the Python API)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inbox.db.queries import DictConnection, Queries
from inbox.ingest import ParsedBatch, Rejected, Source, parse_texts


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def store(conn: DictConnection, batch: ParsedBatch, source: Source) -> IngestResult:
    """Store the batch in one transaction: its events (a redelivered event counts as a duplicate and
    changes nothing) and its rejected items, verbatim with their reasons, in inbox.rejects."""
    if not batch.keys and not batch.rejected:
        return _result(batch, 0)
    queries = Queries(conn)
    with conn.transaction():
        inserted = 0
        if batch.keys:
            inserted = queries.ingest_events(
                events=batch.array_text,
                quota_ids=[k.quota_id for k in batch.keys],
                versions=[k.version for k in batch.keys],
                is_delete=[k.is_delete for k in batch.keys],
                source_lsns=[k.source_lsn for k in batch.keys],
                source=source,
            )
        if batch.rejected:
            queries.insert_request_rejects(
                source=source,
                raws=[r.raw.encode("utf-8") for r in batch.rejected],
                # PostgreSQL text cannot hold NUL
                reasons=[f"item {r.index}: {r.reason}".replace("\x00", "\\x00") for r in batch.rejected],
            )
    return _result(batch, inserted)


def _result(batch: ParsedBatch, inserted: int) -> IngestResult:
    return IngestResult(
        accepted=inserted,
        duplicates=len(batch.keys) - inserted,
        skipped=batch.skipped,
        rejected=batch.rejected,
    )


def store_events(conn: DictConnection, events: Sequence[str | bytes], source: Source) -> IngestResult:
    """The Python ingest API: raw event texts in, one transaction, counts of new and duplicate events."""
    texts = [e.decode("utf-8") if isinstance(e, bytes) else e for e in events]
    return store(conn, parse_texts(texts), source)
