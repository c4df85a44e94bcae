"""The event formats the inbox accepts, recognised per payload: key them, interpret them.

* Titan event: ``{eventType, data, metadata}`` (inbox/events.py).
* Debezium change event: ``{before, after, op, source, ts_ms}``, bare or inside JsonConverter's
  ``{schema, payload}`` wrapper. op c, u, r upsert from ``after``; d deletes and is keyed from
  ``before``; t (truncate) is not an event.
* Flattened record (Debezium's ExtractNewRecordState): the row's columns plus ``__op``,
  ``__deleted`` ("true"/"false") and ``__source_ts_ms``, bare or wrapped. A delete is
  ``__deleted = "true"`` or ``__op = "d"`` -- the same rule as the sink trigger in
  sql/functions/inbox.titan_quota_sink_to_inbox.sql.

Debezium encodes some column types. With the ``{schema, payload}`` wrapper the schema says how each
field is encoded, and these are decoded exactly: NUMERIC as a Connect Decimal (base64 of the
unscaled value's two's-complement bytes, the scale in the schema) or a VariableScaleDecimal
(``{scale, value}``); DATE as days since 1970-01-01 (io.debezium.time.Date, Connect Date);
timestamps without a zone as milli/micro/nanoseconds since the epoch. Without the wrapper the scale
of a Connect Decimal is unknown, so decimals must arrive as numbers or numeric text
(decimal.handling.mode=string or double); an integer period_month (or its digits, as a JDBC sink
writes it into a text column) still means days since 1970-01-01, Debezium's default for DATE.

A Debezium delete under REPLICA IDENTITY DEFAULT carries only the key in ``before``: its NOT NULL
columns hold type defaults (version 0, "", 0, "AA=="), nullable ones null. Its version is not
Titan's, so it is a *version-less delete*: keyed at version 0 with its ``source.lsn`` (``__lsn``
when flattened, ``add.fields`` must include ``lsn``), and ordered by that LSN against the changes
already applied (sql/functions/inbox.apply_events.sql). Without an LSN it cannot be placed and
is refused with the fix (REPLICA IDENTITY FULL) named.

Not events, and so never stored (see skip_reason): a tombstone (a null value, which Debezium sends
after each delete) and a Debezium truncate.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from inbox.events import (
    EventKey,
    InvalidEvent,
    QuotaRow,
    UnkeyableEvent,
    json_type,
    key_from,
    key_titan_event,
    parse_version,
    quota_row,
    show_value,
    validate_titan_event,
)

Format = Literal["titan", "debezium", "flattened"]

DEBEZIUM_OPS = ("c", "u", "r", "d")
QUOTA_FIELDS = (
    "counterparty_id",
    "direction",
    "period_month",
    "qty_t",
    "tolerance_pct",
    "incoterm_code",
    "metal_code",
    "updated_at",
)
# The columns of public.quota an event sets besides its key (updated_at goes to source_updated_at):
# what an outbox message carries and what the demo shows.
QUOTA_COLUMNS = QUOTA_FIELDS[:-1]
# The rows a JDBC sink writes into inbox.titan_quota_sink: Debezium's flattened record.
# add.fields=op,lsn,source.ts_ms in the shipped sink configs; __lsn since migration 014
SINK_COLUMNS = ("quota_id", "version", *QUOTA_FIELDS, "__op", "__deleted", "__source_ts_ms", "__lsn")
CONNECT_DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_SCALE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
DATE_TYPES = ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date")
# ticks per second of each integer timestamp encoding
TIMESTAMP_TYPES = {
    "io.debezium.time.Timestamp": 1_000,
    "org.apache.kafka.connect.data.Timestamp": 1_000,
    "io.debezium.time.MicroTimestamp": 1_000_000,
    "io.debezium.time.NanoTimestamp": 1_000_000_000,
}
_EPOCH_DAY = date(1970, 1, 1)
_DAY_COUNT = re.compile(r"-?\d{1,7}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def skip_reason(value: Any) -> str | None:
    """Why a message is not an event ("tombstone", "truncate"), or None when it is one (or garbage)."""
    body, _ = _unwrap(value)
    if body is None:
        return "tombstone"
    if isinstance(body, dict) and _format_of(body) == "debezium" and body.get("op") == "t":
        return "truncate"
    return None


def format_of(value: Any) -> Format | None:
    """Which format a payload is in; None when it is not a JSON object."""
    body, _ = _unwrap(value)
    return _format_of(body) if isinstance(body, dict) else None


def key_event(value: Any, *, need_lsn: bool = True) -> EventKey:
    """The inbox key of an event in any format; UnkeyableEvent says why there is none. A key-only
    Debezium delete without an LSN has none unless need_lsn is False (the worker's check of a stored
    event's key: the JDBC sink stores such deletes, and apply_events dead-letters them)."""
    if not isinstance(value, dict):
        raise UnkeyableEvent(f"an event must be a JSON object, not {json_type(value)}")
    body, _ = _unwrap(value)
    if not isinstance(body, dict):
        raise UnkeyableEvent(f"payload must be a JSON object, not {json_type(body)}")
    match _format_of(body):
        case "debezium":
            return _key_debezium(body, need_lsn)
        case "flattened":
            return _key_flattened(body, need_lsn)
    return key_titan_event(body)


def ordering(value: Any) -> tuple[int | None, bool]:
    """(source LSN, whether it is a version-less delete) of a stored event; (None, False) for a Titan
    event or anything unreadable. The worker hands both to inbox.apply_events."""
    body, _ = _unwrap(value)
    if not isinstance(body, dict):
        return None, False
    match _format_of(body):
        case "debezium":
            before = body.get("before")
            return source_lsn(body), body.get("op") == "d" and isinstance(before, dict) and _key_only(before)
        case "flattened":
            return source_lsn(body), _flattened_is_delete(body) and _key_only(body)
    return None, False


def source_lsn(body: dict[str, Any]) -> int | None:
    """Debezium's source.lsn (``__lsn`` in a flattened record), when it is a usable integer."""
    source = body.get("source")
    lsn = source.get("lsn") if isinstance(source, dict) else body.get("__lsn")
    return parse_version(lsn)  # the same range: an integer between 0 and 2^63-1


def _key_only(row: dict[str, Any]) -> bool:
    """Whether a deleted row holds only its key: REPLICA IDENTITY DEFAULT sends the NOT NULL columns
    as type defaults (version 0, empty text) and the nullable ones as null. Titan requires a
    counterparty and a metal, so a real old row never has both empty."""
    return (
        row.get("version") in (None, 0)
        and row.get("counterparty_id") in (None, "")
        and row.get("metal_code") in (None, "")
    )


_IDENTITY_FIX = "Titan's table needs REPLICA IDENTITY FULL (ALTER TABLE public.quota REPLICA IDENTITY FULL)"


def interpret(value: Any) -> QuotaRow | None:
    """The quota row an event sets, None for a delete; InvalidEvent lists every reason it is neither."""
    if not isinstance(value, dict):
        raise InvalidEvent([f"an event must be a JSON object, not {json_type(value)}"])
    body, schema = _unwrap(value)
    if not isinstance(body, dict):
        raise InvalidEvent([f"payload must be a JSON object, not {json_type(body)}"])
    match _format_of(body):
        case "debezium":
            return _interpret_debezium(body, schema)
        case "flattened":
            return _interpret_flattened(body, schema)
    return validate_titan_event(body)


def titan_row(value: Any) -> QuotaRow | None:
    """The quota row a Titan event sets; None for a delete, an invalid event or another format (the
    worker interprets those). What ParsedBatch.rows holds per event."""
    if format_of(value) != "titan":
        return None
    try:
        return interpret(value)
    except InvalidEvent:
        return None


# -- recognition ------------------------------------------------------------------------------


def _unwrap(value: Any) -> tuple[Any, Any]:
    """(payload, schema) of JsonConverter's {schema, payload} wrapper; (value, None) otherwise."""
    if isinstance(value, dict) and value.keys() == {"schema", "payload"}:
        return value["payload"], value["schema"]
    return value, None


def _format_of(body: dict[str, Any]) -> Format:
    if "op" in body and ("before" in body or "after" in body):
        return "debezium"
    if "quota_id" in body and "data" not in body:
        return "flattened"
    # Titan is the native format: anything else is judged (and refused) by its rules.
    return "titan"


# -- Debezium change events -------------------------------------------------------------------


def _debezium_side(body: dict[str, Any]) -> tuple[str, str]:
    """(op, the side that holds the row: 'after' for c/u/r, 'before' for d)."""
    op = body.get("op")
    if op == "t":
        raise UnkeyableEvent("a Debezium truncate (op 't') is not a quota event")
    if op not in DEBEZIUM_OPS:
        raise UnkeyableEvent(f"op must be one of c, u, r, d, got {show_value(op)}")
    side = "before" if op == "d" else "after"
    if not isinstance(body.get(side), dict):
        raise UnkeyableEvent(f"op {op!r} needs {side} to be an object, got {json_type(body.get(side))}")
    return op, side


def _key_debezium(body: dict[str, Any], need_lsn: bool) -> EventKey:
    op, side = _debezium_side(body)
    return _keyed(body[side], op == "d", source_lsn(body), f"{side}.", "source.lsn", need_lsn)


def _key_flattened(record: dict[str, Any], need_lsn: bool) -> EventKey:
    return _keyed(record, _flattened_is_delete(record), source_lsn(record), "", "__lsn", need_lsn)


def _keyed(
    row: dict[str, Any], is_delete: bool, lsn: int | None, where: str, lsn_at: str, need_lsn: bool
) -> EventKey:
    """The key of a Debezium row; a version-less delete is keyed at version 0 by its LSN."""
    if is_delete and _key_only(row):
        # REPLICA IDENTITY DEFAULT: `before` holds only the key, its version is not Titan's.
        if lsn is None and need_lsn:
            raise UnkeyableEvent(
                f"a delete without the old row's version (REPLICA IDENTITY DEFAULT sends only the key) "
                f"needs {lsn_at} to be ordered by: {_IDENTITY_FIX}"
                + ("" if where else ", or add lsn to ExtractNewRecordState's add.fields")
            )
        key = key_from(row.get("quota_id"), 0, True, quota_id_at=f"{where}quota_id")
    else:
        try:
            key = key_from(
                row.get("quota_id"),
                row.get("version"),
                is_delete,
                quota_id_at=f"{where}quota_id",
                version_at=f"{where}version",
            )
        except UnkeyableEvent as exc:
            if not is_delete:
                raise
            raise UnkeyableEvent(f"{exc} (a delete is keyed from the old row: {_IDENTITY_FIX})") from exc
    return EventKey(key.quota_id, key.version, key.is_delete, lsn)


def _interpret_debezium(body: dict[str, Any], schema: Any) -> QuotaRow | None:
    try:
        op, side = _debezium_side(body)
    except UnkeyableEvent as exc:
        raise InvalidEvent([str(exc)]) from exc
    if op == "d":
        return None  # a delete needs only its key
    errors: list[str] = []
    fields = _decoded(body[side], _field_schemas(_field_schemas(schema).get(side)), errors)
    return quota_row(fields, errors)


# -- flattened records ------------------------------------------------------------------------


def _flattened_is_delete(record: dict[str, Any]) -> bool:
    deleted = record.get("__deleted")
    return deleted is True or deleted == "true" or record.get("__op") == "d"


def _interpret_flattened(record: dict[str, Any], schema: Any) -> QuotaRow | None:
    errors: list[str] = []
    op, deleted = record.get("__op"), record.get("__deleted")
    if op is not None and op not in DEBEZIUM_OPS:
        errors.append(f"__op must be one of c, u, r, d, got {show_value(op)}")
    if deleted is not None and not isinstance(deleted, bool) and deleted not in ("true", "false"):
        errors.append(f"__deleted must be 'true' or 'false', got {show_value(deleted)}")
    is_delete = _flattened_is_delete(record)
    if is_delete and (op in ("c", "u", "r") or deleted is False or deleted == "false"):
        errors.append(f"__op {show_value(op)} and __deleted {show_value(deleted)} disagree about a delete")
    if is_delete:
        if errors:
            raise InvalidEvent(errors)
        return None
    return quota_row(_decoded(record, _field_schemas(schema), errors), errors)


# -- Debezium's encodings ---------------------------------------------------------------------


def _field_schemas(struct: Any) -> dict[str, dict[str, Any]]:
    """{field name: Connect schema} of a struct schema; empty when there is none."""
    fields = struct.get("fields") if isinstance(struct, dict) else None
    if not isinstance(fields, list):
        return {}
    return {f["field"]: f for f in fields if isinstance(f, dict) and isinstance(f.get("field"), str)}


def _decoded(row: dict[str, Any], schemas: dict[str, dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """The quota fields of a row with Debezium's encodings undone. A value that cannot be decoded is
    reported in errors and kept as it was, so the shared validation names it too."""
    return {name: _decode(name, row.get(name), schemas.get(name, {}), errors) for name in QUOTA_FIELDS}


_DECIMAL_FIELDS = ("qty_t", "tolerance_pct")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_NUMERIC_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_SCHEMA_FIX = "send the schema (value.converter.schemas.enable=true)"


def _decode(name: str, value: Any, schema: dict[str, Any], errors: list[str]) -> Any:
    logical = schema.get("name")
    if not schema:
        # Without the {schema, payload} wrapper some encodings cannot be read: name the fix.
        if (
            name in _DECIMAL_FIELDS
            and isinstance(value, str)
            and not _NUMERIC_TEXT.fullmatch(value)
            and _BASE64.fullmatch(value)
        ):
            errors.append(
                f"{name} {show_value(value)} looks like a Connect Decimal (base64), which cannot be read "
                f"without its schema: {_SCHEMA_FIX} or set decimal.handling.mode=string on the connector"
            )
            return value
        if name == "updated_at" and isinstance(value, int | Decimal) and not isinstance(value, bool):
            errors.append(
                f"updated_at is a bare number: a timestamp without a zone sent without its schema, in an "
                f"unknown unit; {_SCHEMA_FIX}, set time.precision.mode=isostring on the connector, or make "
                f"Titan's column timestamptz"
            )
            return value
    try:
        if logical == CONNECT_DECIMAL and isinstance(value, str):
            return connect_decimal(value, _decimal_scale(schema))
        # A VariableScaleDecimal carries its own scale, so its shape is enough to know it.
        if isinstance(value, dict) and value.keys() == {"scale", "value"}:
            return connect_decimal(value["value"], value["scale"])
        if name == "period_month" and (logical is None or logical in DATE_TYPES):
            # Days since 1970-01-01: a number, or its digits when a JDBC sink wrote it to a text column.
            if isinstance(value, int) and not isinstance(value, bool):
                return epoch_day(value).isoformat()
            if isinstance(value, str) and _DAY_COUNT.fullmatch(value):
                return epoch_day(int(value)).isoformat()
        if isinstance(value, int) and not isinstance(value, bool) and logical in TIMESTAMP_TYPES:
            return epoch_timestamp(value, TIMESTAMP_TYPES[logical]).isoformat()
    except (ValueError, OverflowError) as exc:
        errors.append(f"{name} cannot be decoded: {exc}")
    return value


def _decimal_scale(schema: dict[str, Any]) -> int:
    parameters = schema.get("parameters")
    try:
        return int(parameters["scale"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ValueError("its Connect Decimal schema gives no integer parameters.scale") from None


def connect_decimal(encoded: Any, scale: Any) -> Decimal:
    """A Connect Decimal, exactly: base64 of the unscaled value's big-endian two's-complement bytes."""
    if not isinstance(encoded, str):
        raise ValueError(f"a Connect Decimal is base64 text, got {json_type(encoded)}")
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise ValueError(f"a decimal scale must be an integer, got {show_value(scale)}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(f"not base64: {show_value(encoded)}") from None
    unscaled = int.from_bytes(raw, "big", signed=True)
    # Built from its digits, never through a context: no rounding at any precision.
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


def epoch_day(days: int) -> date:
    """io.debezium.time.Date: days since 1970-01-01, no time zone involved."""
    return _EPOCH_DAY + timedelta(days=days)


def epoch_timestamp(ticks: int, per_second: int) -> datetime:
    """Milli-, micro- or nanoseconds since the epoch, in UTC (sub-microsecond digits dropped)."""
    return _EPOCH + timedelta(microseconds=ticks * 1_000_000 // per_second)
