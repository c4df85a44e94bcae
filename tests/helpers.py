"""Builders for Titan events and small database readers shared by the tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from inbox.apply.worker import BatchCounts, Worker
from inbox.db.connect import DictConnection
from inbox.events import UnkeyableEvent
from inbox.formats import QUOTA_COLUMNS, key_event
from inbox.ingest import Source
from inbox.settings import Settings
from inbox.store import IngestResult, store_events

# A SELECT list of the quota columns an event sets, numbers as PostgreSQL prints them: compared as
# text, a lost or added decimal place shows.
QUOTA_AS_TEXT = ", ".join(
    f"{c}::text AS {c}" if c in ("qty_t", "tolerance_pct") else c for c in QUOTA_COLUMNS
)


def worker_settings(**overrides: Any) -> Settings:
    """Settings for tests that run workers: small batches, few attempts, short backoff."""
    values: dict[str, Any] = {
        "batch_size": 100,
        "max_attempts": 3,
        "lease_seconds": 30.0,
        "backoff_base_seconds": 0.5,
        "backoff_cap_seconds": 5.0,
        "statement_timeout_ms": 15_000,
    }
    return Settings(**{**values, **overrides})


def titan_event(
    quota_id: uuid.UUID | str,
    version: int,
    event_type: str = "UPDATE",
    **data: Any,
) -> dict[str, Any]:
    """A valid Titan event unless the overrides say otherwise; data fields given as None are dropped."""
    fields: dict[str, Any] = {
        "quota_id": str(quota_id),
        "counterparty_id": "CP-1",
        "direction": "BUY",
        "period_month": "2026-03-15",
        "qty_t": Decimal("100.000"),
        "tolerance_pct": Decimal("5"),
        "incoterm_code": "CIF",
        "metal_code": "CU",
        "updated_at": "2026-03-01T10:00:00Z",
    }
    fields.update(data)
    return {
        "eventType": event_type,
        "data": fields,
        "metadata": {"timestamp": "2026-03-01T10:00:00Z", "version": version, "source": "titan"},
    }


def to_json(event: Any) -> str:
    """JSON with Decimals written as exact JSON numbers (never through float)."""
    return json.dumps(_mark_decimals(event)).replace('"@@decimal:', "").replace(':decimal@@"', "")


def _mark_decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"@@decimal:{value}:decimal@@"
    if isinstance(value, dict):
        return {k: _mark_decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_decimals(v) for v in value]
    return value


def ingest(conn: DictConnection, events: list[dict[str, Any]], source: Source = "http") -> IngestResult:
    return store_events(conn, [to_json(e) for e in events], source)


def drain(dsn: str, settings: Settings | None = None, name: str = "test-worker") -> BatchCounts:
    """Run one worker until nothing is due; returns the summed counts."""
    worker = Worker(dsn, settings or Settings(), name)
    total = BatchCounts()
    try:
        while True:
            counts = worker.process_once()
            if counts.claimed == 0 and counts.typed == 0:
                return total
            total.add(counts)
    finally:
        worker.close()


def quota(conn: DictConnection, quota_id: uuid.UUID | str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM public.quota WHERE quota_id = %s", [quota_id]).fetchone()


def quota_table(conn: DictConnection, columns: str) -> dict[uuid.UUID, tuple[Any, ...]]:
    """public.quota by quota_id: each row's `columns` (a SELECT list), in their order."""
    rows = conn.execute(f"SELECT quota_id, {columns} FROM public.quota").fetchall()
    return {row.pop("quota_id"): tuple(row.values()) for row in rows}


def event_status(conn: DictConnection, quota_id: uuid.UUID | str, version: int) -> str:
    row = conn.execute(
        "SELECT status FROM inbox.quota_events WHERE quota_id = %s AND version = %s", [quota_id, version]
    ).fetchone()
    assert row is not None, f"no inbox row for {quota_id} v{version}"
    return str(row["status"])


def dead_letters(conn: DictConnection) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM public.quota_processing_errors WHERE resolved_at IS NULL ORDER BY created_at"
    ).fetchall()


