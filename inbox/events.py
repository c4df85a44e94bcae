"""Titan quota events: the key that files an event in the inbox, and the rules that make it applicable.

quota_row() is the one validation of a quota's fields; inbox/formats.py feeds it the fields of
Debezium change events and flattened records too.

Keying is all the ingestor needs (quota_id, version, is it a delete); everything else is checked by
the worker, so a keyable event that breaks a business rule is stored and ends as a dead letter
with every reason listed, instead of being refused at the door.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from inbox.text import unsafe_character

EVENT_TYPES = ("INSERT", "UPDATE", "DELETE")
DIRECTIONS = ("BUY", "SELL")
MAX_VERSION = 2**63 - 1
# The numbers an event may hold (SECURITY.md, "Bounded input"). PostgreSQL writes a number out in
# full each time it prints a payload: 1e131071 is 8 bytes in and 131,072 digits out. At most 40
# zeros beyond its digits bounds how much any accepted body grows when read; a quota field needs
# far fewer (a tonnage, a percentage), and Debezium's integers (ts_ns, lsn) have at most 20 digits.
MAX_NUMBER_DIGITS = 1000
MAX_NUMBER_ZEROS = 40
# The offsets PostgreSQL's timestamptz takes (Python's fromisoformat takes up to 23:59:59.999999).
MAX_UTC_OFFSET = timedelta(hours=15, minutes=59, seconds=59)
# The shapes of updated_at taken: ISO 8601's extended date, then optionally a time (hh:mm, :ss, a
# fraction) and an offset (Z, +hh, +hhmm, +hh:mm, +hh:mm:ss). Python's fromisoformat alone also takes
# week dates, the basic form and any one character between the date and the time or before the offset.
ISO_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?)?)?"
)
# Debezium's time.precision.mode=isostring writes a date as "2026-03-15Z".
_DATE_PREFIX = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:$|[T ]|Z$)")
# The canonical 8-4-4-4-12 text form, either case (uuid.UUID also takes braces, urns and bare hex).
CANONICAL_UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_CANONICAL_UUID = re.compile(CANONICAL_UUID_PATTERN)


class UnkeyableEvent(ValueError):
    """The event cannot be filed: no UUID quota_id or no integer version."""


@dataclass(frozen=True, slots=True)
class EventKey:
    quota_id: uuid.UUID
    version: int
    is_delete: bool
    # Debezium's source.lsn: the position of the change in Titan's WAL, which orders one database's
    # changes; None for events without one (Titan events). See inbox/formats.py, source_lsn().
    # Not part of the key's identity (the inbox's primary key is the three fields above).
    source_lsn: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """A validated quota state, ready for the CSLA quota table. Decimals stay Decimal."""

    counterparty_id: str
    direction: str
    period_month: date
    qty_t: Decimal
    tolerance_pct: Decimal | None
    incoterm_code: str | None
    metal_code: str
    source_updated_at: datetime | None


def number_problem(number: Decimal) -> str | None:
    """Why an event may not hold this number, or None: not finite, more than MAX_NUMBER_DIGITS
    digits, or more than MAX_NUMBER_ZEROS zeros beyond its digits once written out in full (1e40 and
    1e-41 are the extremes: 41 and 43 characters). Within these, PostgreSQL's numeric holds it exactly."""
    if not number.is_finite():
        return "is not a finite number"
    _, digit_tuple, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if len(digit_tuple) > MAX_NUMBER_DIGITS:
        return f"is beyond the range an event may hold (more than {MAX_NUMBER_DIGITS} digits)"
    zeros = exponent if exponent > 0 else -exponent - len(digit_tuple)
    if zeros > MAX_NUMBER_ZEROS:
        return (
            f"is beyond the range an event may hold (more than {MAX_NUMBER_ZEROS} zeros beyond its "
            "digits written out in full; 1e40 and 1e-41 are the limits)"
        )
    return None


