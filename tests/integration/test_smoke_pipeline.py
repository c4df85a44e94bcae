"""The shortest path through the inbox: store, drain, see the quota row."""

from __future__ import annotations

import uuid
from decimal import Decimal

from inbox.db.connect import DictConnection
from tests.helpers import drain, ingest, quota, titan_event


def test_event_becomes_quota_row(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    result = ingest(db, [titan_event(quota_id, 1, "INSERT", qty_t=Decimal("12.500"))])
    assert (result.accepted, result.duplicates) == (1, 0)

    counts = drain(dsn)

    assert counts.applied == 1
    row = quota(db, quota_id)
    assert row is not None
    assert row["qty_t"] == Decimal("12.500")
    assert str(row["qty_t"]) == "12.500"
    assert row["source_version"] == 1
