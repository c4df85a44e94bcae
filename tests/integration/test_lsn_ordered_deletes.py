"""Version-less deletes (REPLICA IDENTITY DEFAULT) ordered by Debezium's source LSN, against a real
PostgreSQL (issue 11; sql/functions/inbox.process_batch.sql, inbox.ingest_typed_events.sql).

Under REPLICA IDENTITY DEFAULT a Debezium delete carries only the key: its NOT NULL columns hold type
defaults (version 0), so it is keyed at version 0 and placed by its source.lsn alone."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from prometheus_client import generate_latest

from inbox.apply.jobs import DatabaseWatch, check_alerts
from inbox.db.connect import DictConnection
from inbox.metrics import registry_for
from inbox.settings import Settings
from inbox.store import store_events
from tests.cdc_events import debezium_event
from tests.helpers import count_of, dead_letters, drain, inbox_row, quota, titan_event, to_json


def upsert(quota_id: uuid.UUID, version: int, lsn: int, **columns: Any) -> dict[str, Any]:
    event = debezium_event(quota_id, version, "u", **columns)
    event["source"]["lsn"] = lsn
    return event


def key_only_delete(quota_id: uuid.UUID, lsn: int) -> dict[str, Any]:
    """What Debezium 3.6 sends for a delete of Titan's row under REPLICA IDENTITY DEFAULT (pgoutput):
    the key, type defaults in the NOT NULL columns, nulls in the nullable ones."""
    before = {
        "quota_id": str(quota_id),
        "version": 0,
        "counterparty_id": "",
        "direction": "",
        "period_month": 0,
        "qty_t": "AA==",
        "tolerance_pct": None,
        "incoterm_code": None,
        "metal_code": "",
        "updated_at": 0,
    }
    source = {"connector": "postgresql", "db": "titan", "table": "quota", "lsn": lsn}
    return {"before": before, "after": None, "source": source, "op": "d", "ts_ms": 1_777_000_000_000}


def send(db: DictConnection, dsn: str, *events: dict[str, Any]) -> tuple[int, int]:
    """One delivery (one transaction), then the worker until nothing is due: (accepted, duplicates)."""
    result = store_events(db, [to_json(e) for e in events], "kafka")
    drain(dsn)
    return result.accepted, result.duplicates


def gate(db: DictConnection, quota_id: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT version, is_delete, source_lsn FROM inbox.quota_versions WHERE quota_id = %s", [quota_id]
    ).fetchone()
    assert row is not None
    return row


def test_a_versionless_delete_after_upserts_in_other_batches_is_applied_by_its_lsn(
    db: DictConnection, dsn: str
) -> None:
    quota_id = uuid.uuid4()
    send(db, dsn, upsert(quota_id, 1, 100))
    send(db, dsn, upsert(quota_id, 2, 200))
    assert quota(db, quota_id) is not None

    send(db, dsn, key_only_delete(quota_id, 300))

    assert quota(db, quota_id) is None
    row = inbox_row(db, quota_id, 0, is_delete=True)
    assert (row["status"], row["source_lsn"]) == ("applied", 300)
    # it took effect at the version the gate held, and its LSN now keeps older changes out
    assert gate(db, quota_id) == {"version": 2, "is_delete": True, "source_lsn": 300}
    [message] = db.execute(
        "SELECT message FROM pgmq.q_quota_changes WHERE message->>'op' = 'delete'"
        " AND message->>'quota_id' = %s",
        [str(quota_id)],
    ).fetchall()
    assert (message["message"]["version"], message["message"]["previous_version"]) == (2, 2)
    assert send(db, dsn, upsert(quota_id, 2, 200)) == (0, 1)  # a redelivery changes nothing
    assert quota(db, quota_id) is None


def test_an_old_delete_redelivered_after_a_re_creation_leaves_the_quota(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    send(db, dsn, upsert(quota_id, 1, 100))
    send(db, dsn, key_only_delete(quota_id, 200))
    send(db, dsn, upsert(quota_id, 2, 300, counterparty_id="CP-AGAIN"))
    # retention purged the applied delete; Kafka then redelivers it (a consumer group reset)
    db.execute("DELETE FROM inbox.quota_events WHERE quota_id = %s AND version = 0", [quota_id])

    assert send(db, dsn, key_only_delete(quota_id, 200)) == (1, 0)

    again = quota(db, quota_id)
    assert again is not None and again["counterparty_id"] == "CP-AGAIN"
    row = inbox_row(db, quota_id, 0, is_delete=True)
    assert row["status"] == "stale"
    assert row["last_error"] == (
        f"stale: a later change of quota {quota_id} was already applied; this delete is at source LSN 200"
    )
    assert gate(db, quota_id) == {"version": 2, "is_delete": False, "source_lsn": 300}


def test_a_delete_the_gate_cannot_order_is_a_dead_letter_counted_and_alerted(
    db: DictConnection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    quota_id = uuid.uuid4()
    # applied from a feed without LSNs (Titan's own events; or any change before migration 014)
    send(db, dsn, titan_event(quota_id, 3, "INSERT"))
    assert gate(db, quota_id)["source_lsn"] is None

    send(db, dsn, key_only_delete(quota_id, 500))

    assert quota(db, quota_id) is not None  # not deleted, and not stale in silence either
    assert inbox_row(db, quota_id, 0, is_delete=True)["status"] == "dead"
    [letter] = dead_letters(db)
    assert (letter["error_class"], letter["quota_id"], letter["version"]) == (
        "delete_unplaceable",
        quota_id,
        0,
    )
    assert "ALTER TABLE public.quota REPLICA IDENTITY FULL" in letter["error_message"]
    assert "source LSN 500" in letter["error_message"]

    metrics = generate_latest(registry_for(dsn, 0.0)).decode()
    assert "inbox_dead_letters_unresolved 1.0" in metrics.splitlines()
    assert 'inbox_events_dead_total{error_class="delete_unplaceable"} 1.0' in metrics.splitlines()

    settings = Settings(alert_dead_letter_threshold=1000, alert_window_seconds=300)
    with caplog.at_level(logging.ERROR, logger="inbox.apply.jobs"):
        check_alerts(dsn, settings, DatabaseWatch())
        check_alerts(dsn, settings, DatabaseWatch())  # once per window while it stays open
    sent = [r["message"] for r in db.execute("SELECT message FROM pgmq.q_inbox_alerts ORDER BY msg_id")]
    assert [m["alert"] for m in sent] == ["delete_unplaceable"]
    assert sent[0]["open"] == 1
    assert "REPLICA IDENTITY FULL" in sent[0]["fix"]
    assert any(r.getMessage() == "deletes that cannot be placed" for r in caplog.records)


def test_a_newer_change_reusing_a_stored_key_is_processed_again(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    send(db, dsn, upsert(quota_id, 1, 100))
    send(db, dsn, key_only_delete(quota_id, 200))
    # Titan re-creates the quota at version 1 (the key of the first upsert), deletes it again
    # (the key of the first delete): newer changes, not redeliveries
    assert send(db, dsn, upsert(quota_id, 1, 300, counterparty_id="CP-NEW")) == (1, 0)
    again = quota(db, quota_id)
    assert again is not None and again["counterparty_id"] == "CP-NEW"

    assert send(db, dsn, key_only_delete(quota_id, 400)) == (1, 0)

    assert quota(db, quota_id) is None
    row = inbox_row(db, quota_id, 0, is_delete=True)
    assert (row["status"], row["source_lsn"]) == ("applied", 400)
    # the old changes, redelivered, are duplicates again
    assert send(db, dsn, upsert(quota_id, 1, 300), key_only_delete(quota_id, 200)) == (0, 2)
    assert quota(db, quota_id) is None


def ingested(db: DictConnection) -> int:
    return count_of(
        db, "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'ingested' AND label = 'kafka'"
    )


def test_a_replaced_row_counts_as_ingested_only_when_it_had_finished(db: DictConnection, dsn: str) -> None:
    """store_events counts a replacement itself (migration 016: no trigger on status changes): a
    finished row pending again is one more event ingested; a row replaced while still pending is not
    (the change it carried was counted when it came, and is never applied)."""
    finished, waiting = uuid.uuid4(), uuid.uuid4()
    send(db, dsn, upsert(finished, 1, 100))
    assert ingested(db) == 1
    store_events(db, [to_json(upsert(finished, 1, 300))], "kafka")  # the applied row, pending again
    assert ingested(db) == 2
    store_events(db, [to_json(upsert(waiting, 1, 100))], "kafka")
    store_events(db, [to_json(upsert(waiting, 1, 200))], "kafka")  # still pending: replaced, not counted
    assert ingested(db) == 3
    drain(dsn)
    assert count_of(db, "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'applied'") == 3
