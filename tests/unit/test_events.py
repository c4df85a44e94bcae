"""Keying and validating Titan events; no database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from inbox.events import (
    MAX_VERSION,
    EventKey,
    InvalidEvent,
    QuotaRow,
    UnkeyableEvent,
    key_titan_event,
    validate_titan_event,
)
from inbox.formats import QUOTA_FIELDS
from inbox.ingest import loads
from tests.helpers import titan_event

QUOTA_ID = "3f1c6a52-8d1e-4c57-9a0b-1b2c3d4e5f60"


def _with(event: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {**event, "data": {**event["data"], **data}}


def _with_version(version: Any) -> dict[str, Any]:
    event = titan_event(QUOTA_ID, 1)
    event["metadata"] = {**event["metadata"], "version": version}
    return event


def _reasons(event: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidEvent) as caught:
        validate_titan_event(event)
    return caught.value.reasons


# -- key_titan_event --------------------------------------------------------------------------------


def test_key_of_a_valid_event() -> None:
    assert key_titan_event(titan_event(QUOTA_ID, 7, "UPDATE")) == EventKey(uuid.UUID(QUOTA_ID), 7, False)


@pytest.mark.parametrize(
    ("event_type", "is_delete"), [("DELETE", True), ("INSERT", False), ("UPDATE", False)]
)
def test_key_marks_deletes(event_type: str, is_delete: bool) -> None:
    assert key_titan_event(titan_event(QUOTA_ID, 1, event_type)).is_delete is is_delete


def test_key_of_a_delete_needs_only_quota_id_and_version() -> None:
    event = {"eventType": "DELETE", "data": {"quota_id": QUOTA_ID}, "metadata": {"version": 3}}
    assert key_titan_event(event) == EventKey(uuid.UUID(QUOTA_ID), 3, True)


def test_uppercase_canonical_uuid_is_accepted() -> None:
    assert key_titan_event(titan_event(QUOTA_ID.upper(), 1)).quota_id == uuid.UUID(QUOTA_ID)


@pytest.mark.parametrize(
    "quota_id",
    [
        "not-a-uuid",
        "",
        "{" + QUOTA_ID + "}",
        "urn:uuid:" + QUOTA_ID,
        QUOTA_ID.replace("-", ""),
        " " + QUOTA_ID,
        QUOTA_ID + "0",
        uuid.UUID(QUOTA_ID).int,
        None,
        ["x"],
    ],
    ids=["text", "empty", "braces", "urn", "bare-hex", "space", "too-long", "int", "null", "list"],
)
def test_quota_id_must_be_a_canonical_uuid_string(quota_id: Any) -> None:
    with pytest.raises(UnkeyableEvent, match=r"data\.quota_id must be a UUID string"):
        key_titan_event(_with(titan_event(QUOTA_ID, 1), quota_id=quota_id))


@pytest.mark.parametrize("version", [0, 1, 2**31, MAX_VERSION])
def test_version_in_range(version: int) -> None:
    assert key_titan_event(_with_version(version)).version == version


def test_max_version_is_the_bigint_maximum() -> None:
    assert MAX_VERSION == 2**63 - 1


@pytest.mark.parametrize(
    "version",
    [-1, 2**63, True, False, "3", Decimal("1.5"), Decimal("2.0"), 2.0, None, [1], {"v": 1}],
    ids=[
        "negative",
        "too-big",
        "true",
        "false",
        "string",
        "fraction",
        "decimal-int",
        "float",
        "null",
        "list",
        "object",
    ],
)
def test_version_must_be_an_integer_in_range(version: Any) -> None:
    with pytest.raises(UnkeyableEvent, match=r"metadata\.version must be an integer between 0 and"):
        key_titan_event(_with_version(version))


def test_version_from_json_text() -> None:
    """What loads makes of the JSON text decides keying: 5 keys, 5.0 and "5" do not."""
    assert key_titan_event(loads(_json_with_version("5"))).version == 5
    for text in ("5.0", '"5"', "5e0", "true"):
        with pytest.raises(UnkeyableEvent):
            key_titan_event(loads(_json_with_version(text)))


def _json_with_version(version_text: str) -> str:
    data = f'{{"quota_id": "{QUOTA_ID}"}}'
    return f'{{"eventType": "UPDATE", "data": {data}, "metadata": {{"version": {version_text}}}}}'


def test_both_key_problems_are_listed_together() -> None:
    with pytest.raises(UnkeyableEvent) as caught:
        key_titan_event({"data": {"quota_id": "x"}, "metadata": {"version": "x"}})
    assert "quota_id" in str(caught.value)
    assert "version" in str(caught.value)


@pytest.mark.parametrize(
    "event",
    [
        [],
        "event",
        42,
        None,
        {},
        {"data": "x", "metadata": {"version": 1}},
        {"data": {"quota_id": QUOTA_ID}},
        {"data": {"quota_id": QUOTA_ID}, "metadata": [1]},
    ],
    ids=["list", "string", "number", "null", "empty", "data-not-object", "no-metadata", "metadata-list"],
)
def test_unkeyable_shapes(event: Any) -> None:
    with pytest.raises(UnkeyableEvent):
        key_titan_event(event)


def test_non_object_event_says_what_it_got() -> None:
    with pytest.raises(UnkeyableEvent, match="must be a JSON object, not an array"):
        key_titan_event([1])


# -- validate_titan_event ---------------------------------------------------------------------------


def test_valid_event_becomes_a_quota_row() -> None:
    row = validate_titan_event(titan_event(QUOTA_ID, 1, "INSERT"))

    assert row == QuotaRow(
        counterparty_id="CP-1",
        direction="BUY",
        period_month=date(2026, 3, 1),
        qty_t=Decimal("100.000"),
        tolerance_pct=Decimal("5"),
        incoterm_code="CIF",
        metal_code="CU",
        source_updated_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    )
    assert str(row.qty_t) == "100.000"


@pytest.mark.parametrize("event_type", ["INSERT", "UPDATE"])
def test_insert_and_update_validate_alike(event_type: str) -> None:
    assert validate_titan_event(titan_event(QUOTA_ID, 1, event_type)) is not None


def test_delete_needs_only_its_key() -> None:
    assert validate_titan_event({"eventType": "DELETE", "data": {"quota_id": QUOTA_ID}}) is None


def test_delete_with_a_broken_body_is_still_a_delete() -> None:
    event = titan_event(QUOTA_ID, 3, "DELETE", direction="HOLD", qty_t=Decimal(-1), metal_code=None)
    assert validate_titan_event(event) is None


def test_delete_still_needs_a_data_object() -> None:
    assert _reasons({"eventType": "DELETE", "data": None}) == ["data must be an object"]


@pytest.mark.parametrize("event_type", ["insert", "UPSERT", "", None, 1])
def test_event_type_must_be_known(event_type: Any) -> None:
    [reason] = _reasons({**titan_event(QUOTA_ID, 1), "eventType": event_type})
    assert reason.startswith("eventType must be one of INSERT, UPDATE, DELETE")


def test_unknown_event_type_and_missing_data_are_listed_together() -> None:
    reasons = _reasons({"eventType": "MERGE", "data": []})
    assert len(reasons) == 2
    assert "eventType" in reasons[0]
    assert reasons[1] == "data must be an object"


@pytest.mark.parametrize("direction", ["HOLD", "buy", "", None, 1])
def test_direction_must_be_buy_or_sell(direction: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), direction=direction))
    assert reason.startswith("direction must be BUY or SELL")


@pytest.mark.parametrize("direction", ["BUY", "SELL"])
def test_both_directions_pass(direction: str) -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), direction=direction))
    assert row is not None
    assert row.direction == direction


@pytest.mark.parametrize("field", ["counterparty_id", "metal_code"])
@pytest.mark.parametrize(
    "value", [None, "", "   ", 7, ["CU"]], ids=["null", "empty", "blank", "number", "list"]
)
def test_required_text_fields(field: str, value: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), **{field: value}))
    assert reason.startswith(f"{field} is required")


@pytest.mark.parametrize("field", ["counterparty_id", "metal_code"])
def test_required_text_fields_missing(field: str) -> None:
    event = titan_event(QUOTA_ID, 1)
    del event["data"][field]
    [reason] = _reasons(event)
    assert reason.startswith(f"{field} is required")


def test_text_with_nul_is_refused() -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), metal_code="C\x00U"))
    assert "control character (U+0000)" in reason


@pytest.mark.parametrize(
    "qty",
    [Decimal(0), Decimal("0.000"), Decimal(-5), -1, 0, "0", "-0.1"],
    ids=["zero", "zero-scaled", "negative", "neg-int", "int-zero", "string-zero", "string-negative"],
)
def test_qty_t_must_be_positive(qty: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), qty_t=qty))
    assert reason.startswith("qty_t must be positive")


@pytest.mark.parametrize("qty", ["NaN", "Infinity", "-Infinity", "inf", "sNaN"])
def test_qty_t_must_be_finite(qty: str) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), qty_t=qty))
    assert "qty_t must be finite" in reason


@pytest.mark.parametrize(
    "qty", [True, 1.5, "abc", "", [1], {"v": 1}], ids=["bool", "float", "text", "empty", "list", "object"]
)
def test_qty_t_must_be_a_number(qty: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), qty_t=qty))
    assert reason.startswith("qty_t must be a number")


def test_qty_t_is_required() -> None:
    assert _reasons(_with(titan_event(QUOTA_ID, 1), qty_t=None)) == ["qty_t is required"]


@pytest.mark.parametrize("qty", [Decimal("1e200000"), Decimal("1e-20000"), "1e200000"])
def test_qty_t_beyond_postgresql_numeric(qty: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), qty_t=qty))
    assert "beyond the range" in reason


@pytest.mark.parametrize(
    ("qty", "expected"),
    [
        (Decimal("0.001"), "0.001"),
        (Decimal("1250.500"), "1250.500"),
        ("1250.500", "1250.500"),
        (" 12.50 ", "12.50"),
        (7, "7"),
        (Decimal("12345678901234567890.123456789012345678"), "12345678901234567890.123456789012345678"),
    ],
)
def test_qty_t_stays_exact(qty: Any, expected: str) -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), qty_t=qty))
    assert row is not None
    assert isinstance(row.qty_t, Decimal)
    assert str(row.qty_t) == expected


@pytest.mark.parametrize("tolerance", [Decimal("-0.01"), Decimal("100.01"), -1, 101, "200"])
def test_tolerance_pct_must_be_within_0_and_100(tolerance: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), tolerance_pct=tolerance))
    assert reason.startswith("tolerance_pct must be between 0 and 100")


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [
        (0, Decimal(0)),
        (Decimal("0.0"), Decimal("0.0")),
        (100, Decimal(100)),
        (None, None),
        ("2.5", Decimal("2.5")),
    ],
)
def test_tolerance_pct_valid_values(tolerance: Any, expected: Decimal | None) -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), tolerance_pct=tolerance))
    assert row is not None
    assert row.tolerance_pct == expected
    if expected is not None:
        assert row.tolerance_pct is not None
        assert str(row.tolerance_pct) == str(expected)


def test_tolerance_pct_may_be_absent() -> None:
    event = titan_event(QUOTA_ID, 1)
    del event["data"]["tolerance_pct"]
    row = validate_titan_event(event)
    assert row is not None
    assert row.tolerance_pct is None


def test_tolerance_pct_must_be_finite() -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), tolerance_pct="NaN"))
    assert "tolerance_pct must be finite" in reason


def test_falsy_but_valid_values_are_kept() -> None:
    row = validate_titan_event(
        _with(titan_event(QUOTA_ID, 1), tolerance_pct=Decimal(0), incoterm_code="", qty_t=Decimal("0.001"))
    )
    assert row is not None
    assert row.tolerance_pct is not None
    assert row.tolerance_pct == 0
    assert row.incoterm_code == ""
    assert row.qty_t == Decimal("0.001")


@pytest.mark.parametrize("incoterm", [5, True, ["CIF"], {"x": 1}])
def test_incoterm_code_must_be_text_or_null(incoterm: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), incoterm_code=incoterm))
    assert reason.startswith("incoterm_code must be a string or null")


def test_incoterm_code_may_be_null() -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), incoterm_code=None))
    assert row is not None
    assert row.incoterm_code is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-17", date(2026, 3, 1)),
        ("2026-03-01", date(2026, 3, 1)),
        ("2026-03-31", date(2026, 3, 1)),
        # Converting to UTC would move these into the next or the previous month.
        ("2026-04-30T23:30:00-05:00", date(2026, 4, 1)),
        ("2026-01-01T00:30:00+14:00", date(2026, 1, 1)),
        ("2025-12-31T23:59:59-12:00", date(2025, 12, 1)),
        ("2026-03-17 10:00:00", date(2026, 3, 1)),
        ("2026-03-17T00:00:00Z", date(2026, 3, 1)),
        ("2024-02-29", date(2024, 2, 1)),
    ],
)
def test_period_month_from_the_texts_own_digits(text: str, expected: date) -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), period_month=text))
    assert row is not None
    assert row.period_month == expected


@pytest.mark.parametrize(
    "text", ["2026-3-17", "17.03.2026", "20260317", "2026-03", "", "March 2026", None, 20260317]
)
def test_period_month_must_be_a_date(text: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), period_month=text))
    assert reason.startswith("period_month must be a date YYYY-MM-DD")


@pytest.mark.parametrize("text", ["2026-02-29", "2026-13-01", "2026-04-31", "2026-00-10"])
def test_period_month_must_be_a_real_date(text: str) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), period_month=text))
    assert reason.startswith("period_month is not a real date")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        # RFC 3339 allows a lowercase "t" and "z", and PostgreSQL's timestamptz takes them
        ("2026-03-01t10:00:00.25z", datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-03-01T10:00:00z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00+02:00", datetime(2026, 3, 1, 10, tzinfo=timezone(timedelta(hours=2)))),
        (
            "2026-03-01T10:00:00.123456789-0130",
            datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=timezone(-timedelta(hours=1, minutes=30))),
        ),
        ("2026-03-01 10:00+01", datetime(2026, 3, 1, 10, tzinfo=timezone(timedelta(hours=1)))),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        (None, None),
    ],
)
def test_updated_at(text: str | None, expected: datetime | None) -> None:
    row = validate_titan_event(_with(titan_event(QUOTA_ID, 1), updated_at=text))
    assert row is not None
    assert row.source_updated_at == expected
    if row.source_updated_at is not None:
        assert row.source_updated_at.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2026-13-01T00:00:00Z",
        1740000000,
        True,
        "",
        "z",
        "2026-03-01Tz",
        # shapes Python's fromisoformat takes and a CDC producer does not send
        "2026-03-01T10:00:00x+01:00",
        "2026-03-01x10:00",
        "2026-W09-7",
        "20260301T100000",
        "2026-03-01T10",
        "2026-03-01T10:00:00,5",
        "2026-03-01T10:00:00 +01:00",
        "２０２６-03-01T10:00:00Z",
    ],
)
def test_updated_at_must_be_iso_8601(value: Any) -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), updated_at=value))
    assert reason.startswith("updated_at must be an ISO-8601 timestamp")


def test_every_reason_is_listed_together() -> None:
    event = {
        "eventType": "UPDATE",
        "data": {
            "quota_id": QUOTA_ID,
            "counterparty_id": "",
            "direction": "HOLD",
            "period_month": "2026-02-30",
            "qty_t": Decimal(-5),
            "tolerance_pct": Decimal(101),
            "incoterm_code": 3,
            "updated_at": "never",
        },
    }

    reasons = _reasons(event)

    fields = QUOTA_FIELDS
    assert len(reasons) == len(fields)
    for field, reason in zip(fields, reasons, strict=True):
        assert reason.startswith(field), (field, reason)


def test_invalid_event_message_joins_the_reasons() -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_titan_event(_with(titan_event(QUOTA_ID, 1), direction="HOLD", metal_code=""))
    assert str(caught.value) == "; ".join(caught.value.reasons)
    assert len(caught.value.reasons) == 2


def test_long_values_are_shortened_in_reasons() -> None:
    [reason] = _reasons(_with(titan_event(QUOTA_ID, 1), direction="X" * 500))
    assert len(reason) < 150
    assert reason.endswith("...")