def json_int(text: str) -> int:
    """A JSON integer token, refused (ValueError) beyond MAX_NUMBER_DIGITS digits."""
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"number {text[:40]}... has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def json_decimal(text: str) -> Decimal:
    """A JSON number token with a fraction or an exponent, within the limits of events.number_problem.

    The length comes first: Decimal() refuses an exponent of 19 digits or more with
    decimal.InvalidOperation, which is no ValueError, and must never be reached."""
    if len(text) <= 40 and "e" not in text and "E" not in text:  # nearly every number: within every limit
        return Decimal(text)
    mantissa, _, exponent = text.lower().partition("e")
    if len(mantissa) > MAX_NUMBER_DIGITS + 2:
        raise ValueError(f"number {text[:40]}... has more than {MAX_NUMBER_DIGITS} digits")
    if len(exponent.lstrip("+-")) > 6:
        raise ValueError(f"number {text[:40]} has an exponent of more than 6 digits")
    number = Decimal(text)
    # 40 characters without an exponent are within every limit: the check runs for the rare rest.
    if len(text) > 40 or exponent:
        problem = number_problem(number)
        if problem is not None:
            raise ValueError(f"number {text[:40]} {problem}")
    return number


def parse_uuid(value: Any) -> uuid.UUID | None:
    # One regular expression instead of parsing and printing the UUID back: it runs for every event.
    if not isinstance(value, str) or _CANONICAL_UUID.fullmatch(value) is None:
        return None
    return uuid.UUID(value)