def count_of(conn: DictConnection, statement: str, params: Sequence[Any] = ()) -> int:
    """The number n of a one-row `SELECT count(*) AS n ...`."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None, statement
    return int(row["n"])


def inbox_rows(conn: DictConnection) -> int:
    """How many events the inbox holds, whatever their state."""
    return count_of(conn, "SELECT count(*) AS n FROM inbox.quota_events")


def inbox_row(
    conn: DictConnection, quota_id: uuid.UUID | str, version: int, is_delete: bool | None = None
) -> dict[str, Any]:
    """The whole inbox row of one event; is_delete None means the only row at that version."""
    rows = conn.execute(
        "SELECT * FROM inbox.quota_events WHERE quota_id = %s AND version = %s"
        " AND (%s::boolean IS NULL OR is_delete = %s::boolean)",
        [quota_id, version, is_delete, is_delete],
    ).fetchall()
    assert len(rows) == 1, f"expected one inbox row for {quota_id} v{version}, found {len(rows)}"
    return rows[0]


def dead_letters_for(conn: DictConnection, quota_id: uuid.UUID | str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM public.quota_processing_errors WHERE quota_id = %s ORDER BY created_at, version",
        [quota_id],
    ).fetchall()


def exhausted_reason(conn: DictConnection, quota_id: uuid.UUID | str, version: int, attempts: int) -> str:
    """What failed last for an event its retries used up, after checking that it is dead at `attempts`
    attempts with one dead letter of class retries_exhausted that counts them ("gave up after N
    attempts: <what failed last>")."""
    row = inbox_row(conn, quota_id, version)
    assert (row["status"], row["attempts"]) == ("dead", attempts)
    [letter] = dead_letters_for(conn, quota_id)
    assert (letter["error_class"], letter["retry_count"], letter["version"]) == (
        "retries_exhausted",
        attempts,
        version,
    )
    gave_up = f"gave up after {attempts} attempts: "
    assert letter["error_message"].startswith(gave_up), letter["error_message"]
    return str(letter["error_message"]).removeprefix(gave_up)


def status_counts(conn: DictConnection) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY status").fetchall()
    return {str(r["status"]): int(r["n"]) for r in rows}


def unkeyable(event: Any) -> str:
    """The reason key_event refuses an event (it must refuse it)."""
    with pytest.raises(UnkeyableEvent) as caught:
        key_event(event)
    return str(caught.value)


Events = list[dict[str, Any]]


def apply_at_ingest_mix() -> tuple[Events, Events, Events, Events]:
    """The events of the apply-at-ingest equivalence tests (HTTP: tests/acceptance/test_apply_at_ingest.py,
    Kafka: tests/integration/test_kafka_consume.py), quotas uuid.UUID(int=1..9) as a..h, p:
    (before, mix, invalid, refused). before sets the stage; mix holds new, superseded, stale,
    duplicate, applied and refused deletes; invalid is stored untyped and the workers dead-letter it;
    refused holds a value the quota table refuses beside a valid event."""
    a, b, c, d, e, f, g, h, p = (uuid.UUID(int=n) for n in range(1, 10))
    before = [titan_event(a, 3, "INSERT"), titan_event(b, 1, "INSERT"), titan_event(c, 1, "INSERT")]
    before.append(titan_event(e, 1, "INSERT"))
    mix = [
        titan_event(a, 2, "UPDATE"),  # stale: the gate holds 3
        titan_event(a, 3, "INSERT"),  # a duplicate
        titan_event(b, 1, "DELETE"),  # a call-off holds it: a dead letter
        titan_event(c, 1, "DELETE"),  # applied
        titan_event(d, 1, "INSERT"),  # superseded in the batch: stale
        titan_event(d, 2, "UPDATE", qty_t=Decimal("12345678901234567890.123456789")),
        titan_event(e, 1, "DELETE"),  # a later change in the batch wins: a stale delete says so
        titan_event(e, 2, "UPDATE"),
        titan_event(g, 1, "INSERT", tolerance_pct=Decimal("2.50")),
    ]
    # alone: in a batch of valid Titan events the edge types the deletes too (its column path)
    invalid = [titan_event(f, 1, "INSERT", direction="HOLD")]
    refused = [titan_event(h, 1, "INSERT"), titan_event(p, 1, "INSERT", metal_code="PB")]
    return before, mix, invalid, refused
