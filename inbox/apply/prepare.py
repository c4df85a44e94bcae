"""Events stored without typed columns -> the columns the ingestor would have stored (migration 015).

Rows stored before migration 015, by the sink trigger, by a dead-letter replay, by a reconcile
repair or by SQL by hand, and the events the edge does not type (other formats, invalid events,
deletes outside its column path) carry only their payload; the worker types them with the
ingestor's own validation (typed_event below: inbox.formats.interpret), after checking that the key
they were filed under is their payload's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inbox.db.connect import load_json
from inbox.events import EventKey, InvalidEvent, QuotaRow, UnkeyableEvent
from inbox.formats import interpret, key_event, ordering

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Typed:
    """What the inbox stores beside an event's payload (migration 015): the quota row it sets (None
    for a delete, or when it is invalid), whether it is a version-less delete, and every reason it
    cannot be applied with the class of its dead letter (None: 'invalid')."""

    row: QuotaRow | None
    versionless: bool = False
    errors: tuple[str, ...] | None = None
    error_class: str | None = None


def typed_event(value: Any, is_delete: bool) -> Typed:
    """The typed columns of a keyed event; never raises: an invalid event is stored with its reasons
    and ends as a dead letter. is_delete: what its inbox key says."""
    _, versionless = ordering(value)
    try:
        row = interpret(value)  # any format: Titan, Debezium, flattened
        if (row is None) != is_delete:
            raise InvalidEvent(["the event's inbox key and its payload disagree on whether it is a delete"])
    except InvalidEvent as exc:
        return Typed(None, versionless, tuple(exc.reasons))
    except Exception as exc:  # a bug in validation must not lose the event: it ends as a dead letter
        log.exception("validation crashed")
        return Typed(None, versionless, (f"validation failed: {exc!r}",), "unprocessable")
    return Typed(row, versionless)


def typed_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """One stored row -> the JSON of query type_events; never raises.

    row: the key, and either payload (the JSON text the inbox holds) or unreadable (why it could
    not be read: inbox/apply/worker.py, read_payloads).
    """
    key = {"quota_id": str(row["quota_id"]), "version": row["version"], "is_delete": row["is_delete"]}
    if row.get("unreadable") is not None:
        return {**key, "errors": [str(row["unreadable"])], "error_class": "unreadable"}
    try:
        payload = load_json(row["payload"])
    except (ValueError, ArithmeticError, RecursionError, MemoryError) as exc:  # too deep, too long
        reason = f"the stored payload cannot be read: {type(exc).__name__}"
        return {**key, "errors": [reason], "error_class": "unreadable"}
    mismatch = key_mismatch(row, payload)
    typed = Typed(None, errors=(mismatch,)) if mismatch else typed_event(payload, bool(row["is_delete"]))
    quota = typed.row
    return {
        **key,
        "errors": None if typed.errors is None else list(typed.errors),
        "error_class": typed.error_class,
        "versionless": typed.versionless,
        # Debezium's source LSN orders one database's changes (migration 014)
        "source_lsn": ordering(payload)[0],
        "counterparty_id": quota and quota.counterparty_id,
        "direction": quota and quota.direction,
        "period_month": quota and quota.period_month.isoformat(),
        "qty_t": quota and str(quota.qty_t),
        "tolerance_pct": None if quota is None or quota.tolerance_pct is None else str(quota.tolerance_pct),
        "incoterm_code": quota and quota.incoterm_code,
        "metal_code": quota and quota.metal_code,
        "source_updated_at": None
        if quota is None or quota.source_updated_at is None
        else quota.source_updated_at.isoformat(),
    }


def key_mismatch(row: Mapping[str, Any], payload: Any) -> str | None:
    """Why the key an event was filed under is not its payload's own, or None. Whoever files untyped
    events (the sink, a replay, SQL) passes the key next to the payload, and the version gate trusts
    the key while the quota's columns come from the payload. Filed under another quota's key, or
    above its own version, an event could otherwise write one quota's fields into another at any
    version."""
    try:
        # a key-only delete without an LSN is keyed all the same: process_batch dead-letters it as
        # delete_unplaceable, naming the fix
        own = key_event(payload, need_lsn=False)
    except UnkeyableEvent as exc:
        return f"the payload has no key of its own: {exc}"
    filed = EventKey(quota_id=own.quota_id, version=row["version"], is_delete=row["is_delete"])
    if str(row["quota_id"]) != str(own.quota_id) or filed != own:
        return (
            f"filed under key ({row['quota_id']}, version {row['version']}, "
            f"{'delete' if row['is_delete'] else 'upsert'}) but the payload's key is ({own.quota_id}, "
            f"version {own.version}, {'delete' if own.is_delete else 'upsert'})"
        )
    return None
