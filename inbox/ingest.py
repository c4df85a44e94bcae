"""Ingest: parse a request or message batch and key every event (inbox/store.py stores it).

Storage keeps each event as PostgreSQL parsed it from the original text, so numbers keep their
exact digits; Python parses the same text (decimals as Decimal) only to key and check it. This
module needs no database (the import-linter contract "pure core" holds it to that).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO, Literal

from inbox.edge import JSON_WHITESPACE, EdgeColumns, decode_columns, decode_texts
from inbox.events import EventKey, QuotaRow, UnkeyableEvent, json_decimal, json_int
from inbox.formats import key_event, skip_reason, titan_row

Source = Literal["http", "kafka", "sink", "replay", "reconcile"]
MAX_NESTING = 64
_NUL_ESCAPE = "\\u0000"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The only way a decoded string can hold a lone UTF-16 surrogate is an escape \uD800-\uDFFF.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadBatch(ValueError):
    """Nothing of the batch was stored. problems: (index or None for the whole body, reason)."""

    def __init__(self, problems: list[tuple[int | None, str]], *, unparseable: bool) -> None:
        self.problems = problems
        self.unparseable = unparseable
        super().__init__("; ".join(f"item {i}: {r}" if i is not None else r for i, r in problems))


@dataclass(frozen=True)
class Rejected:
    """An item of a batch that could not be keyed: its index, why, and its text verbatim."""

    index: int
    reason: str
    raw: str = field(repr=False)


@dataclass(frozen=True)
class ParsedBatch:
    """Events ready to store: their keys, and the batch as one JSON array text. skipped counts the
    tombstones and truncates left out; rejected holds the items that could not be keyed, left out
    of the events when the caller allowed a partial batch (store() keeps them in inbox.rejects).
    rows: per event (beside keys) the quota row it sets when it is a valid Titan upsert, else None
    (a delete, an invalid event, another format: the worker decides those); empty when not known.
    columns: the same events column by column when the edge read them so (inbox/edge.py,
    decode_columns); the store sends those as they are, as long as rows are still the columns' own."""

    keys: list[EventKey]
    array_text: str = field(repr=False)
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    rows: list[QuotaRow | None] = field(default_factory=list, repr=False)
    columns: EdgeColumns | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_columns(cls, columns: EdgeColumns, array_text: str) -> ParsedBatch:
        """A batch read column by column: its keys and rows are built from the columns when first
        read (__getattr__), which storing it never does."""
        batch = object.__new__(cls)
        for name, value in (
            ("array_text", array_text),
            ("skipped", 0),
            ("rejected", []),
            ("columns", columns),
        ):
            object.__setattr__(batch, name, value)
        return batch

    def __getattr__(self, name: str) -> Any:
        """keys and rows of a batch made by of_columns (only called when they are not yet set)."""
        columns = self.__dict__.get("columns")
        if columns is None or name not in ("keys", "rows"):
            raise AttributeError(name)
        value = columns.keys() if name == "keys" else columns.rows
        object.__setattr__(self, name, value)
        return value

    def __len__(self) -> int:
        return len(self.columns) if self.columns is not None else len(self.keys)

    def of_its_columns(self) -> bool:
        """Whether the columns still stand for the batch (its rows, if read, are theirs)."""
        return self.columns is not None and ("rows" not in self.__dict__ or self.rows is self.columns.rows)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """Strict JSON: decimals exact, NaN/Infinity refused, nesting bounded."""
    value = json.loads(text, parse_float=json_decimal, parse_int=json_int, parse_constant=_reject_constant)
    _check_structure(value, text)
    return value


