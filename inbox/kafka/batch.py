"""Consumed Kafka messages, sorted into what the inbox stores: events, rejects, and what is skipped.

Per message value (one event per message):
* a tombstone (null value; Debezium sends one after each delete) or a Debezium truncate: skipped;
  its offset still counts as done;
* UTF-8 JSON that formats.key_event can key: an event, stored raw, source 'kafka';
* anything else (not UTF-8, not JSON, a JSON array, no UUID quota_id or integer version, an unknown
  Debezium op): a reject, stored verbatim in inbox.rejects with the reason.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from inbox.edge import decode_event
from inbox.events import EventKey, QuotaRow, UnkeyableEvent, json_type
from inbox.formats import key_event, skip_reason, titan_row
from inbox.ingest import ParsedBatch, loads
from inbox.text import shorten

log = logging.getLogger(__name__)

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from, with its Kafka key and headers (kept for a reject)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    headers: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def where(self) -> Partition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Event:
    origin: Origin
    text: str
    key: EventKey
    row: QuotaRow | None = None  # as ParsedBatch.rows (classify fills it)


@dataclass(frozen=True, slots=True)
class Reject:
    origin: Origin
    raw: bytes
    reason: str


@dataclass
class Batch:
    """Messages consumed but not yet stored, and the offsets they complete per partition."""

    events: list[Event] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skips: list[tuple[Partition, str]] = field(default_factory=list)  # (where, "tombstone"/"truncate")
    # the next offset to consume per partition: what to commit once this batch is stored
    next_offsets: dict[Partition, int] = field(default_factory=dict)

    def add(self, message: Message) -> None:
        origin = Origin(
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            message.key(),
            header_list(message.headers()),
        )
        item = classify(origin, message.value())
        if isinstance(item, Event):
            self.events.append(item)
        elif isinstance(item, Reject):
            self.rejects.append(item)
        else:
            self.skips.append((origin.where, item))
        self.next_offsets[origin.where] = max(self.next_offsets.get(origin.where, 0), origin.offset + 1)

    def drop(self, partitions: set[Partition]) -> None:
        """Forget what came from partitions this consumer no longer owns: their next owner reads it again."""
        self.events = [e for e in self.events if e.origin.where not in partitions]
        self.rejects = [r for r in self.rejects if r.origin.where not in partitions]
        self.skips = [s for s in self.skips if s[0] not in partitions]
        self.next_offsets = {p: o for p, o in self.next_offsets.items() if p not in partitions}

    def __bool__(self) -> bool:
        return bool(self.next_offsets)


def parsed(events: list[Event]) -> ParsedBatch:
    """The events as inbox.store.store takes them: keys, and the raw texts as one JSON array."""
    return ParsedBatch(
        keys=[e.key for e in events],
        array_text="[" + ",".join(e.text for e in events) + "]",
        rows=[e.row for e in events],
    )


def classify(origin: Origin, value: bytes | None) -> Event | Reject | str:
    """An Event, a Reject, or the reason the message is skipped ("tombstone", "truncate").

    Never raises: a message nothing foresaw becomes a reject too (and an error in the log, since it
    means a bug here), so that one message can never stop the partition behind it."""
    if value is None:
        return "tombstone"
    try:
        return _classify(origin, value)
    except Exception as exc:
        log.exception(
            "could not classify a message; it is stored as a reject", extra={"offset": origin.offset}
        )
        return Reject(origin, value, shorten(f"could not be read ({type(exc).__name__}): {exc}"))


def _classify(origin: Origin, value: bytes) -> Event | Reject | str:
    def reject(reason: str) -> Reject:
        return Reject(origin, value, shorten(reason))

    try:
        text = value.decode("utf-8")
        fast = decode_event(text)  # inbox/edge.py; None: the slow path below decides
        if fast is not None:
            return Event(origin, text, fast.key, fast.row)
        parsed_value = loads(text)
    except UnicodeDecodeError as exc:
        return reject(f"not UTF-8: {exc.reason} at byte {exc.start}")
    except (ValueError, RecursionError) as exc:
        return reject(f"not valid JSON: {exc}")
    skip = skip_reason(parsed_value)
    if skip is not None:
        return skip
    if isinstance(parsed_value, list):
        return reject(f"a message holds one event, not {json_type(parsed_value)}")
    try:
        return Event(origin, text, key_event(parsed_value), titan_row(parsed_value))
    except UnkeyableEvent as exc:
        return reject(str(exc))


def header_list(headers: Any) -> list[dict[str, str | None]]:
    """Kafka headers as JSON: text where it is UTF-8 without NUL (jsonb cannot hold NUL), else base64."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    return [{**_text_or_base64("key", name), **_text_or_base64("value", value)} for name, value in pairs]


def _text_or_base64(label: str, value: str | bytes | None) -> dict[str, str | None]:
    if value is None:
        return {label: None}
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return {f"{label}_base64": base64.b64encode(raw).decode("ascii")}
    return {label: text}
