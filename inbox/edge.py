"""The fast path of ingest: Titan events decoded by msgspec (C), keyed and typed, or declined.

decode_texts() answers for a whole body (its texts, as ingest.split_body cut them) and decode_event()
for one Kafka message. Each gives, per event, its raw text (stored verbatim), its EventKey and its
QuotaRow (None for a delete or an invalid event), exactly what the slow path (ingest.loads, then
formats.key_event and formats.titan_row) would give; or None, the decline, and then the slow path
decides, with its own messages, rejects and refusals. The rules stay in inbox/events.py: this module
only decodes, and declines whatever it cannot prove the slow path would read the same way:

* JSON syntax: what msgspec refuses is declined; what it takes, Python's json takes too.
* Numbers: a float token goes through events.json_decimal, the very function ingest.loads uses
  (exact digits, the same limits); an integer is declined beyond MAX_NUMBER_DIGITS digits (loads
  refuses it with events.json_int).
* Strings: an escaped NUL (the only way a NUL reaches a strict JSON string) is declined, and msgspec
  refuses a lone surrogate escape itself.
* Shape: an event is a JSON object with no keys but eventType, data and metadata, data and metadata
  objects of scalars only. So it is Titan's format (no Debezium, flattened or wrapped event, no
  tombstone or truncate), nested 4 levels deep at most (the limit is 64), and every number and string
  of it is one the checks above saw.
* Duplicate keys: Python's json keeps an object's last value, unseen earlier ones may break the
  limits above. The raw text must show exactly one '":' per key decoded, and no whitespace before
  a colon: every key written '"k":' adds one, a string can only add more; so the equality proves
  that no key was repeated (escaped key names included).
* An event that cannot be keyed (events.key_titan_event) is declined: the slow path refuses or
  rejects it.

Each event is tried twice at most. First typed (_typed): msgspec checks in C the types Titan sends
(Literal eventType and direction, a YYYY-MM-DD date, str texts), and each rule of events.quota_row
is checked by a condition that implies it (printable text is safe text, a JSON number read by
json_decimal is within number_problem's limits); the row is then built directly. An event that
does not fit is decoded as plain JSON (_event), and quota_row itself gives its row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from itertools import compress, repeat
from operator import attrgetter, is_
from types import NoneType
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from inbox.events import (
    CANONICAL_UUID_PATTERN,
    MAX_NUMBER_DIGITS,
    MAX_VERSION,
    EventKey,
    InvalidEvent,
    QuotaRow,
    UnkeyableEvent,
    json_decimal,
    key_titan_event,
    parse_uuid,
    parse_version,
    updated_at,
    validate_titan_event,
)

JSON_WHITESPACE = " \t\r\n"
_TITAN_KEYS = frozenset({"eventType", "data", "metadata"})
_SCALARS = (str, int, Decimal, bool, type(None))
_SPACED_COLON = re.compile(rb"[ \t\r\n]:")
_NUL_ESCAPE = b"\\u0000"
# decode_columns' checks of the raw JSON, on str texts: the NUL escape, and each pair of JSON
# whitespace and colon (str searches: the regular expression above tried every character)
_TEXT_NUL_ESCAPE = "\\u0000"
_SPACED_COLONS = tuple(f"{space}:" for space in JSON_WHITESPACE)
# Below this, an integer has at most 18 digits: no need to count them.
_SMALL_INT = 10**18
_ARRAY_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, Any], float_hook=json_decimal)


# gc=False: a decoded event holds scalars only (and, in an Any member, containers made by the decoder,
# which cannot refer back to it), so it can be in no reference cycle; not tracked, a body's 500 events
# add nothing to the collector's work.
class _Data(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    quota_id: str
    counterparty_id: str
    direction: Literal["BUY", "SELL"]
    period_month: date  # exactly YYYY-MM-DD, a real date
    qty_t: Any  # numbers through json_decimal, as loads() reads them
    metal_code: str
    tolerance_pct: Any = UNSET
    incoterm_code: str | UnsetType | None = UNSET
    updated_at: str | UnsetType | None = UNSET


class _Metadata(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    version: int
    timestamp: str | UnsetType | None = UNSET
    source: str | UnsetType | None = UNSET


class _Titan(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    eventType: Literal["INSERT", "UPDATE", "DELETE"]
    data: _Data
    metadata: _Metadata


# The members _Titan always has: its 3, _Data's 6 required ones, metadata.version.
_REQUIRED_MEMBERS = 10
_TYPED = msgspec.json.Decoder(_Titan, float_hook=json_decimal)
_UNREAD = object()  # a tolerance_pct given that _number does not take
_TYPED_LIST = msgspec.json.Decoder(list[_Titan], float_hook=json_decimal)
_UUID_LINES = re.compile(f"(?:{CANONICAL_UUID_PATTERN}\n)*{CANONICAL_UUID_PATTERN}")
_GET_DATA, _GET_METADATA, _GET_EVENT_TYPE = (
    attrgetter("data"),
    attrgetter("metadata"),
    attrgetter("eventType"),
)
_GET_QUOTA_ID, _GET_VERSION = attrgetter("quota_id"), attrgetter("version")
_GET_COUNTERPARTY, _GET_METAL = attrgetter("counterparty_id"), attrgetter("metal_code")
_GET_QTY, _GET_DIRECTION, _GET_PERIOD_MONTH = (
    attrgetter("qty_t"),
    attrgetter("direction"),
    attrgetter("period_month"),
)
# _Data's and _Metadata's optional members; the first three are columns of the row
_GET_OPTIONAL_DATA = tuple(map(attrgetter, ("tolerance_pct", "incoterm_code", "updated_at")))
_GET_OPTIONAL_METADATA = tuple(map(attrgetter, ("timestamp", "source")))


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """One Titan event of a body: its text verbatim, its key, and its row (None: a delete, or invalid)."""

    raw: str
    key: EventKey
    row: QuotaRow | None


def decode_texts(texts: Sequence[str]) -> list[EdgeEvent] | None:
    """The events of a body's texts (JSON arrays of Titan events, or one Titan event each), or None."""
    events: list[EdgeEvent] = []
    for text in texts:
        decoded = _decode_text(text)
        if decoded is None:
            return None
        events.extend(decoded)
    return events


