"""Builders for Debezium change events and ExtractNewRecordState records, encoded as Debezium does.

Titan's quota table as Debezium sees it: qty_t numeric(18,3), tolerance_pct numeric(5,2), period_month
date, updated_at timestamptz. decimal_mode "precise" (Debezium's default) encodes the numerics as
Connect Decimals (base64 two's-complement bytes; the scale is in the schema, so those events need
the {schema, payload} wrapper); "string" sends them as text. Dates are days since 1970-01-01.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from inbox.db.connect import DictConnection
from tests.helpers import QUOTA_AS_TEXT, quota_table, titan_event, to_json

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


def schema_field(
    name: str, type_: str, *, optional: bool = False, logical: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One field of a Connect struct schema, as JsonConverter writes it."""
    schema: dict[str, Any] = {"type": type_, "optional": optional, "field": name, **extra}
    if logical:
        schema.update(name=logical, version=1)
    return schema


def row_schema(decimal_mode: DecimalMode, name: str = "titan.public.quota.Value") -> dict[str, Any]:
    def decimal(column: str, scale: int, optional: bool) -> dict[str, Any]:
        if decimal_mode == "string":
            return schema_field(column, "string", optional=optional)
        parameters = {"scale": str(scale), "connect.decimal.precision": "18"}
        return schema_field(
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
            schema_field("quota_id", "string", logical="io.debezium.data.Uuid"),
            schema_field("version", "int64"),
            schema_field("counterparty_id", "string"),
            schema_field("direction", "string"),
            schema_field("period_month", "int32", logical="io.debezium.time.Date"),
            decimal("qty_t", QTY_SCALE, optional=False),
            decimal("tolerance_pct", TOLERANCE_SCALE, optional=True),
            schema_field("incoterm_code", "string", optional=True),
            schema_field("metal_code", "string"),
            schema_field("updated_at", "string", logical="io.debezium.time.ZonedTimestamp"),
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
        # a real LSN grows with every change: a delete comes after the upsert of its version
        "source": {
            "connector": "postgresql",
            "db": "titan",
            "table": "quota",
            "lsn": 1000 + 2 * version + (op == "d"),
        },
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
            schema_field("source", "struct", logical="io.debezium.connector.postgresql.Source", fields=[]),
            schema_field("op", "string"),
            schema_field("ts_ms", "int64", optional=True),
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
        schema_field("__op", "string", optional=True),
        schema_field("__deleted", "string", optional=True),
        schema_field("__source_ts_ms", "int64", optional=True),
    ]
    return {"schema": schema, "payload": record}


# -- a mixed, shuffled, duplicated stream and the state it must end in ----------------------------

Format = Literal["titan", "debezium", "debezium-wrapped", "flattened", "flattened-wrapped"]
FORMATS: tuple[Format, ...] = ("titan", "debezium", "debezium-wrapped", "flattened", "flattened-wrapped")
InboxKey = tuple[uuid.UUID, int, bool]


@dataclass
class QuotaStream:
    """Kafka messages (key, value) in delivery order; the distinct inbox keys among them; and per
    quota the expected state: its final columns, or None when it ends deleted."""

    messages: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    keys: set[InboxKey] = field(default_factory=set)
    expected: dict[uuid.UUID, dict[str, Any] | None] = field(default_factory=dict)
    skipped: int = 0  # tombstones and truncates


def encode_event(fmt: Format, quota_id: uuid.UUID, version: int, delete: bool, row: dict[str, Any]) -> bytes:
    """One event in the given format, as JSON bytes with exact decimals."""
    columns = {k: v for k, v in row.items() if k not in ("quota_id", "version")}
    if fmt == "titan":
        data = {**columns, "period_month": columns["period_month"].isoformat()}
        event = titan_event(quota_id, version, "DELETE" if delete else "UPDATE", **data)
    elif fmt.startswith("debezium"):
        mode: DecimalMode = "precise" if fmt.endswith("wrapped") else "string"
        op = "d" if delete else "u"
        event = debezium_event(
            quota_id, version, op, wrapped=fmt.endswith("wrapped"), decimal_mode=mode, **columns
        )
    else:
        mode = "precise" if fmt.endswith("wrapped") else "string"
        event = flattened_record(
            quota_id, version, deleted=delete, wrapped=fmt.endswith("wrapped"), decimal_mode=mode, **columns
        )
    return to_json(event).encode("utf-8")


