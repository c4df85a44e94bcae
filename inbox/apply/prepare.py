"""Claimed inbox rows -> the JSON the SQL apply function takes: a quota row, or why it is not one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from inbox.db.connect import load_json
from inbox.events import EventKey, InvalidEvent, UnkeyableEvent
from inbox.formats import interpret, key_event, ordering

log = logging.getLogger(__name__)


def prepare(row: Mapping[str, Any]) -> dict[str, Any]:
    """One claimed row -> {key..., error_class, error, quota columns}; never raises.

    row: the key, and either payload (the JSON text the inbox holds) or unreadable (why it could
    not be read: inbox/apply/worker.py, read_payloads).
    """
    prepared: dict[str, Any] = {
        "quota_id": str(row["quota_id"]),
        "version": row["version"],
        "is_delete": row["is_delete"],
    }
    if row.get("unreadable") is not None:
        prepared.update(error_class="unreadable", error=str(row["unreadable"]))
        return prepared
    try:
        payload = load_json(row["payload"])
    except (ValueError, ArithmeticError, RecursionError, MemoryError) as exc:  # too deep, too long
        prepared.update(
            error_class="unreadable", error=f"the stored payload cannot be read: {type(exc).__name__}"
        )
        return prepared
    # Debezium's source LSN orders one database's changes; a delete that carries only its key
    # (REPLICA IDENTITY DEFAULT) is placed by it alone (sql/functions/inbox.apply_events.sql).
    prepared["source_lsn"], prepared["versionless"] = ordering(payload)
    try:
        _check_key(row, payload)
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


def _check_key(row: Mapping[str, Any], payload: Any) -> None:
    """The key an event is filed under must be the payload's own: whoever files events (the ingest
    role, the sink, SQL) passes the key next to the payload, and the version gate trusts the key
    while the quota's columns come from the payload. Filed under another quota's key, or above its
    own version, an event could otherwise write one quota's fields into another at any version."""
    try:
        # a key-only delete without an LSN is keyed all the same: apply_events dead-letters it as
        # delete_unplaceable, naming the fix
        own = key_event(payload, need_lsn=False)
    except UnkeyableEvent as exc:
        raise InvalidEvent([f"the payload has no key of its own: {exc}"]) from exc
    filed = EventKey(quota_id=own.quota_id, version=row["version"], is_delete=row["is_delete"])
    if str(row["quota_id"]) != str(own.quota_id) or filed != own:
        raise InvalidEvent(
            [
                f"filed under key ({row['quota_id']}, version {row['version']}, "
                f"{'delete' if row['is_delete'] else 'upsert'}) but the payload's key is ({own.quota_id}, "
                f"version {own.version}, {'delete' if own.is_delete else 'upsert'})"
            ]
        )
