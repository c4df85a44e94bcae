"""The pure core's rules at their edges: each test here kills mutants that survived the other unit
tests (issue 14, item 8; .ci/mutation.py keeps the score). A survivor is a rule that can be
weakened with no test noticing: limits off by one, delete markers that disagree, base64 that is not,
the tick rate of a timestamp, the exact words of a refusal, a valid but unusual shape."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from inbox.events import (
    InvalidEvent,
    UnkeyableEvent,
    json_type,
    number_problem,
    quota_row,
    show_value,
    validate_titan_event,
)
from inbox.formats import TIMESTAMP_TYPES, connect_decimal, format_of, interpret, key_event
from inbox.ingest import (
    MAX_NESTING,
    BadBatch,
    event_texts,
    loads,
    parse_body,
    parse_in_batches,
    parse_texts,
    split_body,
)
from tests.cdc_events import debezium_event, encode_decimal, flattened_record
from tests.helpers import titan_event, to_json

QUOTA_ID = uuid.UUID("0b7e3f52-4c1a-4d2e-8f90-123456789abc")


def reasons(event: Any) -> list[str]:
    with pytest.raises(InvalidEvent) as caught:
        interpret(event)
    return caught.value.reasons


def unkeyable(event: Any) -> str:
    with pytest.raises(UnkeyableEvent) as caught:
        key_event(event)
    return str(caught.value)


def bad_batch(body: bytes, *, ndjson: bool = False) -> BadBatch:
    with pytest.raises(BadBatch) as caught:
        parse_body(body, ndjson=ndjson)
    return caught.value


def _event(version: int = 1) -> str:
    return to_json(titan_event(QUOTA_ID, version))


def _nested(levels: int) -> str:
    """levels nested arrays, with one more (empty) array beside the deepest chain: more brackets than
    MAX_NESTING, so the nesting walk runs even at the limit (fewer brackets never reach it)."""
    return "[[]," + "[" * (levels - 1) + "]" * (levels - 1) + "]"


# -- the words of a refusal -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "a boolean"),
        (3, "a number"),
        (1.5, "a number"),
        (Decimal("2.5"), "a number"),
        ("x", "a string"),
        ([1], "an array"),
        ({"a": 1}, "an object"),
        (b"raw", "bytes"),
    ],
)
def test_json_type_names_each_json_type(value: Any, name: str) -> None:
    assert json_type(value) == name


def test_show_value_quotes_strings_and_cuts_at_80_characters() -> None:
    assert show_value("HOLD") == "'HOLD'"
    assert show_value(5) == "a number"
    exactly_80 = "x" * 78  # its repr, quotes included, is 80 characters
    assert show_value(exactly_80) == repr(exactly_80)
    cut = show_value("y" * 79)
    assert cut == ("'" + "y" * 76 + "...")
    assert len(cut) == 80


def test_each_refusal_shows_the_value_it_refused() -> None:
    data = dict(titan_event(QUOTA_ID, 1)["data"])
    data.update(counterparty_id="", incoterm_code=7, period_month="May 2026", qty_t=[1], updated_at=17)
    event = {**titan_event(QUOTA_ID, 1, "UPSERT"), "data": data}
    assert reasons(event) == [
        "eventType must be one of INSERT, UPDATE, DELETE, got 'UPSERT'",
        "counterparty_id is required (a non-empty string), got ''",
        "period_month must be a date YYYY-MM-DD, got 'May 2026'",
        "qty_t must be a number, got an array",
        "incoterm_code must be a string or null, got a number",
        "updated_at must be an ISO-8601 timestamp, got a number",
    ]
    data.update(counterparty_id="CP-1", incoterm_code=None, period_month="2026-02-30", qty_t="lots")
    data.update(updated_at="noon", tolerance_pct="NaN")
    assert reasons({**event, "eventType": "UPDATE"}) == [
        "period_month is not a real date: '2026-02-30'",
        "qty_t must be a number, got 'lots'",
        "tolerance_pct must be finite, got 'NaN'",
        "updated_at must be an ISO-8601 timestamp, got 'noon'",
    ]


def test_quota_row_without_earlier_errors_still_lists_its_own() -> None:
    with pytest.raises(InvalidEvent) as caught:
        quota_row({"direction": "BUY"})
    assert "counterparty_id is required (a non-empty string), got null" in caught.value.reasons


def test_a_payload_that_is_no_object_says_what_it_is() -> None:
    assert unkeyable([1]) == "an event must be a JSON object, not an array"
    assert unkeyable({"schema": {}, "payload": "x"}) == "payload must be a JSON object, not a string"
    assert reasons(7) == ["an event must be a JSON object, not a number"]
    assert reasons({"schema": {}, "payload": [1]}) == ["payload must be a JSON object, not an array"]


def test_debezium_refusals_name_the_op_and_the_side() -> None:
    truncate = debezium_event(QUOTA_ID, 1, "t")
    assert unkeyable(truncate) == "a Debezium truncate (op 't') is not a quota event"
    assert reasons(truncate) == ["a Debezium truncate (op 't') is not a quota event"]
    unknown = {**debezium_event(QUOTA_ID, 1), "op": "x"}
    assert unkeyable(unknown) == "op must be one of c, u, r, d, got 'x'"
    assert reasons(unknown) == ["op must be one of c, u, r, d, got 'x'"]
    no_after = {**debezium_event(QUOTA_ID, 1, "c"), "after": None}
    assert unkeyable(no_after) == "op 'c' needs after to be an object, got null"
    no_before = {**debezium_event(QUOTA_ID, 1, "d"), "before": [1]}
    assert unkeyable(no_before) == "op 'd' needs before to be an object, got an array"


def test_bad_batch_names_each_item_and_the_whole_body() -> None:
    assert str(BadBatch([(0, "first"), (None, "whole"), (3, "last")], unparseable=False)) == (
        "item 0: first; whole; item 3: last"
    )


# -- recognition of valid but unusual shapes ----------------------------------------------------


def test_a_debezium_event_without_one_of_its_sides_is_still_debezium() -> None:
    upsert = debezium_event(QUOTA_ID, 3, "c")
    del upsert["before"]
    assert format_of(upsert) == "debezium"
    assert key_event(upsert) == key_event(debezium_event(QUOTA_ID, 3, "c"))
    delete = debezium_event(QUOTA_ID, 3, "d")
    del delete["after"]
    assert format_of(delete) == "debezium"
    assert key_event(delete).is_delete


def test_before_and_after_without_op_or_op_alone_is_no_debezium_event() -> None:
    sides = debezium_event(QUOTA_ID, 1)
    del sides["op"]
    assert format_of(sides) == "titan"
    assert format_of({"op": "c", "quota_id": str(QUOTA_ID), "version": 1}) == "flattened"


def test_a_titan_event_with_a_top_level_quota_id_is_still_titan() -> None:
    event = {**titan_event(QUOTA_ID, 4), "quota_id": str(QUOTA_ID)}
    assert format_of(event) == "titan"
    assert interpret(event) is not None


def test_a_field_schema_that_is_not_a_named_object_is_ignored() -> None:
    event = debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise")
    after = event["schema"]["fields"][1]
    after["fields"] = ["junk", {"type": "int32"}, *after["fields"]]
    row = interpret(event)
    assert row is not None
    assert row.qty_t == Decimal("42.125")


def test_unwrapped_numbers_and_iso_dates_pass_through_undecoded() -> None:
    # decimal.handling.mode=double without the schema wrapper: an integer quantity is a quantity,
    # not days since 1970 nor a timestamp; a date already written as text stays that date.
    event = debezium_event(QUOTA_ID, 1, qty_t=42, tolerance_pct=0)
    event["after"]["period_month"] = "2026-04-30"
    row = interpret(event)
    assert row is not None
    assert (row.qty_t, row.tolerance_pct, row.period_month) == (Decimal(42), Decimal(0), date(2026, 4, 1))


# -- flattened records: delete markers that disagree ----------------------------------------------


@pytest.mark.parametrize(
    "marks",
    [
        {"__op": "d", "__deleted": "false"},
        {"__op": "d", "__deleted": False},
        {"__op": "u", "__deleted": "true"},
        {"__op": "r", "__deleted": "true"},
        {"__op": "c", "__deleted": True},
    ],
)
def test_delete_markers_that_disagree_are_invalid(marks: dict[str, Any]) -> None:
    record = {**flattened_record(QUOTA_ID, 2), **marks}
    op, deleted = marks["__op"], marks["__deleted"]
    assert reasons(record) == [
        f"__op {show_value(op)} and __deleted {show_value(deleted)} disagree about a delete"
    ]


def test_a_flattened_record_with_an_undecodable_value_lists_it() -> None:
    record = flattened_record(QUOTA_ID, 2, wrapped=True, decimal_mode="precise")
    record["payload"]["qty_t"] = "A?Q="
    assert reasons(record) == [
        "qty_t cannot be decoded: not base64: 'A?Q='",
        "qty_t must be a number, got 'A?Q='",
    ]


# -- Connect Decimals and timestamps ----------------------------------------------------------------


@pytest.mark.parametrize("encoded", ["A?Q=", "AQ==\n", " AQ==", "AQ=*="])
def test_a_connect_decimal_is_strict_base64(encoded: str) -> None:
    assert connect_decimal("AQ==", 0) == 1  # the same bytes, written strictly
    with pytest.raises(ValueError, match=f"^{re.escape(f'not base64: {show_value(encoded)}')}$"):
        connect_decimal(encoded, 0)


@pytest.mark.parametrize(
    ("encoded", "scale", "reason"),
    [
        (5, 2, "a Connect Decimal is base64 text, got a number"),
        ("AQ==", "2", "a decimal scale must be an integer, got '2'"),
        ("AQ==", 2.0, "a decimal scale must be an integer, got a number"),
        ("AQ==", True, "a decimal scale must be an integer, got a boolean"),
    ],
)
def test_a_connect_decimal_needs_text_and_an_integer_scale(encoded: Any, scale: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        connect_decimal(encoded, scale)


def test_a_connect_decimal_is_big_endian() -> None:
    assert connect_decimal(base64.b64encode(b"\x01\x00").decode(), 0) == 256
    assert connect_decimal(base64.b64encode(b"\xff\x00").decode(), 1) == Decimal("-25.6")
    assert str(connect_decimal(encode_decimal(Decimal("-0.05"), 2), 2)) == "-0.05"


@pytest.mark.parametrize(
    ("logical", "ticks", "expected"),
    [
        ("io.debezium.time.Timestamp", 1_777_000_000_123, datetime(2026, 4, 24, 3, 6, 40, 123000, UTC)),
        (
            "org.apache.kafka.connect.data.Timestamp",
            1_777_000_000_123,
            datetime(2026, 4, 24, 3, 6, 40, 123000, UTC),
        ),
        (
            "io.debezium.time.MicroTimestamp",
            1_777_000_000_123_456,
            datetime(2026, 4, 24, 3, 6, 40, 123456, UTC),
        ),
        # sub-microsecond digits are dropped, never rounded up
        (
            "io.debezium.time.NanoTimestamp",
            1_777_000_000_123_456_999,
            datetime(2026, 4, 24, 3, 6, 40, 123456, UTC),
        ),
        ("io.debezium.time.NanoTimestamp", -1, datetime(1969, 12, 31, 23, 59, 59, 999999, UTC)),
    ],
)
def test_each_timestamp_type_has_its_own_tick_rate(logical: str, ticks: int, expected: datetime) -> None:
    assert logical in TIMESTAMP_TYPES
    event = debezium_event(QUOTA_ID, 1, wrapped=True, decimal_mode="precise")
    updated_at = next(f for f in event["schema"]["fields"][1]["fields"] if f["field"] == "updated_at")
    updated_at.update(type="int64", name=logical)
    event["payload"]["after"]["updated_at"] = ticks
    row = interpret(event)
    assert row is not None
    assert row.source_updated_at == expected


# -- the limits of loads, at their edges ----------------------------------------------------------


def test_nesting_is_bounded_exactly_at_max_nesting() -> None:
    assert MAX_NESTING == 64
    loads(_nested(MAX_NESTING))
    with pytest.raises(ValueError, match=f"^nested deeper than {MAX_NESTING} levels$"):
        loads(_nested(MAX_NESTING + 1))


def test_nul_and_surrogate_refusals_say_what_they_found() -> None:
    with pytest.raises(ValueError, match=r"^a string contains \\u0000, which PostgreSQL cannot store$"):
        loads('{"k\\u0000": 1}')
    with pytest.raises(ValueError, match=r"^a string contains \\u0000, which PostgreSQL cannot store$"):
        loads('[1, "a\\u0000"]')


def test_an_escaped_backslash_before_u0000_is_ordinary_text() -> None:
    # The text holds the characters \u0000 (a backslash, then u0000), not a NUL.
    assert loads('[1, "a\\\\u0000", {"k": "b"}, true, null]') == [1, "a\\u0000", {"k": "b"}, True, None]


@pytest.mark.parametrize(("digits", "taken"), [(1000, True), (1001, False)])
def test_integers_are_bounded_at_1000_digits(digits: int, taken: bool) -> None:
    for text in ("9" * digits, "-" + "9" * digits):
        if taken:
            assert loads(text) == int(text)
        else:
            reason = f"number {text[:40]}... has more than 1000 digits"
            with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
                loads(text)


def test_a_number_beyond_the_limits_is_named_by_its_first_40_characters() -> None:
    text = "1" * 45 + "e41"
    with pytest.raises(ValueError, match=f"^number {'1' * 40} is beyond the range an event may hold"):
        loads(text)


# -- body shapes, indexes, batches --------------------------------------------------------------


def test_a_pretty_printed_array_with_one_event_per_line_is_one_text() -> None:
    body = "[\n" + _event(1) + ",\n" + _event(2) + "\n]"
    assert split_body(body.encode()) == [body]
    assert len(parse_body(body.encode())) == 2


def test_with_the_ndjson_content_type_every_line_is_an_event_even_the_first_bad_one() -> None:
    problem = bad_batch(b"not json\n" + _event().encode(), ndjson=True)
    assert problem.unparseable is True
    assert [index for index, _ in problem.problems] == [0]


def test_two_texts_name_their_bad_one_by_index() -> None:
    with pytest.raises(BadBatch) as caught:
        parse_texts([_event(), "{"])
    assert [index for index, _ in caught.value.problems] == [1]
    assert caught.value.unparseable is True


def test_an_unkeyable_batch_is_parseable() -> None:
    with pytest.raises(BadBatch) as caught:
        parse_texts(['{"eventType": "INSERT"}'])
    assert caught.value.unparseable is False


def test_a_raw_nul_makes_the_body_unparseable() -> None:
    problem = bad_batch(b'{"a": "\x00"}')
    assert problem.unparseable is True
    assert problem.problems == [(None, "body contains a NUL character")]


# -- replay: event_texts and parse_in_batches (pure; inbox replay stores what they return) ---------


def test_event_texts_splits_an_array_into_its_elements_verbatim() -> None:
    body = ' \t[\r\n {"a": 1.50} ,\t[2, 3],"x" ,\n 1e2 ]\n'
    assert event_texts(body.encode()) == ['{"a": 1.50}', "[2, 3]", '"x"', "1e2"]
    assert event_texts(b"[ ]") == []
    assert event_texts(b"[]") == []


def test_event_texts_of_ndjson_and_of_one_object() -> None:
    lines = [_event(1), _event(2)]
    assert event_texts("\n".join(lines).encode()) == lines
    assert event_texts(lines[0].encode()) == [lines[0]]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1 2]", "not valid JSON: expected ',' or ']' at character 3"),
        (b"[1,", "not valid JSON: Expecting value: line 1 column 4 (char 3)"),
        (b"[1, }]", "not valid JSON: Expecting value: line 1 column 5 (char 4)"),
    ],
)
def test_event_texts_refuses_a_broken_array_in_one_line(body: bytes, reason: str) -> None:
    with pytest.raises(BadBatch) as caught:
        event_texts(body)
    assert caught.value.problems == [(None, reason)]
    assert caught.value.unparseable is True


def test_parse_in_batches_keeps_the_order_and_numbers_problems_across_batches() -> None:
    texts = [_event(v) for v in range(1, 6)]
    batches = parse_in_batches(texts, 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [k.version for b in batches for k in b.keys] == [1, 2, 3, 4, 5]
    assert json.loads(batches[2].array_text)[0]["metadata"]["version"] == 5

    texts[3] = "{"
    texts[4] = '{"eventType": "INSERT"}'
    with pytest.raises(BadBatch) as caught:
        parse_in_batches(texts, 2)
    assert [index for index, _ in caught.value.problems] == [3, 4]
    assert caught.value.unparseable is False


def test_validate_titan_event_of_a_delete_needs_no_fields() -> None:
    assert validate_titan_event({"eventType": "DELETE", "data": {}}) is None


def test_parse_in_batches_names_a_bad_event_alone_in_its_batch_by_its_index() -> None:
    texts = [_event(1), _event(2), "{"]
    with pytest.raises(BadBatch) as caught:
        parse_in_batches(texts, 2)
    assert [index for index, _ in caught.value.problems] == [2]
    with pytest.raises(BadBatch) as caught:
        parse_in_batches([_event(1), "{"], 1)
    assert [index for index, _ in caught.value.problems] == [1]
    with pytest.raises(BadBatch) as caught:
        parse_in_batches(["{"], 2)
    assert [index for index, _ in caught.value.problems] == [None]  # the whole file is one text


def test_event_texts_keeps_an_integer_python_would_refuse_for_parse_texts_to_name() -> None:
    huge = "9" * 5000  # beyond int()'s 4300 digits: event_texts only finds where each element ends
    assert event_texts(f"[{huge}, 1]".encode()) == [huge, "1"]
    with pytest.raises(BadBatch, match="has more than 1000 digits"):
        parse_in_batches(event_texts(f"[{huge}]".encode()), 10)


def test_event_texts_refuses_a_stray_character_between_elements() -> None:
    with pytest.raises(BadBatch, match="not valid JSON"):
        event_texts(b"[X 1]")


# -- numbers at the limits of events.number_problem ------------------------------------------------


def _qty_reasons(qty: Any) -> list[str]:
    data = {**titan_event(QUOTA_ID, 1)["data"], "qty_t": qty}
    try:
        quota_row(data)
    except InvalidEvent as exc:
        return exc.reasons
    return []


def test_a_quantity_has_at_most_1000_digits_and_its_text_at_most_1100_characters() -> None:
    assert _qty_reasons("9" * 1000) == []
    assert _qty_reasons(Decimal("9" * 1000)) == []
    assert _qty_reasons("0" * 100 + "9" * 1000) == []  # 1100 characters, 1000 digits
    assert _qty_reasons(Decimal("9" * 1001)) == [
        "qty_t is beyond the range an event may hold (more than 1000 digits)"
    ]
    assert _qty_reasons("0" * 101 + "9" * 1000) == ["qty_t has more than 1000 digits"]
    assert _qty_reasons(Decimal("1e41")) == [
        "qty_t is beyond the range an event may hold (more than 40 zeros beyond its digits written out "
        "in full; 1e40 and 1e-41 are the limits)"
    ]
    assert number_problem(Decimal("NaN")) == "is not a finite number"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-0." + "9" * 999, None),  # 1002 characters before any exponent, 999 digits
        (
            "-" + "9" * 1000 + ".5",
            "number -999999999999999999999999999999999999999... has more than 1000 digits",
        ),
        ("1e-1000000", "number 1e-1000000 has an exponent of more than 6 digits"),
        ("1" * 41 + ".5e-1000000", f"number {'1' * 40} has an exponent of more than 6 digits"),
    ],
)
def test_json_numbers_at_the_length_limits(text: str, reason: str | None) -> None:
    if reason is None:
        assert loads(text) == Decimal(text)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
            loads(text)


def test_lone_surrogate_refusal_says_what_it_found() -> None:
    with pytest.raises(
        ValueError, match=r"^a string contains a lone UTF-16 surrogate \(\\ud800-\\udfff\): not text$"
    ):
        loads('["\\ud800"]')


@pytest.mark.parametrize(
    ("updated_at", "reason"),
    [
        (
            "2026-01-01T00:00:00+16:00",
            "updated_at has a time-zone offset PostgreSQL refuses (it takes whole seconds within "
            "+-15:59:59): '2026-01-01T00:00:00+16:00'",
        ),
        (
            "0001-01-01T00:00:00+01:00",
            "updated_at is outside the years 1 to 9999 in UTC: '0001-01-01T00:00:00+01:00'",
        ),
    ],
)
def test_updated_at_refusals_show_the_value(updated_at: str, reason: str) -> None:
    data = {**titan_event(QUOTA_ID, 1)["data"], "updated_at": updated_at}
    with pytest.raises(InvalidEvent) as caught:
        quota_row(data)
    assert caught.value.reasons == [reason]