# The row columns of query ingest_typed_events, in the order of QuotaRow's fields.
ROW_COLUMNS = (
    "counterparty_ids",
    "directions",
    "period_months",
    "qty_t",
    "tolerance_pct",
    "incoterm_codes",
    "metal_codes",
    "source_updated_at",
)


@dataclass(frozen=True, slots=True)
class EdgeColumns:
    """A body's events column by column, as inbox.ingest_typed_events takes them: every event a
    typed upsert or a typed delete (its row columns None), typed True. No object per event:
    keys() and rows build EventKeys and QuotaRows only for a caller that asks (storing never does)."""

    quota_ids: list[str]  # canonical UUID text, cast by PostgreSQL (a UUID object costs 1 us)
    versions: list[int]
    is_delete: list[bool]
    typed: list[bool]
    row_columns: dict[str, list[Any]]  # ROW_COLUMNS, in QuotaRow's order
    _rows: list[QuotaRow | None] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.quota_ids)

    def keys(self) -> list[EventKey]:
        return list(map(EventKey, map(uuid.UUID, self.quota_ids), self.versions, self.is_delete))

    @property
    def rows(self) -> list[QuotaRow | None]:
        """Each event's QuotaRow (None: a delete), built at the first read; the same list after it."""
        if self._rows is None:
            rows: list[QuotaRow | None] = list(map(QuotaRow, *self.row_columns.values()))
            for at in compress(range(len(rows)), self.is_delete):
                rows[at] = None
            object.__setattr__(self, "_rows", rows)
        assert self._rows is not None
        return self._rows


