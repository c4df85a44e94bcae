"""Recognising, keying and interpreting the three event formats, with Debezium's encodings undone exactly."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbox.events import EventKey, InvalidEvent
from inbox.formats import connect_decimal, format_of, interpret, key_event, ordering, skip_reason
from inbox.ingest import parse_texts
from tests.cdc_events import debezium_event, encode_decimal, flattened_record, row_schema
from tests.helpers import titan_event, to_json, unkeyable

QUOTA_ID = uuid.UUID("5f0c4a3e-8c1d-4e57-9a0b-1c2d3e4f5a6b")


def reasons(event: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        interpret(event)
    return str(caught.value)


# -- recognition ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (titan_event(QUOTA_ID, 1), "titan"),
        (debezium_event(QUOTA_ID, 1), "debezium"),
        (debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise"), "debezium"),
        (flattened_record(QUOTA_ID, 1), "flattened"),
        (flattened_record(QUOTA_ID, 1, wrapped=True, decimal_mode="precise"), "flattened"),
        ({"something": "else"}, "titan"),  # judged, and refused, by the native format's rules
        ([1, 2], None),
    ],
)
def test_format_is_recognised_per_payload(event: Any, expected: str | None) -> None:
    assert format_of(event) == expected


def test_titan_events_are_keyed_and_validated_as_before() -> None:
    assert key_event(titan_event(QUOTA_ID, 7, "DELETE")) == EventKey(QUOTA_ID, 7, True)
    row = interpret(titan_event(QUOTA_ID, 7, qty_t=Decimal("0.001"), tolerance_pct=Decimal("0")))
    assert row is not None
    assert (row.qty_t, row.tolerance_pct) == (Decimal("0.001"), Decimal("0"))
    assert "data.quota_id must be a UUID string" in unkeyable({"something": "else"})


# -- Debezium change events -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_debezium_create_update_and_snapshot_read_upsert_from_after(op: str) -> None:
    event = debezium_event(QUOTA_ID, 3, op, qty_t=Decimal("17.250"))

    assert key_event(event) == EventKey(QUOTA_ID, 3, False)
    row = interpret(event)
    assert row is not None
    assert row.qty_t == Decimal("17.250")
    assert row.period_month == date(2026, 4, 1)
    assert row.source_updated_at == datetime(2026, 4, 30, 22, 15, tzinfo=UTC)


@pytest.mark.parametrize("wrapped", [False, True])
def test_debezium_delete_is_keyed_from_before(wrapped: bool) -> None:
    event = debezium_event(QUOTA_ID, 9, "d", wrapped=wrapped, decimal_mode="precise" if wrapped else "string")

    assert key_event(event) == EventKey(QUOTA_ID, 9, True)
    assert interpret(event) is None


def test_debezium_delete_without_the_old_version_is_ordered_by_its_lsn() -> None:
    """REPLICA IDENTITY DEFAULT: `before` holds the key and type defaults, never Titan's version."""
    event = debezium_event(QUOTA_ID, 9, "d")
    event["before"] = {"quota_id": str(QUOTA_ID), "version": 0, "counterparty_id": "", "metal_code": ""}
    event["source"]["lsn"] = 26652392

    key = key_event(event)
    assert (key.quota_id, key.version, key.is_delete, key.source_lsn) == (QUOTA_ID, 0, True, 26652392)
    assert ordering(event) == (26652392, True)
    # a REPLICA IDENTITY FULL delete keeps its version and is not version-less
    assert ordering(debezium_event(QUOTA_ID, 9, "d"))[1] is False


def test_debezium_delete_without_version_or_lsn_asks_for_replica_identity_full() -> None:
    event = debezium_event(QUOTA_ID, 9, "d")
    event["before"] = {"quota_id": str(QUOTA_ID), "version": None}  # nullable columns: nulls
    del event["source"]["lsn"]

    reason = unkeyable(event)
    assert "needs source.lsn" in reason
    assert "REPLICA IDENTITY FULL" in reason


def test_flattened_delete_without_lsn_names_both_fixes() -> None:
    record = {
        "quota_id": str(QUOTA_ID),
        "version": 0,
        "counterparty_id": "",
        "metal_code": "",
        "__deleted": "true",
    }
    reason = unkeyable(record)
    assert "REPLICA IDENTITY FULL" in reason
    assert "add.fields" in reason
    assert key_event({**record, "__lsn": 77}).source_lsn == 77


def test_schemaless_base64_decimal_and_bare_timestamp_name_their_fix() -> None:
    event = debezium_event(QUOTA_ID, 2)
    event["after"]["qty_t"] = "AKSN"
    event["after"]["updated_at"] = 1772359200123456
    with pytest.raises(InvalidEvent) as caught:
        interpret(event)
    reasons = " ".join(caught.value.reasons)
    assert "value.converter.schemas.enable=true" in reasons
    assert "decimal.handling.mode=string" in reasons
    assert "timestamptz" in reasons
    assert "qty_t 'AKSN' looks like a Connect Decimal (base64)" in reasons  # the value it refused


