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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from inbox.events import (
    MAX_NUMBER_DIGITS,
    EventKey,
    InvalidEvent,
    QuotaRow,
    UnkeyableEvent,
    json_decimal,
    key_titan_event,
    validate_titan_event,
)

JSON_WHITESPACE = " \t\r\n"
_TITAN_KEYS = frozenset({"eventType", "data", "metadata"})
_SCALARS = (str, int, Decimal, bool, type(None))
_SPACED_COLON = re.compile(rb"[ \t\r\n]:")
_NUL_ESCAPE = b"\\u0000"
# Below this, an integer has at most 18 digits: no need to count them.
_SMALL_INT = 10**18
_ARRAY = msgspec.json.Decoder(list[dict[str, Any]], float_hook=json_decimal)
_ARRAY_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, Any], float_hook=json_decimal)


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
        if is_array(text):
            values = _ARRAY.decode(data)
            raws = [bytes(raw) for raw in _ARRAY_RAWS.decode(data)]
        else:
            values, raws = [_OBJECT.decode(data)], [data]
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    events: list[EdgeEvent] = []
    for value, raw in zip(values, raws, strict=True):
        event = _event(value, raw)
        if event is None:
            return None
        events.append(event)
    if not is_array(text):
        # The slow path keeps a single event's text as it came, less surrounding whitespace.
        return [EdgeEvent(text.strip(), events[0].key, events[0].row)]
    return events


def _event(value: dict[str, Any], raw: bytes) -> EdgeEvent | None:
    """The event of one decoded JSON object and its raw text, when every check above holds."""
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