def decode_columns(texts: Sequence[str]) -> EdgeColumns | None:
    """The whole body at once, when every event is one _typed takes as a typed upsert or a delete:
    the same keys and rows, checked column by column (builtins over lists, not Python per event).
    None when any event is not such an event: decode_texts decides then, event by event.

    msgspec reads the texts themselves (a str is its UTF-8 to msgspec; one holding a lone surrogate
    has none, and is declined), and the checks of the raw JSON run on the texts: '"', ':' and the
    JSON whitespace are ASCII, which no byte of a longer UTF-8 sequence is, so counting them in the
    text counts them in its UTF-8."""
    try:
        if len(texts) == 1 and is_array(texts[0]):
            data = texts[0]
            events = _TYPED_LIST.decode(data)
        else:  # each text one event (NDJSON lines): a text holding anything else is refused
            events = list(map(_TYPED.decode, texts))
            # each text ends with '}' or whitespace and the next starts with '{' or whitespace, so no
            # check below can match across texts joined as they are (a newline between them would
            # only make _spaced_colon look for "\n:")
            data = "".join(texts)
    except (UnicodeEncodeError, msgspec.MsgspecError, ValueError, RecursionError):
        return None
    count = len(events)
    if not count:
        return EdgeColumns([], [], [], [], {name: [] for name in ROW_COLUMNS})
    if _TEXT_NUL_ESCAPE in data or _spaced_colon(data):
        return None
    datas, metas = list(map(_GET_DATA, events)), list(map(_GET_METADATA, events))
    optional = [list(map(get, datas)) for get in _GET_OPTIONAL_DATA]
    optional += [list(map(get, metas)) for get in _GET_OPTIONAL_METADATA]
    members = count * _REQUIRED_MEMBERS + sum(count - column.count(UNSET) for column in optional)
    # Each event shows at least one '":' per member: the equality of the sums is that of each event's.
    if data.count('":') != members:
        return None
    ids = "\n".join(map(_GET_QUOTA_ID, datas))
    # 36 characters each and the canonical form between the newlines: each id is one UUID
    if len(ids) != 37 * count - 1 or _UUID_LINES.fullmatch(ids) is None:
        return None
    versions = list(map(_GET_VERSION, metas))
    if min(versions) < 0 or max(versions) > MAX_VERSION:
        return None
    is_delete = list(map("DELETE".__eq__, map(_GET_EVENT_TYPE, events)))
    deletes = list(compress(range(count), is_delete))
    row_columns = _row_columns(datas, optional, deletes)
    if row_columns is None:
        return None
    # A delete _typed took is typed too: a Titan DELETE needs only its key (events.validate_titan_event),
    # so what a worker would store for it from its payload is known here (no row, no errors, not
    # version-less, no LSN). Stored untyped, every batch holding a delete cost a typing round first.
    return EdgeColumns(ids.split("\n"), versions, is_delete, [True] * count, row_columns)


def _spaced_colon(data: str) -> bool:
    """Whether JSON whitespace stands before a colon anywhere in data (_SPACED_COLON's match): a
    whitespace character absent from the text (a compact body has no space, tab or CR) is ruled out
    by one fast scan for it alone."""
    return any(pair[0] in data and pair in data for pair in _SPACED_COLONS)


