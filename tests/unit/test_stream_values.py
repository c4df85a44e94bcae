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


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[1,]", (1, "not valid JSON: a ',' before ']'")),
        ("[1, 2", (2, "not valid JSON: the array is not closed (']' missing at the end)")),
        ("[", (0, "not valid JSON: the array is not closed (']' missing at the end)")),
        ("[1 2]", (1, "not valid JSON: expected ',' or ']' after an element of the array")),
        (
            "[" + "1" * 1001 + "]",
            (0, "not valid JSON: number " + "1" * 40 + "... has more than 1000 digits"),
        ),
        ('[1, 2, "ab\xff"]', (2, "not UTF-8: invalid start byte near byte 10")),
        ('["caf\xc3', (0, "not UTF-8: unexpected end of data near byte 6")),
    ],
)
def test_each_refusal_is_the_whole_body_named_at_its_event(body: str, problem: tuple[int, str]) -> None:
    raw = body.encode("latin-1")  # \xff and \xc3 as single bytes: not UTF-8
    for chunk_size in (4, 1 << 20):
        with pytest.raises(BadBatch) as caught:
            read(raw, chunk_size)
        # bytes that are not UTF-8 are found as they are read: in one chunk, before the first event
        index = 0 if chunk_size > len(raw) and "UTF-8" in problem[1] else problem[0]
        assert caught.value.problems == [(index, problem[1])]
        assert caught.value.unparseable is True


def test_arrays_back_to_back_and_empty_ones_between() -> None:
    assert read("[1][2]") == [1, 2]
    assert read("[][3]") == [3]
    assert read("[4]\n[]\n[5]", chunk_size=2) == [4, 5]


class CountedReads(io.BytesIO):
    """A file that records the size of each read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int | None] = []

    @property
    def reads(self) -> int:
        return len(self.sizes)

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(size)
        return super().read(size)


def test_a_value_cut_by_the_buffer_is_read_on_up_to_the_largest_value() -> None:
    first, second = '"' + "a" * 38 + '"', '"' + "b" * 38 + '"'
    body = CountedReads(f"[{first},{second}]".encode())
    # the second value starts 41 characters into a buffer of 64: 23 of them held, 40 needed, 70 allowed;
    # reading on asks for as much as is unread (23), at least a chunk
    assert list(stream_values(body, chunk_size=64, max_value_chars=70)) == ["a" * 38, "b" * 38]
    assert set(body.sizes) == {64}
    for chunk_size in (16, 30):  # a value of 40 characters, 30 allowed: refused, the buffer full or not
        with pytest.raises(BadBatch) as caught:
            list(stream_values(io.BytesIO(first.encode()), chunk_size=chunk_size, max_value_chars=30))
        assert caught.value.problems[0][0] == 0


def test_a_value_longer_than_a_chunk_takes_a_logarithmic_number_of_reads() -> None:
    stream = CountedReads(('"' + "x" * 1_000_000 + '"').encode())
    assert list(stream_values(stream, chunk_size=1024)) == ["x" * 1_000_000]
    assert stream.reads < 30  # doubling: about 12; chunk by chunk it would be about 1000
    # a number may go on in the next chunk: read on the same way
    stream = CountedReads(("1" * 900).encode())
    assert list(stream_values(stream, chunk_size=8)) == [int("1" * 900)]
    assert stream.reads < 15  # doubling: about 9; chunk by chunk it would be about 113
