"""Parsing request bodies into keyed batches: strict JSON, body shapes, all-or-nothing; no database."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from inbox.ingest import MAX_NESTING, BadBatch, ParsedBatch, loads, parse_body, parse_texts, split_body
from tests.helpers import titan_event, to_json


def _event(version: int = 1, quota_id: uuid.UUID | None = None, **data: Any) -> str:
    return to_json(titan_event(quota_id or uuid.uuid4(), version, "INSERT", **data))


def _bad_batch(body: bytes, *, ndjson: bool = False) -> BadBatch:
    with pytest.raises(BadBatch) as caught:
        parse_body(body, ndjson=ndjson)
    return caught.value


def _stored(batch: ParsedBatch) -> list[Any]:
    """The events exactly as the batch would hand them to PostgreSQL."""
    value = loads(batch.array_text)
    assert isinstance(value, list)
    return value


# -- loads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_loads_refuses_non_finite_constants(constant: str) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        loads(f'{{"qty_t": {constant}}}')


def test_loads_reads_decimals_exactly() -> None:
    value = loads('{"a": 1250.500, "b": 0.1, "c": 1e-3, "d": 12345678901234567890.123456789012345678}')
    assert value == {
        "a": Decimal("1250.500"),
        "b": Decimal("0.1"),
        "c": Decimal("0.001"),
        "d": Decimal("12345678901234567890.123456789012345678"),
    }
    assert str(value["a"]) == "1250.500"
    assert all(isinstance(v, Decimal) for v in value.values())


def test_loads_keeps_integers_as_int() -> None:
    value = loads('{"version": 9223372036854775807, "n": -3}')
    assert value == {"version": 2**63 - 1, "n": -3}
    assert type(value["version"]) is int


def test_loads_nesting_limit() -> None:
    at_limit = "[" * MAX_NESTING + "]" * MAX_NESTING
    too_deep = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    assert MAX_NESTING == 64
    loads(at_limit)
    with pytest.raises(ValueError, match="nested deeper than 64"):
        loads(too_deep)
    with pytest.raises(ValueError, match="nested deeper"):
        loads('{"a":' * 65 + "1" + "}" * 65)


def test_loads_refuses_nesting_too_deep_for_the_parser() -> None:
    with pytest.raises((ValueError, RecursionError)):
        loads("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "text",
    ['"a\\u0000b"', '{"k": "\\u0000"}', '{"k\\u0000": 1}', '[["x", "\\u0000"]]'],
    ids=["string", "value", "key", "nested"],
)
def test_loads_refuses_nul(text: str) -> None:
    with pytest.raises(ValueError, match="u0000"):
        loads(text)


@pytest.mark.parametrize("text", ["1e999999", "-1e999999", "1e-99999", "1E+200000"])
def test_loads_refuses_exponents_postgresql_cannot_hold(text: str) -> None:
    with pytest.raises(ValueError, match="beyond the range an event may hold"):
        loads(f'{{"qty_t": {text}}}')


def test_loads_refuses_huge_integers() -> None:
    with pytest.raises(ValueError, match="digits"):
        loads("9" * 5000)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a': 1}", "nul", "1 2"])
def test_loads_refuses_invalid_json(text: str) -> None:
    with pytest.raises(ValueError, match=r"Expecting|Extra data|Unterminated|delimiter"):
        loads(text)


# -- split_body -------------------------------------------------------------------------------------


def test_single_object() -> None:
    event = _event()
    assert split_body(event.encode()) == [event]


def test_array_is_one_text() -> None:
    body = "[" + _event() + ", " + _event() + "]"
    assert split_body(body.encode()) == [body]


def test_pretty_printed_array_is_one_text() -> None:
    body = json.dumps([json.loads(_event(qty_t="1")), json.loads(_event(qty_t="2"))], indent=2)
    assert len(split_body(body.encode())) == 1


def test_pretty_printed_object_spanning_lines_is_one_text() -> None:
    body = json.dumps(json.loads(_event(qty_t="1.5")), indent=4)
    assert body.count("\n") > 5
    texts = split_body(body.encode())
    assert texts == [body]


@pytest.mark.parametrize("ndjson", [True, False])
def test_ndjson_with_or_without_its_content_type(ndjson: bool) -> None:
    events = [_event() for _ in range(3)]
    assert split_body("\n".join(events).encode(), ndjson=ndjson) == events


def test_ndjson_blank_lines_and_crlf_are_ignored() -> None:
    events = [_event() for _ in range(2)]
    body = "\n\n" + events[0] + "\r\n   \r\n\n" + events[1] + "\r\n\n"
    assert [t.strip() for t in split_body(body.encode())] == events


def test_single_line_with_ndjson_content_type() -> None:
    event = _event()
    assert split_body((event + "\n").encode(), ndjson=True) == [event]


@pytest.mark.parametrize("body", [b"", b" ", b"\n\n", b"\r\n\t "])
def test_empty_body(body: bytes) -> None:
    with pytest.raises(BadBatch) as caught:
        split_body(body)
    assert caught.value.unparseable
    assert caught.value.problems == [(None, "body is empty")]


@pytest.mark.parametrize("body", [b"\xff", b'{"a": "\xc3"}', b'{"a": "\xed\xa0\x80"}'])
def test_body_that_is_not_utf8(body: bytes) -> None:
    with pytest.raises(BadBatch) as caught:
        split_body(body)
    assert caught.value.unparseable
    [(index, reason)] = caught.value.problems
    assert index is None
    assert "UTF-8" in reason


def test_body_with_a_raw_nul() -> None:
    with pytest.raises(BadBatch, match="NUL"):
        split_body(b'{"a": "x\x00y"}')


# -- parse_texts / parse_body -----------------------------------------------------------------------


def test_array_keys_every_element_in_order() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    body = "[" + ",".join(_event(i + 1, q) for i, q in enumerate(ids)) + "]"

    batch = parse_body(body.encode())

    assert [(k.quota_id, k.version) for k in batch.keys] == [(q, i + 1) for i, q in enumerate(ids)]
    assert len(batch) == 3
    assert [e["data"]["quota_id"] for e in _stored(batch)] == [str(q) for q in ids]


def test_ndjson_keys_every_line() -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    batch = parse_body("\n".join(_event(1, q) for q in ids).encode())
    assert [k.quota_id for k in batch.keys] == ids
    assert len(_stored(batch)) == 4


def test_ndjson_line_holding_an_array_contributes_its_elements() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    body = "[" + _event(1, a) + "," + _event(1, b) + "]\n" + _event(1, c)

    batch = parse_body(body.encode(), ndjson=True)

    assert [k.quota_id for k in batch.keys] == [a, b, c]
    assert [e["data"]["quota_id"] for e in _stored(batch)] == [str(a), str(b), str(c)]


def test_the_stored_text_keeps_the_original_digits() -> None:
    event = _event(qty_t=Decimal("1250.500"), tolerance_pct=Decimal("0.10"))
    batch = parse_body(event.encode())
    assert "1250.500" in batch.array_text
    assert "0.10" in batch.array_text
    [stored] = _stored(batch)
    assert str(stored["data"]["qty_t"]) == "1250.500"


def test_empty_array_is_an_empty_batch() -> None:
    for body in (b"[]", b"[ ]", b"[\n]"):
        batch = parse_body(body)
        assert batch.keys == []
        assert _stored(batch) == []


def test_pretty_printed_object_is_one_event() -> None:
    quota_id = uuid.uuid4()
    body = json.dumps(json.loads(_event(5, quota_id, qty_t="1.5")), indent=2)
    batch = parse_body(body.encode())
    assert [(k.quota_id, k.version) for k in batch.keys] == [(quota_id, 5)]


def test_unkeyable_items_are_named_by_index_and_nothing_is_returned() -> None:
    no_version = json.loads(_event())
    del no_version["metadata"]["version"]
    items = [
        _event(),
        json.dumps(no_version),
        _event(quota_id=None).replace('"version": 1', '"version": "1"'),
        _event(),
        '"text"',
        _event().replace('"version": 1', '"version": true'),
    ]

    caught = _bad_batch(("[" + ",".join(items) + "]").encode())

    assert not caught.unparseable
    assert [index for index, _ in caught.problems] == [1, 2, 4, 5]
    reasons = dict(caught.problems)
    assert "version" in str(reasons[1])
    assert "version" in str(reasons[2])
    assert "JSON object" in str(reasons[4])
    assert "version" in str(reasons[5])
    assert "item 1:" in str(caught)


def test_unkeyable_ndjson_line_is_named_by_its_index() -> None:
    lines = [_event(), _event(), _event().replace('"quota_id": "', '"quota_id": "x')]
    caught = _bad_batch("\n".join(lines).encode(), ndjson=True)
    assert not caught.unparseable
    [(index, reason)] = caught.problems
    assert index == 2
    assert "quota_id" in reason


def test_indexes_count_the_elements_of_array_lines() -> None:
    bad = _event().replace('"version": 1', '"version": -1')
    body = "[" + _event() + "," + _event() + "]\n" + bad
    caught = _bad_batch(body.encode(), ndjson=True)
    assert [index for index, _ in caught.problems] == [2]


def test_unparseable_ndjson_lines_are_named_by_line() -> None:
    lines = [_event(), "{not json", _event(), '{"qty_t": NaN}']
    caught = _bad_batch("\n".join(lines).encode(), ndjson=True)
    assert caught.unparseable
    assert [index for index, _ in caught.problems] == [1, 3]
    assert all(reason.startswith("not valid JSON") for _, reason in caught.problems)


def test_an_unparseable_line_wins_over_unkeyable_items() -> None:
    lines = ['"unkeyable"', "{broken", _event()]
    caught = _bad_batch("\n".join(lines).encode(), ndjson=True)
    assert caught.unparseable
    assert [index for index, _ in caught.problems] == [1]


def test_single_unparseable_body_has_no_index() -> None:
    caught = _bad_batch(b'{"eventType": "INSERT", "data": {')
    assert caught.unparseable
    [(index, reason)] = caught.problems
    assert index is None
    assert reason.startswith("not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_make_the_body_unparseable(constant: str) -> None:
    event = _event(qty_t=Decimal(1)).replace('"qty_t": 1', f'"qty_t": {constant}')
    caught = _bad_batch(("[" + _event() + "," + event + "]").encode())
    assert caught.unparseable


def test_too_deep_nesting_makes_the_body_unparseable() -> None:
    deep = json.loads(_event())
    deep["data"]["extra"] = json.loads("[" * 70 + "]" * 70)
    caught = _bad_batch(json.dumps(deep).encode())
    assert caught.unparseable
    assert "nested deeper" in caught.problems[0][1]


def test_extremely_deep_nesting_is_refused_not_crashed() -> None:
    caught = _bad_batch(b"[" * 100_000 + b"]" * 100_000)
    assert caught.unparseable


def test_nul_escape_makes_the_body_unparseable() -> None:
    caught = _bad_batch(_event(counterparty_id="A@B").replace("@", "\\u0000").encode())
    assert caught.unparseable


def test_parse_texts_with_raw_event_strings() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    batch = parse_texts([_event(1, a), _event(2, b)])
    assert [(k.quota_id, k.version) for k in batch.keys] == [(a, 1), (b, 2)]
    assert len(_stored(batch)) == 2


def test_parse_texts_single_bad_text_has_no_index() -> None:
    with pytest.raises(BadBatch) as caught:
        parse_texts(["{oops"])
    assert caught.value.problems[0][0] is None


def test_keys_mark_deletes() -> None:
    quota_id = uuid.uuid4()
    body = to_json(titan_event(quota_id, 3, "UPDATE")) + "\n" + to_json(titan_event(quota_id, 3, "DELETE"))
    batch = parse_body(body.encode())
    assert [k.is_delete for k in batch.keys] == [False, True]
