"""The typed numeric columns hold exactly the number the event's text holds, whatever its notation
(they travel as decimal text, cast by PostgreSQL: query ingest_typed_events)."""

from __future__ import annotations

import uuid

import pytest

from inbox.db.connect import DictConnection
from inbox.ingest import parse_texts
from inbox.store import store

# (qty_t, tolerance_pct) as written in the JSON text
NUMBERS = [
    ("1250.500", "0.1"),
    ("1E+3", "1e1"),
    ("1.50E+2", "-0.0"),
    ("1e-7", "0E-7"),
    ("0.0000001", "99.99999999999999999"),
    ("12345678901234567890.123456789012345678", "100"),
    ("7", "0"),
]


def _event(quota_id: uuid.UUID, qty: str, tolerance: str) -> str:
    return (
        f'{{"eventType":"INSERT","data":{{"quota_id":"{quota_id}","counterparty_id":"CP-1",'
        f'"direction":"BUY","period_month":"2026-03-17","qty_t":{qty},"tolerance_pct":{tolerance},'
        f'"metal_code":"CU"}},"metadata":{{"version":1}}}}'
    )


@pytest.mark.parametrize("ndjson", [True, False], ids=["column-by-column", "event-by-event"])
def test_typed_numbers_are_the_payloads_own(db: DictConnection, ndjson: bool) -> None:
    ids = [uuid.uuid4() for _ in NUMBERS]
    texts = [_event(q, qty, tol) for q, (qty, tol) in zip(ids, NUMBERS, strict=True)]
    # a Debezium-free body of Titan events is typed by decode_columns; one event the fast path must
    # read alone (a duplicate key) sends the batch event by event (decode_texts)
    if not ndjson:
        texts.append(texts[0].replace('"metal_code":"CU"', '"metal_code":"CU","metal_code":"CU"'))
    batch = parse_texts(texts)
    assert batch.of_its_columns() is ndjson
    result = store(db, batch, "http")
    assert result.accepted == len(NUMBERS)
    rows = db.execute(
        "SELECT typed, qty_t::text AS qty, tolerance_pct::text AS tol,"
        " (payload #>> '{data,qty_t}')::numeric::text AS payload_qty,"
        " (payload #>> '{data,tolerance_pct}')::numeric::text AS payload_tol"
        " FROM inbox.quota_events WHERE quota_id = ANY(%s) ORDER BY array_position(%s, quota_id)",
        [ids, ids],
    ).fetchall()
    assert [r["typed"] for r in rows] == [True] * len(NUMBERS)
    assert [(r["qty"], r["tol"]) for r in rows] == [(r["payload_qty"], r["payload_tol"]) for r in rows]
    assert rows[0]["qty"] == "1250.500" and rows[1]["qty"] == "1000"