def _row_columns(
    datas: list[_Data], optional: list[list[Any]], deletes: list[int]
) -> dict[str, list[Any]] | None:
    """The row columns (None at the deletes), or None when an upsert breaks a rule _typed checks.
    A delete's fields are not checked, as _typed does not check them."""
    typed = [True] * len(datas)
    for at in deletes:
        typed[at] = False

    def upserts(column: list[Any]) -> list[Any]:
        return list(compress(column, typed)) if deletes else column

    counterparties, metals = list(map(_GET_COUNTERPARTY, datas)), list(map(_GET_METAL, datas))
    if not (_texts(upserts(counterparties)) and _texts(upserts(metals))):
        return None
    quantities = list(map(_GET_QTY, datas))
    if not set(map(type, upserts(quantities))) <= {Decimal}:
        quantities = list(map(_number, quantities))
    taken = upserts(quantities)
    # by identity: `None in taken` would compare each Decimal with None
    if _holds(taken, None) or (taken and min(taken) <= 0):
        return None
    tolerances = _tolerances(optional[0])
    taken = [t for t in upserts(tolerances) if t is not None]
    if _holds(taken, _UNREAD) or (taken and not (min(taken) >= 0 and max(taken) <= 100)):
        return None
    incoterms = [None if code is UNSET else code for code in optional[1]]
    if not all(code.isprintable() for code in upserts(incoterms) if code is not None):
        return None
    errors: list[str] = []
    # Titan stamps many events alike: each distinct timestamp and month is read once.
    stamps = {v: updated_at(None if v is UNSET else v, errors) for v in set(upserts(optional[2]))}
    months = {month: month.replace(day=1) for month in set(map(_GET_PERIOD_MONTH, datas))}
    if errors:
        return None
    columns = {
        "counterparty_ids": counterparties,
        "directions": list(map(_GET_DIRECTION, datas)),
        "period_months": list(map(months.__getitem__, map(_GET_PERIOD_MONTH, datas))),
        "qty_t": quantities,
        "tolerance_pct": tolerances,
        "incoterm_codes": incoterms,
        "metal_codes": metals,
        "source_updated_at": list(map(stamps.get, optional[2])),
    }
    for column in columns.values():
        for at in deletes:
            column[at] = None
    return columns


def _holds(values: list[Any], thing: object) -> bool:
    return any(map(is_, values, repeat(thing)))


def _tolerances(values: list[Any]) -> list[Decimal | object | None]:
    """_tolerance of each value. A column of integers (and absent ones) reads each distinct integer
    once: with no Decimal among the values, no two that are equal can differ in their digits."""
    if set(map(type, values)) <= {int, NoneType, UnsetType}:
        read = {value: _tolerance(value) for value in set(values)}
        return list(map(read.__getitem__, values))
    return list(map(_tolerance, values))


def _tolerance(value: Any) -> Decimal | object | None:
    """tolerance_pct as _typed reads it: None when not given, _UNREAD when it would decline."""
    if value is UNSET or value is None:
        return None
    number = _number(value)
    return _UNREAD if number is None else number


def _texts(values: list[str]) -> bool:
    """_text of every value."""
    return all(map(str.isprintable, values)) and all(map(str.strip, values))


def decode_event(text: str) -> EdgeEvent | None:
    """One Titan event (a Kafka message's value), or None; a JSON array is declined."""
    if is_array(text):
        return None
    decoded = _decode_text(text)
    return decoded[0] if decoded else None


def is_array(text: str) -> bool:
    return text.lstrip(JSON_WHITESPACE).startswith("[")


def _decode_text(text: str) -> list[EdgeEvent] | None:
    try:
        data = text.encode("utf-8")  # a str from the Python API may hold a lone surrogate: no UTF-8
    except UnicodeEncodeError:
        return None
    if _NUL_ESCAPE in data:
        return None
    try:
        raws = [bytes(raw) for raw in _ARRAY_RAWS.decode(data)] if is_array(text) else [data]
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    events: list[EdgeEvent] = []
    for raw in raws:
        event = _typed(raw) or _event(raw)
        if event is None:
            return None
        events.append(event)
    if not is_array(text):
        # The slow path keeps a single event's text as it came, less surrounding whitespace.
        return [EdgeEvent(text.strip(), events[0].key, events[0].row)]
    return events


