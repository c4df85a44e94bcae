"""ingest.stream_values: a file of events read as a stream, parsed exactly as loads() parses a text."""

from __future__ import annotations

import io
import itertools
from decimal import Decimal
from typing import Any

import pytest

from inbox.ingest import BadBatch, loads, stream_values

EVENTS = [
    {"eventType": "INSERT", "data": {"quota_id": "a", "qty_t": Decimal("1.2345678901234567890123")}},
    {"op": "r", "after": {"qty_t": "12.500", "note": "caf\u00e9 \u2028 [,]"}},
    {"quota_id": "b", "version": 12345678901234567890, "__deleted": "false"},
]
TEXTS = [
    '{"eventType": "INSERT", "data": {"quota_id": "a", "qty_t": 1.2345678901234567890123}}',
    '{"op": "r", "after": {"qty_t": "12.500", "note": "caf\u00e9 \u2028 [,]"}}',
    '{"quota_id": "b", "version": 12345678901234567890, "__deleted": "false"}',
]
BODIES = {
    "array": "[" + ",".join(TEXTS) + "]",
    "pretty array": "[\n  " + ",\n  ".join(TEXTS) + "\n]\n",
    "ndjson": "\n".join(TEXTS) + "\n",
    "ndjson with CRLF and blank lines": "\r\n".join(TEXTS) + "\r\n\r\n",
    "arrays on lines": "[" + TEXTS[0] + "]\n[" + ",".join(TEXTS[1:]) + "]",
}


def read(body: str | bytes, chunk_size: int = 1 << 20) -> list[Any]:
    raw = body.encode() if isinstance(body, str) else body
    return list(stream_values(io.BytesIO(raw), chunk_size=chunk_size))


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("shape", list(BODIES))
def test_every_shape_gives_the_events_exactly_at_any_chunk_size(shape: str, chunk_size: int) -> None:
    values = read(BODIES[shape], chunk_size)
    assert values == EVENTS
    assert values == [loads(t) for t in TEXTS]
    # exact digits, even when a number was cut by a chunk boundary
    assert str(values[0]["data"]["qty_t"]) == "1.2345678901234567890123"


def test_a_single_value_and_an_empty_array() -> None:
    assert read(TEXTS[2]) == [EVENTS[2]]
    assert read("  [ ]  ") == []
    assert read("") == []
    assert read("null\n") == [None]  # a tombstone: the caller skips it


def test_a_number_at_the_end_of_a_chunk_is_not_cut() -> None:
    assert read("[12345, 678]", chunk_size=3) == [12345, 678]
    assert read("12345\n678", chunk_size=2) == [12345, 678]


@pytest.mark.parametrize(
    ("body", "index", "reason"),
    [
        ("[" + TEXTS[0] + ",]", 1, "a ',' before ']'"),
        ("[" + TEXTS[0] + "," + TEXTS[1], 2, "the array is not closed"),
        ("[" + TEXTS[0] + " " + TEXTS[1] + "]", 1, "expected ',' or ']'"),
        (TEXTS[0] + "\n" + TEXTS[1] + "\n{oops}\n" + TEXTS[2], 2, "not valid JSON"),
        ('[{"qty_t": NaN}]', 0, "NaN is not valid JSON"),
        ('{"a": "nul \\u0000"}', 0, "PostgreSQL cannot store"),
        ('[{"a": 1e999999999}]', 0, "has an exponent of more than 6 digits"),
    ],
)
def test_bad_json_names_the_event(body: str, index: int, reason: str) -> None:
    for chunk_size in (3, 1 << 20):
        with pytest.raises(BadBatch) as caught:
            read(body, chunk_size)
        assert caught.value.problems[0][0] == index
        assert reason in caught.value.problems[0][1]


def test_an_error_in_a_large_file_fails_fast() -> None:
    """The reader reads on when a value may only be cut by the end of its buffer; for a real error
    it gives up after reading as much again as it holds, doubling, not chunk by chunk."""
    body = "{oops}\n" + TEXTS[2] * 200_000  # 15 MB after the error
    with pytest.raises(BadBatch, match="not valid JSON"):
        read(body, chunk_size=1024)


def test_bytes_that_are_not_utf8_are_named() -> None:
    with pytest.raises(BadBatch, match="not UTF-8"):
        read(b'[{"a": "\xff"}]')


class Endless(io.RawIOBase):
    """A stream of NDJSON events that never ends; counts what was read."""

    line = (TEXTS[2] + "\n").encode()

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        start = self.served % len(self.line)
        chunk = (self.line * (len(buffer) // len(self.line) + 2))[start : start + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.served += len(chunk)
        return len(chunk)


def test_values_come_as_they_are_read_never_the_whole_file() -> None:
    stream = Endless()
    first = list(itertools.islice(stream_values(io.BufferedReader(stream), chunk_size=4096), 1000))
    assert first == [EVENTS[2]] * 1000
    assert stream.served < 200_000  # about 80 bytes per event read, plus one chunk ahead