def _check_structure(value: Any, text: str) -> None:
    """Bounded nesting, and no NUL or lone surrogate in any string: PostgreSQL's jsonb cannot hold
    \\u0000, and a lone surrogate (\\ud800) is no character at all.

    The text answers these cheaply, nearly always, so the walk (a quarter of the ingest's CPU when it
    visited every value) runs only when it must: strict JSON has no raw control character inside a
    string, so a NUL or a surrogate can only come from an escape; and a value cannot nest deeper than
    the number of brackets its text opens. Without such an escape the walk visits containers only.
    """
    may_hold_bad_text = _NUL_ESCAPE in text or _SURROGATE_ESCAPE.search(text) is not None
    if not may_hold_bad_text and text.count("{") + text.count("[") <= MAX_NESTING:
        return
    stack: list[tuple[Any, int]] = [([value], 0)]  # wrapped: a scalar at the top is checked too
    while stack:
        container, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"nested deeper than {MAX_NESTING} levels")
        if may_hold_bad_text:
            _check_strings(container)
        children = container.values() if isinstance(container, dict) else container
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _check_strings(container: dict[str, Any] | list[Any]) -> None:
    """No NUL or lone surrogate in the keys or in the string values of one container."""
    if isinstance(container, dict):
        strings = [*container, *(v for v in container.values() if isinstance(v, str))]
    else:
        strings = [v for v in container if isinstance(v, str)]
    for string in strings:
        if "\x00" in string:
            raise ValueError("a string contains \\u0000, which PostgreSQL cannot store")
        if _LONE_SURROGATE.search(string):
            raise ValueError("a string contains a lone UTF-16 surrogate (\\ud800-\\udfff): not text")