def parse_version(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_VERSION else None


def key_from(
    quota_id: Any,
    version: Any,
    is_delete: bool,
    *,
    quota_id_at: str = "data.quota_id",
    version_at: str = "metadata.version",
) -> EventKey:
    """The inbox key from raw values; UnkeyableEvent names each bad one by where it was found."""
    parsed_id = parse_uuid(quota_id)
    parsed_version = parse_version(version)
    problems = []
    if parsed_id is None:
        problems.append(f"{quota_id_at} must be a UUID string")
    if parsed_version is None:
        problems.append(f"{version_at} must be an integer between 0 and {MAX_VERSION}")
    if parsed_id is None or parsed_version is None:
        raise UnkeyableEvent("; ".join(problems))
    return EventKey(parsed_id, parsed_version, is_delete)


def key_titan_event(event: Any) -> EventKey:
    """The inbox key of a Titan event: data.quota_id, metadata.version, eventType == DELETE."""
    if not isinstance(event, dict):
        raise UnkeyableEvent(f"an event must be a JSON object, not {json_type(event)}")
    data, metadata = event.get("data"), event.get("metadata")
    return key_from(
        data.get("quota_id") if isinstance(data, dict) else None,
        metadata.get("version") if isinstance(metadata, dict) else None,
        event.get("eventType") == "DELETE",
    )


def validate_titan_event(event: dict[str, Any]) -> QuotaRow | None:
    """The quota row an INSERT/UPDATE sets, None for a DELETE; InvalidEvent lists every reason."""
    errors: list[str] = []
    event_type = event.get("eventType")
    if event_type not in EVENT_TYPES:
        errors.append(f"eventType must be one of {', '.join(EVENT_TYPES)}, got {show_value(event_type)}")
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent([*errors, "data must be an object"])
    if event_type == "DELETE":
        # A delete needs only its key, which the inbox already checked.
        if errors:
            raise InvalidEvent(errors)
        return None
    return quota_row(data, errors)


class InvalidEvent(ValueError):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def quota_row(data: Mapping[str, Any], errors: list[str] | None = None) -> QuotaRow:
    """The one validation of a quota's fields, whatever format carried them.

    data holds the fields by their Titan names (period_month as date text, decimals as Decimal, int or
    numeric text, updated_at as ISO-8601 text). errors are reasons already found by the caller (for
    example while decoding); InvalidEvent lists them with every reason found here.
    """
    errors = [] if errors is None else errors
    counterparty_id = _required_text(data, "counterparty_id", errors)
    direction = data.get("direction")
    if direction not in DIRECTIONS:
        errors.append(f"direction must be BUY or SELL, got {show_value(direction)}")
    period_month = _first_of_month(data.get("period_month"), errors)
    qty_t = _decimal(data, "qty_t", errors, required=True)
    if qty_t is not None and qty_t <= 0:
        errors.append(f"qty_t must be positive, got {qty_t}")
    tolerance_pct = _decimal(data, "tolerance_pct", errors, required=False)
    if tolerance_pct is not None and not 0 <= tolerance_pct <= 100:  # Decimal and int compare exactly
        errors.append(f"tolerance_pct must be between 0 and 100, got {tolerance_pct}")
    incoterm_code = data.get("incoterm_code")
    if incoterm_code is not None and not isinstance(incoterm_code, str):
        errors.append(f"incoterm_code must be a string or null, got {json_type(incoterm_code)}")
    elif incoterm_code is not None and not _safe_text(incoterm_code, "incoterm_code", errors):
        incoterm_code = None
    metal_code = _required_text(data, "metal_code", errors)
    source_updated_at = updated_at(data.get("updated_at"), errors)
    if errors:
        raise InvalidEvent(errors)
    assert counterparty_id is not None
    assert metal_code is not None
    assert period_month is not None
    assert qty_t is not None
    assert isinstance(direction, str)
    return QuotaRow(
        counterparty_id=counterparty_id,
        direction=direction,
        period_month=period_month,
        qty_t=qty_t,
        tolerance_pct=tolerance_pct,
        incoterm_code=incoterm_code,
        metal_code=metal_code,
        source_updated_at=source_updated_at,
    )


def _required_text(data: Mapping[str, Any], field: str, errors: list[str]) -> str | None:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{field} is required (a non-empty string), got {show_value(value)}")
        return None
    return value if _safe_text(value, field, errors) else None


def _safe_text(value: str, field: str, errors: list[str]) -> bool:
    """No control character (NUL included), bidi control or lone surrogate in a quota's text field:
    such text forges rows and reorders what an operator's terminal shows (inbox/text.py)."""
    unsafe = unsafe_character(value)
    if unsafe is not None:
        errors.append(f"{field} holds a control character ({unsafe}), which a quota's text may not")
    return unsafe is None


def _decimal(data: Mapping[str, Any], field: str, errors: list[str], *, required: bool) -> Decimal | None:
    """Exact decimals from JSON numbers (read as Decimal, never float) or numeric strings."""
    value = data.get(field)
    if value is None:
        if required:
            errors.append(f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        errors.append(f"{field} must be a number, got {json_type(value)}")
        return None
    if isinstance(value, str) and len(value) > MAX_NUMBER_DIGITS + 100:
        errors.append(f"{field} has more than {MAX_NUMBER_DIGITS} digits")
        return None
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        errors.append(f"{field} must be a number, got {show_value(value)}")
        return None
    if not number.is_finite():
        errors.append(f"{field} must be finite, got {show_value(value)}")
        return None
    problem = number_problem(number)
    if problem is not None:
        errors.append(f"{field} {problem}")
        return None
    return number


def _first_of_month(value: Any, errors: list[str]) -> date | None:
    """YYYY-MM-DD[...] -> YYYY-MM-01 from the text's own digits; no time zone can shift the month."""
    match = _DATE_PREFIX.match(value) if isinstance(value, str) else None
    if match is None:
        errors.append(f"period_month must be a date YYYY-MM-DD, got {show_value(value)}")
        return None
    year, month, day = (int(part) for part in match.groups())
    try:
        date(year, month, day)
    except ValueError:
        errors.append(f"period_month is not a real date: {show_value(value)}")
        return None
    return date(year, month, 1)


def updated_at(value: Any, errors: list[str]) -> datetime | None:
    """Titan's updated_at; optional: ISO 8601 in the shapes of ISO_TIMESTAMP, RFC 3339's lowercase
    "t" and "z" included (PostgreSQL takes them too). A timestamp without an offset is read as UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        errors.append(f"updated_at must be an ISO-8601 timestamp, got {json_type(value)}")
        return None
    try:
        parsed = (
            datetime.fromisoformat(value[:-1] + "Z" if value.endswith("z") else value)
            if ISO_TIMESTAMP.fullmatch(value)
            else None
        )
    except ValueError:
        parsed = None
    if parsed is None:
        errors.append(f"updated_at must be an ISO-8601 timestamp, got {show_value(value)}")
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    # What PostgreSQL's timestamptz takes, exactly (checked against the server in the tests): an
    # offset within +-15:59:59 in whole seconds, and an instant within years 1 to 9999 in UTC (which
    # Python can read back).
    offset = parsed.utcoffset()
    assert offset is not None
    if abs(offset) > MAX_UTC_OFFSET or offset.microseconds:
        errors.append(
            "updated_at has a time-zone offset PostgreSQL refuses (it takes whole seconds within "
            f"+-15:59:59): {show_value(value)}"
        )
        return None
    try:
        # An offset of at most 16 hours can only leave the years 1 to 9999 from their first or last day.
        if parsed.year in (1, 9999):
            parsed.astimezone(UTC)
    except OverflowError:
        errors.append(f"updated_at is outside the years 1 to 9999 in UTC: {show_value(value)}")
        return None
    return parsed


def json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float() | Decimal():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def show_value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json_type(value)
    return text if len(text) <= 80 else text[:77] + "..."