def random_columns(rng: random.Random) -> dict[str, Any]:
    tolerance = rng.choice([None, Decimal("0.00"), Decimal(f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}")])
    return {
        "counterparty_id": f"CP-{rng.randint(1, 50)}",
        "direction": rng.choice(["BUY", "SELL"]),
        "period_month": date(2026, rng.randint(1, 12), rng.randint(1, 28)),
        "qty_t": Decimal(f"{rng.randint(0, 99_999)}.{rng.randint(1, 999):03d}"),
        "tolerance_pct": tolerance,
        "incoterm_code": rng.choice([None, "", "CIF", "FOB"]),
        "metal_code": rng.choice(["CU", "AL", "NI", "ZN"]),
        "updated_at": f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0{rng.randint(0, 9)}:30:00Z",
    }


def quota_stream(rng: random.Random, total: int, *, duplicate_share: float = 0.1) -> QuotaStream:
    """About total messages: each quota gets versions 1..n in random formats, some end in a delete
    (Debezium's followed by a tombstone), some are re-created after it; then duplicates, a few
    truncates, and a shuffle for reordering."""
    stream = QuotaStream()
    events: list[tuple[bytes, bytes | None]] = []
    while len(events) < total * (1 - duplicate_share):
        quota_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        key = str(quota_id).encode()
        best: tuple[int, bool] = (0, False)
        rows: dict[int, dict[str, Any]] = {}
        last = rng.randint(1, 5)
        for version in range(1, last + 1):
            rows[version] = random_columns(rng)
            events.append((key, encode_event(rng.choice(FORMATS), quota_id, version, False, rows[version])))
            stream.keys.add((quota_id, version, False))
            best = max(best, (version, False))
        if rng.random() < 0.25:
            fmt = rng.choice(FORMATS)
            events.append((key, encode_event(fmt, quota_id, last, True, rows[last])))
            stream.keys.add((quota_id, last, True))
            best = max(best, (last, True))
            if fmt.startswith("debezium"):
                events.append((key, None))  # the tombstone after a delete
            if rng.random() < 0.3:  # created again with a newer version
                rows[last + 1] = random_columns(rng)
                events.append(
                    (key, encode_event(rng.choice(FORMATS), quota_id, last + 1, False, rows[last + 1]))
                )
                stream.keys.add((quota_id, last + 1, False))
                best = max(best, (last + 1, False))
        version, deleted = best
        stream.expected[quota_id] = None if deleted else {**rows[version], "version": version}
    truncates = {to_json_bytes(debezium_event(uuid.uuid4(), 0, "t")) for _ in range(5)}
    events.extend((b"", truncate) for truncate in truncates)
    while len(events) < total:
        events.append(rng.choice(events))
    rng.shuffle(events)
    stream.messages = events
    stream.skipped = sum(1 for _, value in events if value is None or value in truncates)
    return stream


def to_json_bytes(event: Any) -> bytes:
    return to_json(event).encode("utf-8")


def quota_rows(db: DictConnection) -> dict[uuid.UUID, tuple[Any, ...]]:
    """public.quota as expected_rows() gives it, numbers as PostgreSQL prints them."""
    return quota_table(db, f"source_version, {QUOTA_AS_TEXT}")


def expected_rows(stream: QuotaStream) -> dict[uuid.UUID, tuple[Any, ...]]:
    """The quota rows the stream must leave, normalised for comparison with quota_rows()."""
    return {quota_id: quota_state(row) for quota_id, row in stream.expected.items() if row is not None}


def quota_state(row: dict[str, Any], number: Callable[[Any], Any] = str) -> tuple[Any, ...]:
    """A Titan row (version and the quota fields) as public.quota holds it once applied, without
    updated_at: period_month the first of its month, the numbers through `number` (str: compared with
    PostgreSQL's text, so the scale counts too)."""
    return (
        row["version"],
        row["counterparty_id"],
        row["direction"],
        row["period_month"].replace(day=1),
        number(row["qty_t"]),
        None if row["tolerance_pct"] is None else number(row["tolerance_pct"]),
        row["incoterm_code"],
        row["metal_code"],
    )
