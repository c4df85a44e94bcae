"""Array parameters in PostgreSQL's binary array format, built a column at a time.

psycopg dumps a list parameter value by value in Python (a dumper call and a length packed per
value): 0.4-0.6 us per value, about 6 us per event for the 13 arrays of inbox.ingest_typed_events.
Here a column is packed by builtins mapped over its list (str.encode, struct packing, a dict of its
distinct values when it has few), and handed to psycopg as bytes it sends as they are (a Packed
subclass names the array's type). PostgreSQL reads the same values as from psycopg's own dumping,
in the array type the query casts to anyway. A column holding anything else (a value of another
type, an integer beyond bigint, a naive datetime, text that is not UTF-8) is left as its list, and
psycopg dumps it as before, with its own errors.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import chain, compress, repeat
from operator import attrgetter, is_
from typing import Any, ClassVar, TypeVar, cast

from psycopg import adapters, postgres
from psycopg.adapt import Buffer, Dumper
from psycopg.pq import Format

_LENGTH = struct.Struct(">i").pack
_NULL = _LENGTH(-1)  # an element's length -1: NULL
_INT8 = struct.Struct(">iq").pack
_DATE = struct.Struct(">ii").pack
_HEADER = struct.Struct(">iiiii").pack  # dimensions 1, has nulls, element type, length, lower bound 1
_EMPTY = struct.Struct(">iii").pack  # dimensions 0, no nulls, element type
_DATE_EPOCH = date(2000, 1, 1).toordinal()
_INSTANT_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BOOLS = {True: b"\x00\x00\x00\x01\x01", False: b"\x00\x00\x00\x01\x00", None: _NULL}
_NONE = type(None)
_UUID_BYTES = attrgetter("bytes")


class Packed:
    """A whole array parameter, packed: psycopg sends data as it is, typed as an array of
    element_type."""

    __slots__ = ("data",)
    element_type: ClassVar[str]
    element_oid: ClassVar[int]

    def __init__(self, data: bytes) -> None:
        self.data = data


P = TypeVar("P", bound=Packed)


class TextArray(Packed):
    element_type = "text"


class Int8Array(Packed):
    element_type = "int8"


class BoolArray(Packed):
    element_type = "bool"


class DateArray(Packed):
    element_type = "date"


class TimestamptzArray(Packed):
    element_type = "timestamptz"


class UuidArray(Packed):
    element_type = "uuid"


def _register(packed: type[Packed]) -> None:
    """psycopg's dumper of packed: its bytes, typed as an array of packed.element_type."""
    info = postgres.types[packed.element_type]
    packed.element_oid = info.oid

    class PackedDumper(Dumper):
        format = Format.BINARY
        oid = info.array_oid

        def dump(self, obj: Any) -> Buffer:
            data: bytes = obj.data
            return data

    adapters.register_dumper(packed, PackedDumper)


for _packed in (TextArray, Int8Array, BoolArray, DateArray, TimestamptzArray, UuidArray):
    _register(_packed)


def _array(packed: type[P], count: int, items: Iterable[bytes], nulls: bool) -> P:
    """The array of count elements, items their bytes (each its length and its data, or _NULL)."""
    if not count:
        return packed(_EMPTY(0, 0, packed.element_oid))
    return packed(b"".join(chain((_HEADER(1, nulls, packed.element_oid, count, 1),), items)))


def _types(values: Iterable[Any]) -> set[type]:
    return set(map(type, values))


def _distinct_of(values: Sequence[Any], types: set[type]) -> set[Any] | None:
    """The distinct values, when each is of one of types (else None)."""
    try:
        distinct = set(values)
    except TypeError:  # unhashable: of no type packed here
        return None
    return distinct if _types(distinct) <= types else None


def _distinct(values: Sequence[Any], distinct: set[Any], item: Callable[[Any], bytes]) -> list[bytes]:
    """item of each value, computed once per distinct value (None: NULL)."""
    items: dict[Hashable, bytes] = {value: item(value) for value in distinct if value is not None}
    items[None] = _NULL
    return list(map(items.__getitem__, values))


def _nulls(values: Sequence[Any]) -> list[int]:
    return list(compress(range(len(values)), map(is_, values, repeat(None))))


def _filled(values: Sequence[Any], nulls: list[int], stand_in: Any) -> list[Any]:
    """values with stand_in at each of nulls."""
    filled = list(values)
    for at in nulls:
        filled[at] = stand_in
    return filled


def text_array(values: Sequence[str | None]) -> TextArray | Sequence[str | None]:
    """A text[] of str values (None: NULL). A column of few distinct values (a direction, a metal)
    packs each once; texts of one width (quota ids) go as one text; the rest value by value."""
    distinct = _distinct_of(values, {str, _NONE})
    if distinct is None:
        return values
    try:
        if len(distinct) * 2 <= len(values):
            return _array(TextArray, len(values), _distinct(values, distinct, _text_item), None in distinct)
        if None not in distinct and len(set(map(len, cast(Sequence[str], values)))) == 1:
            return _same_width(cast(Sequence[str], values))
        return _texts(values, _nulls(values) if None in distinct else [])
    except UnicodeEncodeError:  # a lone surrogate: psycopg refuses it as it always did
        return values


