"""Every parser, fed hostile input by hypothesis: it answers with a value or its own refusal, never
with another exception; and what it accepts is exactly what its parts would give on their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inbox.apply.prepare import typed_columns
from inbox.db.connect import _dumps, load_json
from inbox.events import MAX_NUMBER_DIGITS, EventKey, InvalidEvent, QuotaRow, UnkeyableEvent, number_problem
from inbox.formats import interpret, key_event
from inbox.ingest import MAX_NESTING, BadBatch, loads, parse_body, parse_texts, split_body
from inbox.kafka.batch import Event, Origin, Reject, classify
from tests.fuzz_strategies import (
    EXAMPLES,
    Body,
    Item,
    Raw,
    bodies,
    items,
    json_values,
    mutated_events,
    render,
    valid_events,
)
from tests.helpers import titan_event

T = TypeVar("T")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(test: Callable[..., None]) -> Callable[..., None]:
    """Hypothesis settings for these tests, and the soak mark: INBOX_SOAK=1 runs many more examples."""
    marked: Callable[..., None] = pytest.mark.timeout(1800 if EXAMPLES > 150 else 300)(
        pytest.mark.soak(FUZZ(test))
    )
    return marked


def _python(value: Any) -> Any:
    """A value tree as the worker may find it in a payload (numbers int or Decimal; NaN and the like
    only reach it through the sink's text columns, but must not crash it either)."""
    if isinstance(value, Raw):
        try:
            return json.loads(value, parse_float=Decimal, parse_int=Decimal, parse_constant=Decimal)
        except RecursionError:
            return _nested(1000)
        except InvalidOperation:  # 1e9999999999999999999: beyond Decimal itself; as numeric text
            return str(value)
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def _attempt(call: Callable[[], T], refusal: type[Exception]) -> tuple[T | None, Exception | None]:
    """(result, None), or (None, the refusal); any other exception propagates and fails the test."""
    try:
        return call(), None
    except refusal as exc:
        return None, exc


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _assert_storable(value: Any) -> None:
    """What loads() accepts, PostgreSQL can hold exactly: no float, no NUL, bounded nesting."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        assert depth <= MAX_NESTING
        assert not isinstance(item, float)
        if isinstance(item, Decimal):
            assert number_problem(item) is None
        elif isinstance(item, int) and not isinstance(item, bool):
            assert len(str(abs(item))) <= MAX_NUMBER_DIGITS
        elif isinstance(item, str):
            assert _storable_text(item)
        elif isinstance(item, dict):
            assert all(_storable_text(k) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _storable_text(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


# -- inbox.ingest -----------------------------------------------------------------------------------


@fuzz
@given(st.one_of(st.text(max_size=200), json_values.map(render)))
def test_loads_gives_storable_json_or_a_value_error(text: str) -> None:
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        return
    _assert_storable(value)


def _alone(item: Item, shape: str) -> list[EventKey] | None:
    """The keys of one item parsed on its own, or None when it is refused. In an array it is an
    element; as a line or a whole body, an array contributes its elements."""
    text = render(item.value)
    try:
        return parse_texts(["[" + text + "]" if shape == "array" else text]).keys
    except BadBatch:
        return None


@fuzz
@given(bodies(), st.booleans())
def test_a_body_is_keyed_whole_exactly_as_its_items_alone_or_refused_whole(body: Body, ndjson: bool) -> None:
    batch, refused = _attempt(lambda: parse_body(body.raw, ndjson=ndjson), BadBatch)
    alone = [_alone(item, body.shape) for item in body.items]
    if isinstance(refused, BadBatch):
        assert refused.problems
        assert all((index is None or index >= 0) and reason for index, reason in refused.problems)
        if body.items and not refused.unparseable:
            assert any(keys is None for keys in alone)
        return
    assert batch is not None
    stored = json.loads(batch.array_text, parse_float=Decimal)
    assert len(stored) == len(batch.keys)
    assert [key_event(v) for v in stored] == batch.keys
    if body.items:
        assert all(keys is not None for keys in alone)
        assert batch.keys == [key for keys in alone if keys is not None for key in keys]


@fuzz
@given(st.lists(items, min_size=1, max_size=5), st.sampled_from(["\n", "\r\n", "\n\n"]))
def test_ndjson_of_keyable_items_is_keyed_line_by_line(chosen: list[Item], newline: str) -> None:
    """NDJSON lines are separated by newlines only: a string may hold any other character, raw."""
    lines = [Item(Raw(json.dumps(_python(item.value), ensure_ascii=False, default=str))) for item in chosen]
    text = newline.join(map(render, (line.value for line in lines)))
    # A lone surrogate has no UTF-8 form: such a body is not UTF-8 (400), which other tests cover.
    assume(all(not "\ud800" <= char <= "\udfff" for char in text))
    expected = [_alone(line, "ndjson") for line in lines]
    body = text.encode("utf-8")

    batch, refused = _attempt(lambda: parse_body(body, ndjson=True), BadBatch)

    if refused is not None:
        assert any(keys is None for keys in expected)
    else:
        assert batch is not None and all(keys is not None for keys in expected)
        assert batch.keys == [key for keys in expected if keys is not None for key in keys]


@fuzz
@given(st.binary(max_size=400), st.booleans())
def test_split_body_gives_texts_or_a_bad_batch(raw: bytes, ndjson: bool) -> None:
    texts, refused = _attempt(lambda: split_body(raw, ndjson=ndjson), BadBatch)

    assert (isinstance(refused, BadBatch) and refused.unparseable) or (
        texts and all(t.strip() for t in texts)
    )


# -- inbox.formats and the worker's preparation -----------------------------------------------------


@fuzz
@given(st.one_of(json_values, items.map(lambda item: item.value)).map(_python))
def test_key_event_keys_or_says_why(value: Any) -> None:
    key, refused = _attempt(lambda: key_event(value), UnkeyableEvent)

    assert str(refused) if key is None else isinstance(key.quota_id, uuid.UUID) and 0 <= key.version < 2**63


@fuzz
@given(st.one_of(json_values, mutated_events().map(lambda item: item.value)).map(_python))
def test_interpret_returns_a_row_or_every_reason(value: Any) -> None:
    row, refused = _attempt(lambda: interpret(value), InvalidEvent)

    if isinstance(refused, InvalidEvent):
        assert refused.reasons and all(isinstance(r, str) and r for r in refused.reasons)
    else:
        assert row is None or isinstance(row, QuotaRow)


@fuzz
@given(valid_events())
def test_valid_events_of_every_format_interpret_to_their_row(item: Any) -> None:
    row = interpret(_python(item.value))

    assert isinstance(row, QuotaRow)
    assert key_event(item.value).quota_id == item.quota_id


@fuzz
@given(st.one_of(json_values, mutated_events().map(lambda item: item.value)), st.booleans())
def test_preparing_any_payload_never_crashes_validation(value: Any, is_delete: bool) -> None:
    """A crash inside validation would dead-letter the event as 'unprocessable': a bug, not bad input.

    The worker reads the payload as the JSON text PostgreSQL prints; text it cannot read is 'unreadable'.
    """
    text = render(value)
    try:
        load_json(text)
        readable = True
    except (ValueError, ArithmeticError, RecursionError):
        readable = False
    row = {"quota_id": uuid.uuid4(), "version": 1, "is_delete": is_delete, "payload": text}

    prepared = typed_columns(row)

    assert prepared.get("error_class") in ((None, "invalid") if readable else ("unreadable",))
    json.loads(_dumps(prepared))  # it can be sent to query type_events


# -- the Kafka message classifier -------------------------------------------------------------------


@fuzz
@given(
    st.one_of(
        st.none(),
        st.binary(max_size=300),
        json_values.map(lambda v: render(v).encode("utf-8", "surrogatepass")),
    )
)
def test_a_kafka_message_is_an_event_a_reject_or_skipped(value: bytes | None) -> None:
    origin = Origin("titan.quota", 0, 42)

    outcome = classify(origin, value)

    assert isinstance(outcome, Event | Reject) or outcome in ("tombstone", "truncate")
    if isinstance(outcome, Reject):
        assert outcome.raw == value and outcome.reason
        # classify() turns what nothing foresaw into a reject too (the consumer must survive it),
        # but that is a bug to find here, not a refusal
        assert not outcome.reason.startswith("could not be read"), outcome.reason


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029"], ids=["NEL", "LS", "PS"])
def test_a_string_may_hold_a_unicode_line_separator_raw_in_ndjson(separator: str) -> None:
    """The explicit case behind the property above: str.splitlines() cut such an event in two."""
    events = [
        json.dumps(
            titan_event(uuid.uuid4(), 1, counterparty_id=f"A{separator}B"), ensure_ascii=False, default=str
        )
        for _ in range(2)
    ]

    batch = parse_body("\n".join(events).encode(), ndjson=True)

    assert len(batch.keys) == 2
    assert json.loads(batch.array_text)[0]["data"]["counterparty_id"] == f"A{separator}B"