def test_isostring_dates_are_read() -> None:
    """time.precision.mode=isostring writes a date as 2026-03-15Z."""
    event = debezium_event(QUOTA_ID, 2)
    event["after"]["period_month"] = "2026-03-15Z"
    row = interpret(event)
    assert row is not None
    assert row.period_month.isoformat() == "2026-03-01"


def test_debezium_upsert_without_after_or_with_unknown_op_is_unkeyable() -> None:
    missing_after = debezium_event(QUOTA_ID, 2, "u")
    missing_after["after"] = None
    assert "op 'u' needs after to be an object" in unkeyable(missing_after)
    assert "op must be one of c, u, r, d" in unkeyable({**debezium_event(QUOTA_ID, 2), "op": "m"})
    assert "after.quota_id must be a UUID string" in unkeyable(debezium_event("not-a-uuid", 2))


def test_wrapped_event_decodes_connect_decimal_and_date_exactly() -> None:
    # 18 significant digits: a float would round it.
    event = debezium_event(
        QUOTA_ID,
        4,
        wrapped=True,
        decimal_mode="precise",
        qty_t=Decimal("123456789012345.678"),
        tolerance_pct=Decimal("0.00"),
        period_month=date(2026, 12, 31),
    )

    row = interpret(event)
    assert row is not None
    assert str(row.qty_t) == "123456789012345.678"
    assert str(row.tolerance_pct) == "0.00"
    assert row.period_month == date(2026, 12, 1)  # from the day count, no time zone involved


def test_string_and_double_decimal_modes_keep_the_digits_sent() -> None:
    as_string = interpret(debezium_event(QUOTA_ID, 1, qty_t=Decimal("0.100")))
    assert as_string is not None
    assert str(as_string.qty_t) == "0.100"

    # decimal.handling.mode=double: a JSON number, read from its text as a Decimal.
    (text,) = [to_json(debezium_event(QUOTA_ID, 1))]
    text = text.replace('"qty_t": "42.125"', '"qty_t": 42.125')
    batch = parse_texts([text])
    assert batch.keys == [EventKey(QUOTA_ID, 1, False)]


def test_days_since_epoch_before_1970_and_unwrapped() -> None:
    event = debezium_event(QUOTA_ID, 1)
    event["after"]["period_month"] = -1  # 1969-12-31

    row = interpret(event)
    assert row is not None
    assert row.period_month == date(1969, 12, 1)


def test_day_count_digits_from_a_text_column_are_a_date() -> None:
    """A JDBC sink writes Debezium's integer DATE into the sink table's text column as digits."""
    record = flattened_record(QUOTA_ID, 1)
    record["period_month"] = "20573"  # 2026-04-30

    row = interpret(record)
    assert row is not None
    assert row.period_month == date(2026, 4, 1)
    record["period_month"] = "2026-4-30"
    assert "period_month must be a date YYYY-MM-DD" in reasons(record)


def test_integer_timestamps_are_decoded_by_their_schema() -> None:
    event = debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise")
    after_schema = event["schema"]["fields"][1]
    updated_at = next(f for f in after_schema["fields"] if f["field"] == "updated_at")
    updated_at.update(type="int64", name="io.debezium.time.MicroTimestamp")
    event["payload"]["after"]["updated_at"] = 1_777_000_000_123_456

    row = interpret(event)
    assert row is not None
    assert row.source_updated_at == datetime(2026, 4, 24, 3, 6, 40, 123456, tzinfo=UTC)


def test_variable_scale_decimal_carries_its_own_scale() -> None:
    event = debezium_event(QUOTA_ID, 1)
    event["after"]["qty_t"] = {"scale": 4, "value": encode_decimal(Decimal("9.8765"), 4)}

    row = interpret(event)
    assert row is not None
    assert str(row.qty_t) == "9.8765"


def test_undecodable_values_and_broken_rules_are_all_listed() -> None:
    event = debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise", direction="HOLD", metal_code="")
    event["payload"]["after"]["qty_t"] = "@@not base64@@"
    tolerance = next(f for f in event["schema"]["fields"][1]["fields"] if f["field"] == "tolerance_pct")
    del tolerance["parameters"]

    reason = reasons(event)
    assert "qty_t cannot be decoded: not base64" in reason
    assert "tolerance_pct cannot be decoded: its Connect Decimal schema gives no" in reason
    assert "direction must be BUY or SELL, got 'HOLD'" in reason
    assert "metal_code is required" in reason