def decimal_text_array(values: Sequence[Decimal | None]) -> TextArray | Sequence[str | None]:
    """A text[] of each Decimal's str() (None: NULL), which keeps its digits: the queries cast it to
    numeric[] (psycopg's binary numeric costs about 1.3 us a value, its text a fifth of that)."""
    if not _types(values) <= {Decimal, _NONE}:
        return [None if value is None else str(value) for value in values]
    nulls = _nulls(values) if None in values else []
    return _texts(list(map(str, _filled(values, nulls, Decimal(0)))), nulls)


def _text_item(value: str) -> bytes:
    data = value.encode()
    return _LENGTH(len(data)) + data


def _same_width(values: Sequence[str]) -> TextArray:
    """Texts of one length (quota ids): joined by newlines, the newlines replaced by the length."""
    joined = "\n".join(values)
    data = joined.encode()
    if len(data) != len(joined) or joined.count("\n") != len(values) - 1:  # not ASCII, or a newline
        return _texts(values, [])
    length = _LENGTH(len(values[0]))
    header = _HEADER(1, 0, TextArray.element_oid, len(values), 1)
    return TextArray(b"".join((header, length, data.replace(b"\n", length))))


def _texts(values: Sequence[str | None], nulls: list[int]) -> TextArray:
    """A text[] value by value (nulls: where values holds None)."""
    encoded = list(map(str.encode, _filled(values, nulls, "") if nulls else values))
    lengths = list(map(_LENGTH, map(len, encoded)))
    for at in nulls:
        lengths[at] = _NULL  # and its encoded b"" adds nothing
    return _array(
        TextArray, len(values), chain.from_iterable(zip(lengths, encoded, strict=True)), bool(nulls)
    )


def int8_array(values: Sequence[int | None]) -> Int8Array | Sequence[int | None]:
    """A bigint[] of int values (None: NULL)."""
    types = _types(values)
    if types == {_NONE}:  # no Debezium LSN in the batch
        return _array(Int8Array, len(values), [_NULL] * len(values), True)
    if not types <= {int, _NONE}:
        return values
    nulls = _nulls(values) if _NONE in types else []
    try:
        items = list(map(_INT8, repeat(8), _filled(values, nulls, 0) if nulls else values))
    except struct.error:  # beyond bigint: psycopg's numeric, refused by the query's cast as before
        return values
    for at in nulls:
        items[at] = _NULL
    return _array(Int8Array, len(values), items, bool(nulls))


def bool_array(values: Sequence[bool | None]) -> BoolArray | Sequence[bool | None]:
    """A boolean[] of bool values (None: NULL)."""
    types = _types(values)
    if not types <= {bool, _NONE}:
        return values
    return _array(BoolArray, len(values), map(_BOOLS.__getitem__, values), _NONE in types)


def date_array(values: Sequence[date | None]) -> DateArray | Sequence[date | None]:
    """A date[] of date values (None: NULL): days since 2000-01-01."""
    distinct = _distinct_of(values, {date, _NONE})  # a datetime (a date too) is psycopg's timestamp
    if distinct is None:
        return values
    items = _distinct(values, distinct, lambda day: _DATE(4, day.toordinal() - _DATE_EPOCH))
    return _array(DateArray, len(values), items, None in distinct)


def _instant(value: datetime) -> bytes:
    return _INT8(8, (value - _INSTANT_EPOCH) // _MICROSECOND)


def timestamptz_array(values: Sequence[datetime | None]) -> TimestamptzArray | Sequence[datetime | None]:
    """A timestamptz[] of aware datetime values (None: NULL): microseconds since 2000-01-01 UTC. Equal
    instants in different offsets are one value, and one timestamptz."""
    distinct = _distinct_of(values, {datetime, _NONE})
    if distinct is None or any(
        value.tzinfo is None or value.utcoffset() is None for value in distinct if value is not None
    ):
        return values  # a naive datetime is psycopg's timestamp, read in the session's time zone
    return _array(TimestamptzArray, len(values), _distinct(values, distinct, _instant), None in distinct)


def uuid_array(values: Sequence[uuid.UUID] | Sequence[str]) -> Packed | Sequence[Any]:
    """Quota ids, which the queries cast to uuid[]: a uuid[] of UUID values, or a text[] of their
    canonical texts (the edge's columns; no NULL either way)."""
    if values and type(values[0]) is str:
        return text_array(cast(Sequence[str], values))
    if not _types(values) <= {uuid.UUID}:
        return values
    items = chain.from_iterable(zip(repeat(_LENGTH(16)), map(_UUID_BYTES, values)))
    return _array(UuidArray, len(values), items, False)