def split_body(body: bytes, *, ndjson: bool = False) -> list[str]:
    """The raw event texts of a body: one JSON value, a JSON array, or NDJSON (one value per line).

    Without an NDJSON content type, a body is NDJSON when it has several lines and its first line is
    a JSON value on its own; a pretty-printed object's first line ("{") is not.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBatch(
            [(None, f"body is not UTF-8: {exc.reason} at byte {exc.start}")], unparseable=True
        ) from exc
    if "\x00" in text:
        raise BadBatch([(None, "body contains a NUL character")], unparseable=True)
    stripped = text.strip()
    if not stripped:
        raise BadBatch([(None, "body is empty")], unparseable=True)
    # "\n" only: str.splitlines() also splits at U+0085, U+2028 and U+2029, which a JSON string may
    # hold raw, and would cut such an event in two. A "\r" left at a line's end is JSON whitespace.
    lines = [line for line in stripped.split("\n") if line.strip()]
    if len(lines) > 1 and (ndjson or _is_json(lines[0])):
        return lines
    return [stripped]


def _is_json(text: str) -> bool:
    try:
        loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def parse_texts(
    texts: Sequence[str],
    key: Callable[[Any], EventKey] = key_event,
    *,
    partial: bool = False,
    fast: bool = True,
) -> ParsedBatch:
    """Parse and key events; a text that is a JSON array contributes its elements.

    Tombstones and truncates (formats.skip_reason) are left out and counted. Text that is not JSON
    makes the whole batch a BadBatch. An item that cannot be keyed does too, naming each bad item by
    its index, unless partial: then it is left out of the events and kept, with its reason and text,
    in ParsedBatch.rejected (even when no item is left to store).

    Titan events take the fast path (inbox/edge.py) unless fast is False or key is another keying;
    when it declines, this slow path decides, with the same result wherever both answer.
    """
    if fast and key is key_event:
        columns = decode_columns(texts)
        if columns is not None:
            return ParsedBatch.of_columns(columns, _columns_array_text(texts))
        events = decode_texts(texts)
        if events is not None:
            return ParsedBatch(
                keys=[event.key for event in events],
                array_text=_array_text([_part(text) for text in texts]),
                rows=[event.row for event in events],
            )
    problems: list[tuple[int | None, str]] = []
    items: list[Any] = []
    raw_parts: list[str] = []
    spans: list[tuple[int, int, bool]] = []  # per text: its items' range in items, is it an array
    unparseable = False
    for line_no, text in enumerate(texts):
        try:
            value = loads(text)
        except (ValueError, RecursionError) as exc:
            unparseable = True
            where = line_no if len(texts) > 1 else None
            problems.append((where, f"not valid JSON: {exc}"))
            continue
        first = len(items)
        if isinstance(value, list):
            items.extend(value)
        else:
            items.append(value)
        raw_parts.append(_part(text))
        spans.append((first, len(items), isinstance(value, list)))
    if unparseable:
        raise BadBatch(problems, unparseable=True)
    keys: list[EventKey] = []
    rows: list[QuotaRow | None] = []
    left_out: set[int] = set()
    skipped = 0
    for index, item in enumerate(items):
        if skip_reason(item) is not None:
            skipped += 1
            left_out.add(index)
            continue
        try:
            keys.append(key(item))
        except UnkeyableEvent as exc:
            problems.append((index, str(exc)))
            left_out.add(index)
        else:
            rows.append(titan_row(item))
    if problems and not partial:
        raise BadBatch(problems, unparseable=False)
    rejected = [
        Rejected(index, reason, _item_text(index, raw_parts, spans))
        for index, reason in problems
        if index is not None
    ]
    if left_out:
        raw_parts = [_kept(part, span, left_out) for part, span in zip(raw_parts, spans, strict=True)]
    return ParsedBatch(
        keys=keys, array_text=_array_text(raw_parts), skipped=skipped, rejected=rejected, rows=rows
    )


def _part(text: str) -> str:
    """What a text adds to the batch's array: an array's elements verbatim (without its brackets),
    or the text of one event."""
    stripped = text.strip()
    return stripped[1:-1] if stripped.startswith("[") else text


def _columns_array_text(texts: Sequence[str]) -> str:
    """_array_text of the texts decode_columns read: one array, or each text one event (no blank
    text, no array among them), which it takes as they are."""
    if len(texts) == 1:
        return _array_text([_part(texts[0])])
    return "[" + ",".join(texts) + "]"


def _array_text(parts: list[str]) -> str:
    return "[" + ",".join(part for part in parts if part.strip()) + "]"


def _item_text(index: int, raw_parts: list[str], spans: list[tuple[int, int, bool]]) -> str:
    """The verbatim text of one item of the batch."""
    for part, (first, end, is_array) in zip(raw_parts, spans, strict=True):
        if first <= index < end:
            return _element_texts(part)[index - first] if is_array else part.strip()
    raise IndexError(index)


def _kept(part: str, span: tuple[int, int, bool], left_out: set[int]) -> str:
    """The raw text of one body part without the items left out (the slow path: rare)."""
    first, end, is_array = span
    if not any(first <= i < end for i in left_out):
        return part
    if not is_array:
        return ""
    elements = _element_texts(part)
    return ",".join(text for n, text in enumerate(elements, start=first) if n not in left_out)


def _element_texts(part: str) -> list[str]:
    """The verbatim texts of a comma-separated sequence of JSON values."""
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=int)
    texts: list[str] = []
    position, length = 0, len(part)
    while True:
        while position < length and part[position] in " \t\r\n":
            position += 1
        if position >= length:
            return texts
        _, end = decoder.raw_decode(part, position)
        texts.append(part[position:end])
        position = end
        while position < length and part[position] in " \t\r\n":
            position += 1
        if position < length and part[position] == ",":
            position += 1


def parse_body(body: bytes, *, ndjson: bool = False, partial: bool = False) -> ParsedBatch:
    return parse_texts(split_body(body, ndjson=ndjson), partial=partial)


def event_texts(body: bytes) -> list[str]:
    """The raw text of each event in a JSON array, NDJSON, or a single JSON value (a file to replay)."""
    texts = split_body(body)
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        return list(_array_elements(texts[0]))
    return texts


def _array_elements(text: str) -> Iterator[str]:
    """Each element of a JSON array as its own text, verbatim (digits kept), for batching."""
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
    position = text.index("[") + 1
    while True:
        position = _skip_whitespace(text, position)
        if text.startswith("]", position):
            return
        try:
            _, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise BadBatch([(None, f"not valid JSON: {exc}")], unparseable=True) from exc
        yield text[position:end]
        position = _skip_whitespace(text, end)
        if text.startswith(",", position):
            position += 1
        elif not text.startswith("]", position):
            raise BadBatch(
                [(None, f"not valid JSON: expected ',' or ']' at character {position}")], unparseable=True
            )


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def parse_in_batches(texts: Sequence[str], batch_size: int) -> list[ParsedBatch]:
    """Every batch parsed and keyed before anything is stored: one bad event stores nothing."""
    batches: list[ParsedBatch] = []
    problems: list[tuple[int | None, str]] = []
    for start in range(0, len(texts), batch_size):
        try:
            batches.append(parse_texts(texts[start : start + batch_size]))
        except BadBatch as exc:
            # A batch of one text names no index (its problem is the whole text): here it is item start.
            problems.extend((start + (i or 0) if len(texts) > 1 else i, reason) for i, reason in exc.problems)
    if problems:
        raise BadBatch(problems, unparseable=False)
    return batches


def stream_values(
    stream: BinaryIO, *, chunk_size: int = 1 << 20, max_value_chars: int = 64 << 20
) -> Iterator[Any]:
    """Each event of a file too large to hold: the elements of a JSON array, NDJSON lines, or one value.

    Parsed as loads() parses a text (decimals exact, NaN refused, nesting bounded), holding one chunk
    and the value being read, never the file. A JSON syntax error ends the stream with a BadBatch
    naming the event's index: past it, where the next event starts cannot be known.
    """
    decoder = json.JSONDecoder(parse_float=json_decimal, parse_int=json_int, parse_constant=_reject_constant)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buffer, position, eof, index, in_array = "", 0, False, 0, False
    read_bytes = 0

    def fail(reason: str) -> BadBatch:
        return BadBatch([(index, reason)], unparseable=True)

    def fill(grow: bool = False) -> bool:
        """Read the next chunk; grow: as much as the unread part again (a value longer than a chunk
        is read in a logarithmic number of attempts, and an error past hope fails as fast)."""
        nonlocal buffer, position, eof, read_bytes
        if eof:
            return False
        chunk = stream.read(max(chunk_size, len(buffer) - position) if grow else chunk_size)
        try:
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise fail(f"not UTF-8: {exc.reason} near byte {read_bytes + exc.start}") from exc
        read_bytes += len(chunk)
        eof = not chunk
        buffer = buffer[position:] + text
        position = 0
        return True

    def at_content() -> str:
        """The next character that is not JSON whitespace ('' at the end of the stream)."""
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in JSON_WHITESPACE:
                position += 1
            if position < len(buffer) or not fill():
                return buffer[position : position + 1]

    while True:
        char = at_content()
        if not char:
            if in_array:
                raise fail("not valid JSON: the array is not closed (']' missing at the end)")
            return
        if char == "[" and not in_array:
            in_array, position = True, position + 1
            if at_content() == "]":
                in_array, position = False, position + 1
            continue
        while True:
            try:
                value, end = decoder.raw_decode(buffer, position)
                # A number that ends with the buffer may go on in the next chunk.
                complete = end < len(buffer) or eof
                if complete:
                    _check_structure(value, buffer[position:end])
            except (ValueError, RecursionError) as exc:
                # Maybe only cut short by the end of the buffer: read on, up to the largest value.
                if not eof and len(buffer) - position < max_value_chars and fill(grow=True):
                    continue
                raise fail(f"not valid JSON: {exc}") from exc
            if complete or not fill(grow=True):
                break
        position = end
        yield value
        index += 1
        if in_array:
            separator = at_content()
            if separator == "]":
                in_array, position = False, position + 1
            elif separator == ",":
                position += 1
                if at_content() == "]":
                    raise fail("not valid JSON: a ',' before ']'")
            elif not separator:
                raise fail("not valid JSON: the array is not closed (']' missing at the end)")
            else:
                raise fail("not valid JSON: expected ',' or ']' after an element of the array")
