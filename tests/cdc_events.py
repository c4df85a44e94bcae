"""Builders for Debezium change events and ExtractNewRecordState records, encoded as Debezium does.

Titan's quota table as Debezium sees it: qty_t numeric(18,3), tolerance_pct numeric(5,2), period_month
date, updated_at timestamptz. decimal_mode "precise" (Debezium's default) encodes the numerics as
Connect Decimals (base64 two's-complement bytes; the scale is in the schema, so those events need
the {schema, payload} wrapper); "string" sends them as text. Dates are days since 1970-01-01.
"""

from __future__ import annotations

import base64
import uuid
from datetime import date
from decimal import Decimal
from typing import Any, Literal

DecimalMode = Literal["precise", "string"]

QTY_SCALE = 3
TOLERANCE_SCALE = 2
EPOCH = date(1970, 1, 1)


def encode_decimal(value: Decimal, scale: int) -> str:
    """A Connect Decimal of the given scale: base64 of the unscaled value's two's-complement bytes."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int) and exponent >= -scale, f"{value} has more than {scale} decimals"
    unscaled = int("".join(map(str, digits))) * 10 ** (exponent + scale) * (-1 if sign else 1)
    raw = unscaled.to_bytes(max(1, (unscaled.bit_length() + 8) // 8), "big", signed=True)
    return base64.b64encode(raw).decode("ascii")


def days_since_epoch(day: date) -> int:
    return (day - EPOCH).days


def quota_columns(quota_id: uuid.UUID | str, version: int, **overrides: Any) -> dict[str, Any]:
    """A Titan quota row as plain values (Decimal, date) before any encoding."""
    row: dict[str, Any] = {
        "quota_id": str(quota_id),
        "version": version,
        "counterparty_id": "CP-9",
        "direction": "BUY",
        "period_month": date(2026, 4, 30),
        "qty_t": Decimal("42.125"),
        "tolerance_pct": Decimal("2.50"),
        "incoterm_code": "DAP",
        "metal_code": "NI",
        "updated_at": "2026-04-30T22:15:00Z",
    }
    row.update(overrides)
    return row


def encode_row(row: dict[str, Any], decimal_mode: DecimalMode) -> dict[str, Any]:
    """The row's values as Debezium puts them in an event."""
    encoded = dict(row)
    if isinstance(row.get("period_month"), date):
        encoded["period_month"] = days_since_epoch(row["period_month"])
    for name, scale in (("qty_t", QTY_SCALE), ("tolerance_pct", TOLERANCE_SCALE)):
        value = row.get(name)
        if isinstance(value, Decimal):
            encoded[name] = encode_decimal(value, scale) if decimal_mode == "precise" else str(value)
    return encoded


def field(name: str, type_: str, *, optional: bool = False, logical: str | None = None, **extra: Any) -> Any:
    """One field of a Connect struct schema, as JsonConverter writes it."""
    schema: dict[str, Any] = {"type": type_, "optional": optional, "field": name, **extra}
    if logical:
        schema.update(name=logical, version=1)
    return schema


def row_schema(decimal_mode: DecimalMode, name: str = "titan.public.quota.Value") -> dict[str, Any]:
    def decimal(column: str, scale: int, optional: bool) -> dict[str, Any]:
        if decimal_mode == "string":
            return field(column, "string", optional=optional)
        parameters = {"scale": str(scale), "connect.decimal.precision": "18"}
        return field(
            column,
            "bytes",
            optional=optional,
            logical="org.apache.kafka.connect.data.Decimal",
            parameters=parameters,
        )

    return {
        "type": "struct",
        "optional": True,
        "name": name,
        "fields": [
            field("quota_id", "string", logical="io.debezium.data.Uuid"),
            field("version", "int64"),
            field("counterparty_id", "string"),
            field("direction", "string"),
            field("period_month", "int32", logical="io.debezium.time.Date"),
            decimal("qty_t", QTY_SCALE, optional=False),
            decimal("tolerance_pct", TOLERANCE_SCALE, optional=True),
            field("incoterm_code", "string", optional=True),
            field("metal_code", "string"),
            field("updated_at", "string", logical="io.debezium.time.ZonedTimestamp"),
        ],
    }


def debezium_event(
    quota_id: uuid.UUID | str,
    version: int,
    op: str = "u",
    *,
    wrapped: bool = False,
    decimal_mode: DecimalMode = "string",
    **overrides: Any,
) -> dict[str, Any]:
    """A Debezium change event; a delete ('d') carries the row in `before` and has `after: null`."""
    row = encode_row(quota_columns(quota_id, version, **overrides), decimal_mode)
    before, after = (row, None) if op == "d" else (None, row)
    if op == "t":
        before = after = None
    payload = {
        "before": before,
        "after": after,
        "source": {"connector": "postgresql", "db": "titan", "table": "quota", "lsn": 1000 + version},
        "op": op,
        "ts_ms": 1_777_000_000_000 + version,
    }
    if not wrapped:
        return payload
    value = row_schema(decimal_mode)
    schema = {
        "type": "struct",
        "optional": False,
        "name": "titan.public.quota.Envelope",
        "fields": [
            {**value, "field": "before"},
            {**value, "field": "after"},
            field("source", "struct", logical="io.debezium.connector.postgresql.Source", fields=[]),
            field("op", "string"),
            field("ts_ms", "int64", optional=True),
        ],
    }
    return {"schema": schema, "payload": payload}


def flattened_record(
    quota_id: uuid.UUID | str,
    version: int,
    *,
    deleted: bool = False,
    wrapped: bool = False,
    decimal_mode: DecimalMode = "string",
    **overrides: Any,
) -> dict[str, Any]:
    """What ExtractNewRecordState (delete.handling.mode=rewrite, add.fields=op,source.ts_ms) emits."""
    record = encode_row(quota_columns(quota_id, version, **overrides), decimal_mode)
    record.update(
        __op="d" if deleted else "u",
        __deleted="true" if deleted else "false",
        __source_ts_ms=1_777_000_000_000 + version,
    )
    if not wrapped:
        return record
    schema = row_schema(decimal_mode, name="titan.public.quota.Value")
    schema["fields"] = [
        *schema["fields"],
        field("__op", "string", optional=True),
        field("__deleted", "string", optional=True),
        field("__source_ts_ms", "int64", optional=True),
    ]
    return {"schema": schema, "payload": record}