def test_a_negative_connect_decimal_is_refused_by_the_shared_rules() -> None:
    event = debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise", qty_t=Decimal("-5.000"))
    assert "qty_t must be positive, got -5.000" in reasons(event)


# -- ExtractNewRecordState records ------------------------------------------------------------


@pytest.mark.parametrize(
    ("marks", "is_delete"),
    [
        ({"__op": "u", "__deleted": "false"}, False),
        ({"__op": "c"}, False),
        ({}, False),
        ({"__op": "d", "__deleted": "true"}, True),
        ({"__deleted": "true"}, True),
        ({"__op": "d"}, True),
        ({"__deleted": True}, True),
    ],
)
def test_flattened_delete_rule(marks: dict[str, Any], is_delete: bool) -> None:
    record = flattened_record(QUOTA_ID, 5)
    for name in ("__op", "__deleted"):
        record.pop(name)
    record.update(marks)

    assert key_event(record) == EventKey(QUOTA_ID, 5, is_delete)
    assert (interpret(record) is None) == is_delete


def test_flattened_record_with_schema_is_decoded_exactly() -> None:
    record = flattened_record(QUOTA_ID, 2, wrapped=True, decimal_mode="precise", qty_t=Decimal("1000000.001"))

    assert key_event(record) == EventKey(QUOTA_ID, 2, False)
    row = interpret(record)
    assert row is not None
    assert str(row.qty_t) == "1000000.001"
    assert row.period_month == date(2026, 4, 1)


def test_flattened_markers_that_disagree_or_are_unknown_are_invalid() -> None:
    contradiction = flattened_record(QUOTA_ID, 2)
    contradiction.update(__op="c", __deleted="true")
    assert "disagree about a delete" in reasons(contradiction)

    unknown = flattened_record(QUOTA_ID, 2, direction="HOLD")
    unknown.update(__op="x", __deleted="maybe")
    reason = reasons(unknown)
    assert "__op must be one of c, u, r, d, got 'x'" in reason
    assert "__deleted must be 'true' or 'false', got 'maybe'" in reason
    assert "direction must be BUY or SELL" in reason


def test_flattened_key_errors_name_the_columns() -> None:
    record = flattened_record(QUOTA_ID, 1)
    record.update(quota_id="Q-1", version="3")
    assert unkeyable(record) == (
        "quota_id must be a UUID string; version must be an integer between 0 and 9223372036854775807"
    )


# -- what is not an event ---------------------------------------------------------------------


def test_tombstones_and_truncates_are_skipped_not_events() -> None:
    assert skip_reason(None) == "tombstone"
    assert skip_reason({"schema": row_schema("string"), "payload": None}) == "tombstone"
    assert skip_reason(debezium_event(QUOTA_ID, 1, "t")) == "truncate"
    assert skip_reason(debezium_event(QUOTA_ID, 1, "t", wrapped=True)) == "truncate"
    assert skip_reason(debezium_event(QUOTA_ID, 1, "d")) is None
    assert skip_reason(titan_event(QUOTA_ID, 1)) is None
    assert skip_reason("garbage") is None
    # Over HTTP, where a request is atomic, a truncate is refused rather than silently dropped.
    assert "truncate" in unkeyable(debezium_event(QUOTA_ID, 1, "t"))


def test_ingest_keys_every_format_by_default() -> None:
    texts = [
        to_json(titan_event(QUOTA_ID, 1)),
        to_json(debezium_event(QUOTA_ID, 2, "d")),
        to_json(flattened_record(QUOTA_ID, 3, deleted=True, wrapped=True, decimal_mode="precise")),
    ]
    assert parse_texts(texts).keys == [
        EventKey(QUOTA_ID, 1, False),
        EventKey(QUOTA_ID, 2, True),
        EventKey(QUOTA_ID, 3, True),
    ]


# -- the Connect Decimal itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "scale", "expected"),
    [
        (b"\x00", 0, "0"),
        (b"\x7f", 0, "127"),
        (b"\x00\x80", 2, "1.28"),  # a positive value whose top bit is set needs a leading zero byte
        (b"\x80", 0, "-128"),
        (b"\xff", 3, "-0.001"),
        (b"\x01\x86\xa0", 3, "100.000"),
    ],
)
def test_connect_decimal_is_twos_complement(raw: bytes, scale: int, expected: str) -> None:
    assert str(connect_decimal(base64.b64encode(raw).decode(), scale)) == expected


@given(st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**30), max_value=10**30))
def test_connect_decimal_round_trips_any_value(value: Decimal) -> None:
    decoded = connect_decimal(encode_decimal(value, 6), 6)
    assert decoded == value
    assert decoded.as_tuple().exponent == -6
