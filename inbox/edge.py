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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from inbox.events import (
    MAX_NUMBER_DIGITS,
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
# Below this, an integer has at most 18 digits: no need to count them.
_SMALL_INT = 10**18
_ARRAY_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, Any], float_hook=json_decimal)


class _Data(msgspec.Struct, forbid_unknown_fields=True):
    quota_id: str
    counterparty_id: str
    direction: Literal["BUY", "SELL"]
    period_month: date  # exactly YYYY-MM-DD, a real date
    qty_t: Any  # numbers through json_decimal, as loads() reads them
    metal_code: str
    tolerance_pct: Any = UNSET
    incoterm_code: str | UnsetType | None = UNSET
    updated_at: str | UnsetType | None = UNSET


class _Metadata(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    timestamp: str | UnsetType | None = UNSET
    source: str | UnsetType | None = UNSET


class _Titan(msgspec.Struct, forbid_unknown_fields=True):
    eventType: Literal["INSERT", "UPDATE", "DELETE"]
    data: _Data
    metadata: _Metadata


# The members _Titan always has: its 3, _Data's 6 required ones, metadata.version.
_REQUIRED_MEMBERS = 10
_TYPED = msgspec.json.Decoder(_Titan, float_hook=json_decimal)


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
