"""Claimed inbox rows -> the JSON the SQL apply function takes: a quota row, or why it is not one."""

from __future__ import annotations

import logging
from typing import Any

from inbox.events import InvalidEvent
from inbox.formats import interpret

log = logging.getLogger(__name__)


def prepare(row: dict[str, Any]) -> dict[str, Any]:
    """One claimed row -> {key..., error_class, error, quota columns}; never raises."""
    prepared: dict[str, Any] = {
        "quota_id": str(row["quota_id"]),
        "version": row["version"],
        "is_delete": row["is_delete"],
    }
    payload = row["payload"]
    try:
        quota = interpret(payload)  # any format: Titan, Debezium, flattened
        if (quota is None) != row["is_delete"]:
            raise InvalidEvent(["the event's inbox key and its payload disagree on whether it is a delete"])
    except InvalidEvent as exc:
        prepared.update(error_class="invalid", error=str(exc))
        return prepared
    except Exception as exc:  # a bug in validation must not stall the queue: dead-letter and log it
        log.exception("validation crashed", extra={"quota_id": prepared["quota_id"]})
        prepared.update(error_class="unprocessable", error=f"validation failed: {exc!r}")
        return prepared
    if quota is not None:
        prepared.update(
            counterparty_id=quota.counterparty_id,
            direction=quota.direction,
            period_month=quota.period_month.isoformat(),
            qty_t=str(quota.qty_t),
            tolerance_pct=None if quota.tolerance_pct is None else str(quota.tolerance_pct),
            incoterm_code=quota.incoterm_code,
            metal_code=quota.metal_code,
            source_updated_at=None
            if quota.source_updated_at is None
            else quota.source_updated_at.isoformat(),
        )
    return prepared
