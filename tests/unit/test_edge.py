"""The fast path of ingest (inbox/edge.py): for every body it gives what the slow path gives (keys, raw
texts, typed rows, the stored array) or it declines; it is taken for ordinary Titan bodies; and each
thing it cannot prove makes it decline, so the slow path's messages and rejects stay as they are."""

from __future__ import annotations

import dataclasses
import gc
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inbox.ingest
from inbox.edge import (
    _TYPED,
    ROW_COLUMNS,
    EdgeColumns,
    EdgeEvent,
    _typed,
    decode_columns,
    decode_event,
    decode_texts,
    is_array,
)
from inbox.events import MAX_NUMBER_DIGITS, MAX_VERSION, EventKey, QuotaRow, UnkeyableEvent
from inbox.formats import titan_row
from inbox.ingest import BadBatch, ParsedBatch, _element_texts, loads, parse_body, parse_texts, split_body
from inbox.kafka.batch import Event, Origin, classify, parsed
from inbox_bench.events import generate
from tests.cdc_events import encode_event, quota_columns
from tests.fuzz_strategies import EDGE_NUMBERS, EDGE_STRINGS, EXAMPLES, Body, bodies, examples
from tests.helpers import titan_event, to_json

PROPERTY = settings(
    max_examples=examples(EXAMPLES * 2),  # fewer in the mutation run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def exact(row: QuotaRow | None) -> tuple[tuple[str, str, str], ...] | None:
    """A row field by field, type and text: Decimal('42.125') == Decimal('42.1250'), these differ."""
    if row is None:
        return None
    return tuple(
        (f.name, type(v).__name__, str(v)) for f in dataclasses.fields(row) for v in [getattr(row, f.name)]
    )


def outcome(texts: list[str], *, fast: bool) -> tuple[Any, ...]:
    """Everything parse_texts answers, exactly: the batch, or the refusal."""
    try:
        batch = parse_texts(texts, partial=True, fast=fast)
    except BadBatch as exc:
        return ("refused", exc.problems, exc.unparseable)
    return batch_outcome(batch)


def batch_outcome(batch: ParsedBatch) -> tuple[Any, ...]:
    return (batch.keys, batch.array_text, batch.skipped, batch.rejected, [exact(r) for r in batch.rows])


def check_fast_equals_slow(texts: list[str]) -> list[EdgeEvent] | None:
    """The property, for one body's texts: the fast path declines, or gives the slow path's answer."""
    events = decode_texts(texts)
    slow = outcome(texts, fast=False)
    assert outcome(texts, fast=True) == slow
    if events is not None:
        batch = parse_texts(texts, fast=False)
        assert [e.key for e in events] == batch.keys
        assert [exact(e.row) for e in events] == [exact(r) for r in batch.rows]
        assert [e.raw for e in events] == _element_texts(batch.array_text[1:-1])
        assert batch.skipped == 0 and not batch.rejected
    return events


# -- bodies to try ----------------------------------------------------------------------------------

UUIDS = st.builds(lambda u: json.dumps(str(u)), st.uuids())
TEXTS = st.sampled_from(
    [
        *('"CP-1"', '"Müller & Söhne"', '"\\u00fc"', '""', '"  "', '"a\\":b"', '"銅"', "5", "null", "true"),
        *("[]", *EDGE_STRINGS[:10]),
    ]
)
NUMBERS = st.one_of(
    st.sampled_from(
        [
            *("1000.0010", "42.1250", "-0.0", "1e3", "0", "100", "100.0001", '"1.5"', '" 7 "', '"abc"'),
            *('"NaN"', "1e0000001", "true", "null", '{"a":1}', "[1]", "18446744073709551616"),
            *EDGE_NUMBERS,
        ]
    ),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)


def mostly(ordinary: st.SearchStrategy[str], hostile: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Seven times in eight an ordinary value: a body of several events must often be all fine."""
    return st.integers(0, 7).flatmap(lambda n: hostile if n == 7 else ordinary)


ORDINARY_NUMBERS = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=4).map(str), st.integers(0, 100).map(str)
)
FIELDS: dict[str, st.SearchStrategy[str]] = {
    "quota_id": mostly(UUIDS, st.sampled_from(['"not-a-uuid"', "7", "null"])),
    "counterparty_id": mostly(st.just('"CP-1"'), TEXTS),
    "direction": mostly(
        st.sampled_from(['"BUY"', '"SELL"']), st.sampled_from(['"HOLD"', '"buy"', "null", "1"])
    ),
    "period_month": mostly(
        st.just('"2026-03-15"'),
        st.sampled_from(
            ['"2026-02-30"', '"2026-03"', '"2026-03-15Z"', '"2026-03-15T23:00:00-05:00"', "18000"]
        ),
    ),
    "qty_t": mostly(ORDINARY_NUMBERS, NUMBERS),
    "tolerance_pct": mostly(ORDINARY_NUMBERS, NUMBERS),
    "incoterm_code": mostly(st.just('"CIF"'), TEXTS),
    "metal_code": mostly(st.just('"CU"'), TEXTS),
    "updated_at": mostly(
        st.just('"2026-03-01T10:00:00Z"'),
        st.sampled_from(['"2026-03-01T10:00:00"', '"x"', "5", "null", *EDGE_STRINGS[10:]]),
    ),
    "extra": mostly(st.just('"note"'), st.one_of(TEXTS, NUMBERS)),  # not Titan's: the slow path ignores it
}
META: dict[str, st.SearchStrategy[str]] = {
    "version": mostly(
        st.integers(min_value=0, max_value=2**63 - 1).map(str),
        st.sampled_from(["-1", str(2**63), "1.0", '"1"', "true", "null", "1" + "0" * 1000]),
    ),
    "timestamp": mostly(st.just('"2026-03-01T10:00:00Z"'), st.one_of(TEXTS, NUMBERS)),
    "source": mostly(st.just('"titan"'), TEXTS),
}
EVENT_TYPES = mostly(
    st.sampled_from(['"INSERT"', '"UPDATE"', '"DELETE"']), st.sampled_from(['"delete"', "null", "5"])
)


@st.composite
def members(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[str]], required: tuple[str, ...]) -> str:
    """The members of an object, some left out, one maybe twice, its name maybe escaped."""
    chosen = [(n, draw(s)) for n, s in fields.items() if n in required or draw(st.integers(0, 9)) < 9]
    if chosen and draw(st.integers(0, 9)) == 9:  # a key twice: json keeps the last value
        name, _ = draw(st.sampled_from(chosen))
        chosen.insert(draw(st.integers(0, len(chosen))), (name, draw(fields[name])))
    names = [json.dumps(n) for n, _ in chosen]
    if names and draw(st.integers(0, 9)) == 9:  # "q\u0074y_t" is "qty_t"
        at = draw(st.integers(0, len(names) - 1))
        names[at] = (
            names[at][:2] + f"\\u{ord(names[at][2]):04x}" + names[at][3:] if len(names[at]) > 3 else names[at]
        )
    colon = draw(st.sampled_from([":", ": "] * 10 + [" :", "\t:"]))
    return ",".join(f"{name}{colon}{value}" for name, (_, value) in zip(names, chosen, strict=True))


@st.composite
def titan_texts(draw: st.DrawFn) -> str:
    data = "{" + draw(members(FIELDS, ("quota_id",))) + "}"
    metadata = "{" + draw(members(META, ("version",))) + "}"
    top = {"eventType": EVENT_TYPES, "data": st.just(data), "metadata": st.just(metadata)}
    if draw(st.integers(0, 9)) == 9:
        top["op"] = st.sampled_from(['"c"', '"d"'])  # "op" without before/after: still Titan's
    if draw(st.integers(0, 9)) == 9:
        top["before"] = st.just("null")
    event = "{" + draw(members(top, ("data", "metadata"))) + "}"
    if draw(st.integers(0, 19)) == 19:
        event = '{"schema":null,"payload":' + event + "}"
    return event


@st.composite
def titan_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    events = draw(st.lists(titan_texts(), min_size=1, max_size=3))
    shape = draw(st.sampled_from(["array", "ndjson", "array lines", "arrays per line"]))
    text = {
        "array": "[" + ",".join(events) + "]",
        "ndjson": "\n".join(events),
        "array lines": "[\n  " + ",\n  ".join(events) + "\n]\n",
        "arrays per line": "\n".join("[" + e + "]" for e in events),
    }[shape]
    return text.encode("utf-8", "surrogatepass"), shape == "ndjson"


def texts_of(body: bytes, ndjson: bool) -> list[str] | None:
    try:
        return split_body(body, ndjson=ndjson)
    except BadBatch:
        return None


# -- the property -----------------------------------------------------------------------------------


@PROPERTY
@given(titan_bodies())
def test_titan_bodies_fast_or_declined_never_different(body: tuple[bytes, bool]) -> None:
    texts = texts_of(*body)
    if texts is not None:
        check_fast_equals_slow(texts)


@PROPERTY
@given(bodies(), st.booleans())
def test_fuzz_corpus_bodies_fast_or_declined_never_different(body: Body, ndjson: bool) -> None:
    texts = texts_of(body.raw, ndjson)
    if texts is not None:
        check_fast_equals_slow(texts)


def check_columns(texts: list[str]) -> None:
    """decode_columns answers as the slow path does, and for every body whose events _typed takes,
    given as one text or one event per text (lines that are arrays of events, which the slow path also
    reads, are declined: decode_texts decides them)."""
    columns = decode_columns(texts)
    events = decode_texts(texts)
    one_event_per_text = len(texts) == 1 or not any(map(is_array, texts))
    every_typed = (
        events is not None and one_event_per_text and all(_typed(e.raw.encode()) is not None for e in events)
    )
    assert (columns is not None) == every_typed
    if columns is not None:
        slow = parse_texts(texts, fast=False)
        assert columns.keys() == slow.keys
        assert [exact(r) for r in columns.rows] == [exact(r) for r in slow.rows]
        # every event is typed: an upsert by its row, a delete by its key alone
        assert columns.typed == [True] * len(slow.rows)
        # the columns the query takes by name: each QuotaRow field's, None at a delete
        assert list(columns.row_columns) == list(ROW_COLUMNS)
        for name, field in zip(ROW_COLUMNS, dataclasses.fields(QuotaRow), strict=True):
            column = [None if row is None else getattr(row, field.name) for row in slow.rows]
            assert list(map(repr, columns.row_columns[name])) == list(map(repr, column)), name


@PROPERTY
@given(titan_bodies())
def test_titan_bodies_by_columns_as_event_by_event(body: tuple[bytes, bool]) -> None:
    texts = texts_of(*body)
    if texts is not None:
        check_columns(texts)


@PROPERTY
@given(st.lists(titan_texts(), min_size=2, max_size=4), st.integers(0, 3), st.integers(0, 3))
def test_lines_that_are_not_one_event_each_are_never_read_by_columns(
    events: list[str], cut: int, join: int
) -> None:
    """Lines cut inside an event, or holding two: joined they could read as events; never taken."""
    lines = list(events)
    at = cut % len(lines)
    half = len(lines[at]) // 2
    lines[at : at + 1] = [lines[at][:half], lines[at][half:]]
    if join % 2:  # and two events on one line
        lines[0:2] = [lines[0] + "," + lines[1]]
    check_columns(lines)
    assert decode_columns(lines) is None


def test_columns_decline_what_a_whole_column_could_hide() -> None:
    """Checks over a whole column must still see each event: an id holding two UUIDs, a key twice in
    one event beside an event short of an optional member, a delete's unchecked fields."""
    first, second = GOOD, GOOD.replace("6f1d8c52", "7f1d8c52")
    two_ids = first.replace('"6f1d8c52-98a5-4d0e-9bbf-2f6b1f0c4b11"', f'"{uuid.uuid4()}\\n{uuid.uuid4()}"')
    twice = first.replace('"metal_code": "CU"', '"metal_code": "CU", "metal_code": "CU"')
    short = second.replace(', "source": "titan"', "")
    delete = second.replace('"UPDATE"', '"DELETE"').replace('"qty_t": 100.000', '"qty_t": "not a number"')
    for texts in ([two_ids, second], [twice, short]):
        check_columns(texts)
        assert decode_columns(texts) is None
    check_columns([first, delete])
    assert decode_columns([first, delete]) is not None


def test_integer_tolerances_are_read_once_each_and_exactly() -> None:
    """A column of integer tolerances is read once per distinct integer, each event still given its
    own; a column with decimals among them is read value by value (0 and 0.0 are equal, not alike)."""

    def tolerance(value: str | None) -> str:
        if value is None:
            return GOOD.replace('"tolerance_pct": 5, ', "")
        return GOOD.replace('"tolerance_pct": 5', f'"tolerance_pct": {value}')

    integers = [tolerance("0"), tolerance("5"), tolerance(None), tolerance("0"), tolerance("100")]
    mixed = [tolerance("0.0"), tolerance("0"), tolerance("5.00"), tolerance("5"), tolerance(None)]
    for texts in (integers, mixed):
        check_columns(texts)
    read = decode_columns(integers)
    assert read is not None
    assert read.row_columns["tolerance_pct"] == [Decimal(0), Decimal(5), None, Decimal(0), Decimal(100)]
    read = decode_columns(mixed)
    assert read is not None
    assert list(map(str, read.row_columns["tolerance_pct"])) == ["0.0", "0", "5.00", "5", "None"]
    # an integer _number does not take, and an integer beyond 100, decline the body
    for beyond in (str(10**18), "101", "-1"):
        check_columns([tolerance("0"), tolerance(beyond)])
        assert decode_columns([tolerance("0"), tolerance(beyond)]) is None


# -- the fast path is taken -------------------------------------------------------------------------


def test_the_benchmark_body_takes_the_fast_path_with_exact_rows() -> None:
    stream = generate(500, 500, first_version=2)
    body = ("[" + ",".join(stream.texts(0, 500)) + "]").encode()

    events = check_fast_equals_slow(split_body(body))

    assert events is not None and len(events) == 500
    assert [(str(e.key.quota_id), e.key.version, e.key.is_delete) for e in events] == stream.keys(0, 500)
    assert sum(e.row is None for e in events) == sum(key.is_delete for key in [e.key for e in events]) > 0
    assert [e.raw for e in events] == stream.texts(0, 500)


@pytest.mark.parametrize("shape", ["array", "ndjson"])
def test_the_benchmark_body_is_read_by_columns(shape: str) -> None:
    stream = generate(1000, 300, first_version=2)
    body = (
        stream.ndjson(0, 1000)
        if shape == "ndjson"
        else ("[" + ",".join(stream.texts(0, 1000)) + "]").encode()
    )
    texts = split_body(body, ndjson=shape == "ndjson")

    batch = parse_texts(texts, partial=True)

    assert batch.columns is not None and len(batch) == 1000
    assert batch_outcome(batch) == outcome(texts, fast=False)
    assert sum(batch.columns.is_delete) > 0 and all(batch.columns.typed)
    check_columns(texts)


@pytest.mark.parametrize("shape", ["array", "ndjson", "pretty"])
def test_ordinary_titan_bodies_take_the_fast_path(shape: str) -> None:
    events = [titan_event(uuid.uuid4(), n, qty_t=Decimal("1000.0010")) for n in range(3)]
    texts = [to_json(e) for e in events]
    body = {
        "array": "[" + ",".join(texts) + "]",
        "ndjson": "\n".join(texts),
        "pretty": json.dumps(json.loads(to_json(events), parse_float=Decimal), indent=2, default=str),
    }[shape]

    decoded = check_fast_equals_slow(split_body(body.encode()))

    assert decoded is not None and len(decoded) == 3
    assert all(e.row is not None for e in decoded)


@pytest.mark.parametrize(
    ("number", "kept"),
    [
        ("1000.0010", "1000.0010"),
        ("42.1250", "42.1250"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
        ("7", "7"),
        ("1E+2", "1E+2"),
        ("1.5e-3", "0.0015"),
        ('"12.50"', "12.50"),
    ],
)
def test_decimals_keep_their_digits(number: str, kept: str) -> None:
    text = to_json(titan_event(uuid.uuid4(), 1, qty_t=Decimal(1))).replace('"qty_t": 1', f'"qty_t": {number}')

    (event,) = decode_texts([text]) or []

    assert event.row is not None and str(event.row.qty_t) == kept
    assert exact(event.row) == exact(titan_row(loads(text)))


def test_an_invalid_titan_event_is_keyed_with_no_row_as_the_slow_path_says() -> None:
    quota_id = uuid.uuid4()
    text = to_json(titan_event(quota_id, 3, direction="HOLD", tolerance_pct=Decimal("100.0001")))

    (event,) = check_fast_equals_slow([text]) or []

    assert event.key == EventKey(quota_id, 3, False) and event.row is None


def test_a_delete_has_a_key_and_no_row() -> None:
    quota_id = uuid.uuid4()
    (event,) = check_fast_equals_slow([to_json(titan_event(quota_id, 2, "DELETE"))]) or []

    assert event.key == EventKey(quota_id, 2, True) and event.row is None


def test_unknown_scalar_fields_inside_data_and_metadata_are_taken_as_the_slow_path_ignores_them() -> None:
    event = titan_event(uuid.uuid4(), 1, note="from Titan 9")
    event["metadata"]["trace"] = 12

    assert check_fast_equals_slow([to_json(event)]) is not None


def test_an_integer_of_the_most_digits_is_taken_and_one_more_declined() -> None:
    def text(digits: int) -> str:
        event = titan_event(uuid.uuid4(), 1)
        return to_json(event).replace('"source": "titan"', f'"source": {"9" * digits}')

    assert check_fast_equals_slow([text(MAX_NUMBER_DIGITS)]) is not None
    assert check_fast_equals_slow([text(19)]) is not None
    assert check_fast_equals_slow([text(MAX_NUMBER_DIGITS + 1)]) is None
    assert check_fast_equals_slow([text(5000)]) is None


# -- the typed path (msgspec types, quota_row's rules by conditions that imply them) ----------------

TYPED_CASES = {  # the change to GOOD: (taken by the typed path, has a row)
    "as it is": ("", "", True, True),
    "tolerance 100": ('"tolerance_pct": 5', '"tolerance_pct": 100', True, True),
    "tolerance 0": ('"tolerance_pct": 5', '"tolerance_pct": 0', True, True),
    "tolerance -0.0": ('"tolerance_pct": 5', '"tolerance_pct": -0.0', True, True),
    "tolerance null": ('"tolerance_pct": 5', '"tolerance_pct": null', True, True),
    "tolerance 100.0001": ('"tolerance_pct": 5', '"tolerance_pct": 100.0001', False, False),
    "tolerance -0.01": ('"tolerance_pct": 5', '"tolerance_pct": -0.01', False, False),
    "tolerance as text": ('"tolerance_pct": 5', '"tolerance_pct": "5"', False, True),
    "qty 0.001": ("100.000", "0.001", True, True),
    "qty 0": ("100.000", "0", False, False),
    "qty as text": ("100.000", '"100.000"', False, True),
    "qty of 18 digits": ("100.000", "9" * 18, True, True),
    "qty of 19 digits": ("100.000", "9" * 19, False, True),
    "qty 10**18, the least of 19 digits": ("100.000", str(10**18), False, True),
    "qty -18 digits": ("100.000", "-" + "9" * 18, False, False),
    "blank counterparty": ('"CP-1"', '"  "', False, False),
    "counterparty with a joiner (safe, not printable)": ('"CP-1"', '"C\\u200dP"', False, True),
    "counterparty with a bidi override": ('"CP-1"', '"C\\u202eP"', False, False),
    "empty incoterm": ('"incoterm_code": "CIF"', '"incoterm_code": ""', True, True),
    "null incoterm": ('"incoterm_code": "CIF"', '"incoterm_code": null', True, True),
    "incoterm with a line separator": ('"incoterm_code": "CIF"', '"incoterm_code": "C\\u2028"', False, False),
    "blank metal": ('"metal_code": "CU"', '"metal_code": " "', False, False),
    "offset PostgreSQL refuses": ("10:00:00Z", "10:00:00+20:00", False, False),
    "no offset": ('"updated_at": "2026-03-01T10:00:00Z"', '"updated_at": "2026-03-01T10:00:00"', True, True),
    "updated_at null": ('"updated_at": "2026-03-01T10:00:00Z"', '"updated_at": null', True, True),
    "month with a Z": ('"2026-03-15"', '"2026-03-15Z"', False, True),
    "not a real date": ('"2026-03-15"', '"2026-02-30"', False, False),
    "direction HOLD": ('"BUY"', '"HOLD"', False, False),
    "eventType in lower case": ('"UPDATE"', '"update"', False, False),
    "a field Titan does not send": ('"metal_code"', '"note": 1, "metal_code"', False, True),
    "no tolerance, incoterm, updated_at": (
        ', "tolerance_pct": 5, "incoterm_code": "CIF", "metal_code": "CU", '
        '"updated_at": "2026-03-01T10:00:00Z"',
        ', "metal_code": "CU"',
        True,
        True,
    ),
    "a delete": ('"UPDATE"', '"DELETE"', True, False),
    "version 0": ('"version": 4', '"version": 0', True, True),
    "the last version": ('"version": 4', f'"version": {MAX_VERSION}', True, True),
}


@pytest.mark.parametrize(("old", "new", "typed", "has_row"), TYPED_CASES.values(), ids=TYPED_CASES.keys())
def test_the_typed_path_or_quota_row_gives_the_slow_paths_row(
    old: str, new: str, typed: bool, has_row: bool
) -> None:
    text = GOOD.replace(old, new) if old else GOOD
    assert text != GOOD or not old

    (event,) = check_fast_equals_slow([text]) or []

    assert (_typed(text.encode()) is not None) == typed
    assert (event.row is not None) == has_row
    # by columns too: alone, and beside a delete (its columns None) and an event with every member
    delete = GOOD.replace('"UPDATE"', '"DELETE"').replace("6f1d8c52", "7f1d8c52")
    for texts in ([text], [text, delete], [GOOD.replace("6f1d8c52", "8f1d8c52"), text]):
        check_columns(texts)
        check_columns(["[" + ",".join(texts) + "]"])


def test_a_delete_without_its_fields_is_keyed_by_the_generic_path() -> None:
    data = '{"quota_id":"6f1d8c52-98a5-4d0e-9bbf-2f6b1f0c4b11"}'
    text = f'{{"eventType":"DELETE","data":{data},"metadata":{{"version":9}}}}'

    (event,) = check_fast_equals_slow([text]) or []

    assert _typed(text.encode()) is None and event.key.is_delete and event.row is None


def test_the_benchmark_events_all_take_the_typed_path() -> None:
    texts = generate(500, 500, first_version=2).texts(0, 500)

    assert all(_typed(text.encode()) is not None for text in texts)


def test_the_typed_path_counts_its_optional_members() -> None:
    duplicate = GOOD.replace('"source": "titan"', '"source": "titan", "source": "titan"')
    hidden = GOOD.replace('"timestamp": "2026-03-01T10:00:00Z", ', "").replace(
        '"source"', '"timestamp": 1, "source"'
    )

    assert check_fast_equals_slow([duplicate]) is None
    assert _typed(hidden.encode()) is None and check_fast_equals_slow([hidden]) is not None


# -- each decline -----------------------------------------------------------------------------------

GOOD = to_json(titan_event("6f1d8c52-98a5-4d0e-9bbf-2f6b1f0c4b11", 4))
# A float beyond the limits fails the decoder wherever it is; an integer is checked once decoded, so
# an earlier duplicate's is never seen: the duplicate checks are what refuses it.
TOO_LONG = "1" + "0" * MAX_NUMBER_DIGITS
DECLINED = {
    "duplicate key, the first value beyond the limits": GOOD.replace(
        '"qty_t": 100.000', f'"qty_t": {TOO_LONG}, "qty_t": 5'
    ),
    "duplicate key, both fine": GOOD.replace('"qty_t": 100.000', '"qty_t": 4, "qty_t": 5'),
    "duplicate key with an escaped name": GOOD.replace(
        '"qty_t": 100.000', f'"qty_t": {TOO_LONG}, "q\\u0074y_t": 5'
    ),
    "duplicate top-level key": GOOD.replace(
        '{"eventType": "UPDATE"', '{"eventType": "DELETE", "eventType": "UPDATE"'
    ),
    "whitespace before a colon": GOOD.replace('"qty_t": 100.000', '"qty_t" : 100.000'),
    "a duplicate key hidden by whitespace before its colon": GOOD.replace(
        '"qty_t": 100.000', f'"qty_t" : {TOO_LONG}, "qty_t": 5'
    ),
    "a tab before a colon": GOOD.replace('"qty_t": 100.000', '"qty_t"\t: 100.000'),
    "a duplicate key hidden by a carriage return before its colon": GOOD.replace(
        '"qty_t": 100.000', f'"qty_t"\r: {TOO_LONG}, "qty_t": 5'
    ),
    "a duplicate key hidden by a newline before its colon": GOOD.replace(
        '"qty_t": 100.000', f'"qty_t"\n: {TOO_LONG}, "qty_t": 5'
    ),
    "an escaped NUL in a member no rule reads": GOOD.replace('"titan"', '"ti\\u0000tan"'),
    "a string holding an escaped quote and a colon": GOOD.replace('"CP-1"', '"CP\\":1"'),
    "an escaped NUL": GOOD.replace('"CP-1"', '"CP\\u0000"'),
    "a lone surrogate escape": GOOD.replace('"CP-1"', '"CP\\ud800"'),
    "an exponent of 7 digits": GOOD.replace("100.000", "1e0000001"),
    "a number beyond the limits": GOOD.replace("100.000", "1e41"),
    "NaN": GOOD.replace("100.000", "NaN"),
    "a nested value in data": GOOD.replace('"qty_t": 100.000', '"qty_t": [100]'),
    "an object in metadata": GOOD.replace('"source": "titan"', '"source": {"a": 1}'),
    "an array as eventType": GOOD.replace('"eventType": "UPDATE"', '"eventType": ["UPDATE"]'),
    "a key beside Titan's": GOOD.replace('{"eventType"', '{"op": "c", "eventType"'),
    "no metadata": GOOD.split(', "metadata"')[0] + "}",
    "data not an object": GOOD.replace('"data": {', '"data": 5, "x": {'),
    "an unkeyable quota_id": GOOD.replace("6f1d8c52-98a5-4d0e-9bbf-2f6b1f0c4b11", "not-a-uuid"),
    "a version too large": GOOD.replace('"version": 4', f'"version": {2**63}'),
    "a version as a float": GOOD.replace('"version": 4', '"version": 4.0'),
    "wrapped": '{"schema": null, "payload": ' + GOOD + "}",
    "not JSON": GOOD[:-1],
    "trailing text": GOOD + " x",
}


@pytest.mark.parametrize("text", DECLINED.values(), ids=DECLINED.keys())
def test_declines(text: str) -> None:
    assert decode_texts([GOOD]) is not None

    assert check_fast_equals_slow([GOOD, text]) is None
    assert check_fast_equals_slow(["[" + GOOD + "," + text + "]"]) is None


@pytest.mark.parametrize(
    "value",
    [
        encode_event("debezium", uuid.uuid4(), 3, False, quota_columns(uuid.uuid4(), 3)).decode(),
        encode_event("flattened", uuid.uuid4(), 3, False, quota_columns(uuid.uuid4(), 3)).decode(),
        "null",
        '"a string"',
        "[[" + GOOD + "]]",
    ],
    ids=["debezium", "flattened", "tombstone", "string", "nested array"],
)
def test_other_formats_and_shapes_are_declined(value: str) -> None:
    assert check_fast_equals_slow([GOOD, value]) is None


def test_a_lone_surrogate_in_a_python_string_is_declined() -> None:
    assert decode_texts([GOOD.replace("CP-1", "CP\ud800")]) is None


def test_a_line_keeps_its_text_without_the_whitespace_around_it() -> None:
    texts = split_body(("  " + GOOD + " \r\n\t" + GOOD + "\r\n").encode())

    events = check_fast_equals_slow(texts)

    assert events is not None and [e.raw for e in events] == [GOOD, GOOD]


def test_an_array_after_json_whitespace_is_read_as_an_array() -> None:
    # store_events() hands the texts of its caller to parse_texts as they are: no split_body strips them.
    events = check_fast_equals_slow([" \t\r\n[" + GOOD + "]"])

    assert events is not None and [e.raw for e in events] == [GOOD]


def test_an_empty_body_is_read_by_columns_as_no_event() -> None:
    empty = EdgeColumns([], [], [], [], {name: [] for name in ROW_COLUMNS})

    assert decode_columns([]) == empty
    assert decode_columns(["[]"]) == empty
    assert decode_columns([" [ ] "]) == empty


def test_an_empty_array_costs_no_event() -> None:
    assert check_fast_equals_slow(["[]", "[ ]"]) == []


# -- where the fast path is used --------------------------------------------------------------------


def test_parse_body_gives_rows_for_titan_and_none_for_the_rest() -> None:
    titan = to_json(titan_event(uuid.uuid4(), 1))
    debezium = encode_event("debezium", uuid.uuid4(), 3, False, quota_columns(uuid.uuid4(), 3)).decode()

    fast = parse_body(("[" + titan + "," + titan.replace('"UPDATE"', '"DELETE"') + "]").encode())
    mixed = parse_body((titan + "\n" + debezium).encode())

    assert [row is not None for row in fast.rows] == [True, False]
    assert [row is not None for row in mixed.rows] == [True, False]
    assert exact(mixed.rows[0]) == exact(fast.rows[0])


def test_parse_texts_asks_the_fast_path_first_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, list[str]]] = []

    def recorded(name: str, decode: Any) -> Any:
        def asking(texts: list[str]) -> Any:
            asked.append((name, list(texts)))
            return decode(texts)

        return asking

    # the real ones, their calls recorded
    monkeypatch.setattr(inbox.ingest, "decode_columns", recorded("columns", decode_columns))
    monkeypatch.setattr(inbox.ingest, "decode_texts", recorded("events", decode_texts))

    fast = parse_texts([GOOD])
    assert asked == [("columns", [GOOD])]
    slow = parse_texts([GOOD], fast=False)
    assert asked == [("columns", [GOOD])]
    assert batch_outcome(fast) == batch_outcome(slow) and fast.rows[0] is not None
    invalid = GOOD.replace('"BUY"', '"HOLD"')  # the columns decline: the events answer
    parse_texts([invalid])
    assert asked[1:] == [("columns", [invalid]), ("events", [invalid])]


def test_a_keying_of_the_callers_own_keys_titan_events_too() -> None:
    def refused(item: Any) -> EventKey:
        raise UnkeyableEvent(f"not keyed here: {item['eventType']}")

    batch = parse_texts([GOOD], refused, partial=True)

    assert batch.keys == [] and [r.reason for r in batch.rejected] == ["not keyed here: UPDATE"]


def test_a_kafka_message_gets_its_row_on_either_path() -> None:
    origin = Origin("titan.quota", 0, 1)
    titan = to_json(titan_event(uuid.uuid4(), 1))
    spaced = titan.replace('"qty_t": ', '"qty_t" : ')  # declined: the slow path reads it

    fast, slow = classify(origin, titan.encode()), classify(origin, spaced.encode())

    assert decode_event(titan) is not None and decode_event(spaced) is None
    assert isinstance(fast, Event) and isinstance(slow, Event)
    assert fast.row is not None and exact(fast.row) == exact(slow.row)
    assert fast.text == titan
    assert parsed([fast, slow]).rows == [fast.row, slow.row]


def test_a_kafka_message_holding_an_array_is_left_to_the_slow_path() -> None:
    assert decode_event("[" + GOOD + "]") is None
    assert decode_event(GOOD) is not None


def test_a_decoded_event_is_not_tracked_by_the_garbage_collector() -> None:
    """Three tracked objects per event made collections a tenth of a consumer's CPU; a decoded event
    is a tree of JSON values, so no reference cycle can keep it alive (msgspec's gc=False)."""
    event = _TYPED.decode(GOOD.encode())

    assert not any(map(gc.is_tracked, (event, event.data, event.metadata)))