def _typed(raw: bytes) -> EdgeEvent | None:
    """The common case, in C as far as it goes: an event whose every field has its type, each rule of
    events.quota_row checked by a condition that implies it (so the row is the one quota_row gives);
    None sends the event to _event, which asks quota_row itself."""
    try:
        event = _TYPED.decode(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    data, metadata = event.data, event.metadata
    members = _REQUIRED_MEMBERS + sum(
        value is not UNSET
        for value in (
            data.tolerance_pct,
            data.incoterm_code,
            data.updated_at,
            metadata.timestamp,
            metadata.source,
        )
    )
    if raw.count(b'":') != members or _SPACED_COLON.search(raw) is not None:
        return None
    quota_id, version = parse_uuid(data.quota_id), parse_version(metadata.version)
    if quota_id is None or version is None:
        return None
    key = EventKey(quota_id, version, event.eventType == "DELETE")
    if key.is_delete:
        return EdgeEvent(raw.decode("utf-8"), key, None)
    qty_t = _number(data.qty_t)
    given_tolerance = data.tolerance_pct is not UNSET and data.tolerance_pct is not None
    tolerance = _number(data.tolerance_pct) if given_tolerance else None
    incoterm = None if data.incoterm_code is UNSET else data.incoterm_code
    if (
        qty_t is None
        or not qty_t > 0
        or (given_tolerance and (tolerance is None or not 0 <= tolerance <= 100))
        or not (_text(data.counterparty_id) and _text(data.metal_code))
        or not (incoterm is None or incoterm.isprintable())
    ):
        return None
    errors: list[str] = []
    timestamp = updated_at(None if data.updated_at is UNSET else data.updated_at, errors)
    if errors:
        return None
    row = QuotaRow(
        counterparty_id=data.counterparty_id,
        direction=data.direction,
        period_month=data.period_month.replace(day=1),
        qty_t=qty_t,
        tolerance_pct=tolerance,
        incoterm_code=incoterm,
        metal_code=data.metal_code,
        source_updated_at=timestamp,
    )
    return EdgeEvent(raw.decode("utf-8"), key, row)


def _number(value: Any) -> Decimal | None:
    """A JSON number as quota_row reads it, when it provably passes its checks: a float token came
    through json_decimal (within number_problem's limits), an integer of at most 18 digits is too."""
    if type(value) is Decimal:
        return value
    if type(value) is int and -_SMALL_INT < value < _SMALL_INT:
        return Decimal(value)
    return None


def _text(value: str) -> bool:
    """What quota_row's required text takes: not blank, no unsafe character (printable implies it)."""
    return value.isprintable() and bool(value.strip())


def _event(raw: bytes) -> EdgeEvent | None:
    """The event of one raw JSON object, when every check above holds, its row from quota_row."""
    try:
        value = _OBJECT.decode(raw)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    if type(value) is not dict:
        return None
    data, metadata = value.get("data"), value.get("metadata")
    if not value.keys() <= _TITAN_KEYS or type(data) is not dict or type(metadata) is not dict:
        return None
    if not (_scalars(data.values()) and _scalars(metadata.values()) and _scalars([value.get("eventType")])):
        return None
    if _SPACED_COLON.search(raw) is not None:
        return None
    if raw.count(b'":') != len(value) + len(data) + len(metadata):
        return None
    try:
        key = key_titan_event(value)
    except UnkeyableEvent:
        return None
    try:
        row = validate_titan_event(value)
    except InvalidEvent:
        row = None
    return EdgeEvent(raw.decode("utf-8"), key, row)


def _scalars(values: Any) -> bool:
    """Whether every value is a JSON scalar whose number, if any, is within the limits of loads()."""
    for value in values:
        if not isinstance(value, _SCALARS):
            return False
        if type(value) is int and not -_SMALL_INT < value < _SMALL_INT and _too_long(value):
            return False
    return True


def _too_long(number: int) -> bool:
    try:
        return len(str(abs(number))) > MAX_NUMBER_DIGITS
    except ValueError:  # beyond Python's own limit of digits to print (4300)
        return True
