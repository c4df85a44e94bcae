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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from confluent_kafka import Message

from inbox.edge import EdgeColumns, decode_columns, decode_event, is_array
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


class Batch:
    """Messages consumed but not yet stored, and the offsets they complete per partition.

    add() only takes a message; the batch is sorted into events, rejects and skips when one of them
    is first read, all its messages at once: when every message is a tombstone or a Titan event that
    edge.decode_columns takes, the events stay columns (TitanRun), with no object per message; any
    other message sends the batch through classify(), message by message, with the same result."""

    def __init__(
        self,
        events: Sequence[Event] = (),
        rejects: Sequence[Reject] = (),
        skips: Sequence[tuple[Partition, str]] = (),  # (where, "tombstone"/"truncate")
        next_offsets: dict[Partition, int] | None = None,
    ) -> None:
        self._unsorted: list[Message] = []
        # sorting runs on the store thread, while a rebalance callback on the consumer's thread may drop
        self._lock = threading.Lock()
        self._events: Sequence[Event] = list(events)
        self._rejects, self._skips = list(rejects), list(skips)
        # the next offset to consume per partition: what to commit once this batch is stored
        self.next_offsets: dict[Partition, int] = dict(next_offsets or {})

    def add(self, message: Message) -> None:
        self._unsorted.append(message)
        where, offset = (message.topic() or "", message.partition() or 0), (message.offset() or 0) + 1
        if offset > self.next_offsets.get(where, 0):
            self.next_offsets[where] = offset

    @property
    def events(self) -> Sequence[Event]:
        with self._lock:
            self._sort()
            return self._events

    @property
    def rejects(self) -> list[Reject]:
        with self._lock:
            self._sort()
            return self._rejects

    @property
    def skips(self) -> list[tuple[Partition, str]]:
        with self._lock:
            self._sort()
            return self._skips

    def drop(self, partitions: set[Partition]) -> None:
        """Forget what came from partitions this consumer no longer owns: their next owner reads it again."""
        with self._lock:
            self._sort()
            self._events = [e for e in self._events if e.origin.where not in partitions]
            self._rejects = [r for r in self._rejects if r.origin.where not in partitions]
            self._skips = [s for s in self._skips if s[0] not in partitions]
            self.next_offsets = {p: o for p, o in self.next_offsets.items() if p not in partitions}

    def __bool__(self) -> bool:
        return bool(self.next_offsets)

    def _sort(self) -> None:
        """Sort what was added since the last sort (under the lock)."""
        if not self._unsorted:
            return
        messages, self._unsorted = self._unsorted, []
        values = [message.value() for message in messages]
        run = None if self._events else _titan_run(messages, values)
        if run is not None:
            self._events = run
            tombstones = [m for m, v in zip(messages, values, strict=True) if v is None]
            self._skips += [(_where(m), "tombstone") for m in tombstones]
            return
        events = list(self._events)  # more messages after a sort (rare): the run becomes events
        for message, value in zip(messages, values, strict=True):
            origin = _origin(message)
            item = classify(origin, value)
            if isinstance(item, Event):
                events.append(item)
            elif isinstance(item, Reject):
                self._rejects.append(item)
            else:
                self._skips.append((origin.where, item))
        self._events = events


class TitanRun(Sequence[Event]):
    """A batch's events when every message is a Titan event edge.decode_columns takes (tombstones
    aside): their columns as the store sends them (parsed()), and each message's Event, the one
    classify() gives, built only when asked for (a refused event's bisect, tests)."""

    def __init__(self, messages: list[Message], texts: list[str], columns: EdgeColumns) -> None:
        self._messages, self._texts, self._columns = messages, texts, columns
        self._keys: list[EventKey] | None = None

    @classmethod
    def of(cls, messages: list[Message], values: list[bytes | None]) -> TitanRun | None:
        if None in values:
            messages = [m for m, v in zip(messages, values, strict=True) if v is not None]
        present = [v for v in values if v is not None]
        if not present:
            return None
        try:
            texts = [value.decode("utf-8") for value in present]
        except UnicodeDecodeError:
            return None
        if len(texts) == 1 and is_array(texts[0]):  # decode_columns would take its elements
            return None
        columns = decode_columns(texts)
        if columns is None or len(columns) != len(texts):
            return None
        return cls(messages, texts, columns)

    def parsed(self) -> ParsedBatch:
        return ParsedBatch.of_columns(self._columns, "[" + ",".join(self._texts) + "]")

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._keys is None:
            self._keys = self._columns.keys()
        origin, row = _origin(self._messages[index]), self._columns.rows[index]
        return Event(origin, self._texts[index], self._keys[index], row)


def _titan_run(messages: list[Message], values: list[bytes | None]) -> TitanRun | None:
    """TitanRun.of, which never raises: what nothing foresaw sends the batch message by message
    (classify() then decides each message), and is an error in the log, since it means a bug here."""
    try:
        return TitanRun.of(messages, values)
    except Exception:
        log.exception("could not read a batch column by column; its messages are read one by one")
        return None


def _where(message: Message) -> Partition:
    return (message.topic() or "", message.partition() or 0)


def _origin(message: Message) -> Origin:
    return Origin(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        header_list(message.headers()),
    )


def parsed(events: Sequence[Event]) -> ParsedBatch:
    """The events as inbox.store.store takes them: keys, and the raw texts as one JSON array."""
    if isinstance(events, TitanRun):
        return events.parsed()
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
