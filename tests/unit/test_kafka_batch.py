"""Sorting consumed messages into events, rejects and skips, and the offsets a batch completes."""

from __future__ import annotations

import json
import uuid

from confluent_kafka import Message

from inbox.events import EventKey
from inbox.kafka.batch import Batch, Event, Reject, header_list, parsed
from tests.cdc_events import debezium_event
from tests.helpers import titan_event, to_json

QUOTA_ID = uuid.UUID("0b7c3c1e-1f5e-4f65-8a4e-2f1f0f6d9a10")
TOPIC = "titan.quota"


def message(
    partition: int,
    offset: int,
    value: bytes | None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> Message:
    return Message(topic=TOPIC, partition=partition, offset=offset, key=b"k", value=value, headers=headers)


def titan(version: int) -> bytes:
    return to_json(titan_event(QUOTA_ID, version)).encode()


def test_messages_are_sorted_and_each_partition_completes_at_its_highest_offset() -> None:
    batch = Batch()
    for m in [
        message(0, 7, titan(2)),
        message(0, 5, titan(1)),  # offsets within a batch need not arrive in order
        message(1, 3, None),  # tombstone
        message(1, 4, to_json(debezium_event(QUOTA_ID, 0, "t")).encode()),
        message(2, 9, b"{oops"),
        message(2, 10, b"[" + titan(3) + b"]"),
        message(2, 11, b"null"),  # a JSON null is no event either
    ]:
        batch.add(m)

    assert [e.key for e in batch.events] == [EventKey(QUOTA_ID, 2, False), EventKey(QUOTA_ID, 1, False)]
    assert [(r.origin.offset, r.reason.split(":")[0]) for r in batch.rejects] == [
        (9, "not valid JSON"),
        (10, "a message holds one event, not an array"),
    ]
    assert batch.skips == [((TOPIC, 1), "tombstone"), ((TOPIC, 1), "truncate"), ((TOPIC, 2), "tombstone")]
    assert batch.next_offsets == {(TOPIC, 0): 8, (TOPIC, 1): 5, (TOPIC, 2): 12}


def test_a_revoked_partition_leaves_the_batch_entirely() -> None:
    batch = Batch()
    for m in [message(0, 1, titan(1)), message(1, 1, titan(2)), message(1, 2, b"x"), message(1, 3, None)]:
        batch.add(m)

    batch.drop({(TOPIC, 1)})

    assert [e.origin.partition for e in batch.events] == [0]
    assert (batch.rejects, batch.skips) == ([], [])
    assert batch.next_offsets == {(TOPIC, 0): 2}
    batch.drop({(TOPIC, 0)})
    assert not batch


def test_stored_text_is_the_message_verbatim() -> None:
    data = f'{{"quota_id":"{QUOTA_ID}","qty_t":1.50}}'
    text = f'{{"eventType":"UPDATE","data":{data},"metadata":{{"version":4}}}}'
    batch = Batch()
    batch.add(message(0, 0, text.encode()))

    stored = parsed(batch.events)
    assert stored.keys == [EventKey(QUOTA_ID, 4, False)]
    assert stored.array_text == f"[{text}]"  # PostgreSQL parses these digits, not Python's reprint
    assert json.loads(stored.array_text)[0]["data"]["qty_t"] == 1.5


def test_a_reject_keeps_the_kafka_key_headers_and_raw_bytes() -> None:
    batch = Batch()
    raw = b"\xff not UTF-8"
    batch.add(message(3, 42, raw, headers=[("trace", b"abc"), ("bin", b"\x00\xff"), ("none", None)]))

    (reject,) = batch.rejects
    assert isinstance(reject, Reject)
    assert (reject.raw, reject.origin.key, reject.origin.offset) == (raw, b"k", 42)
    assert reject.reason == "not UTF-8: invalid start byte at byte 0"
    assert reject.origin.headers == [
        {"key": "trace", "value": "abc"},
        {"key": "bin", "value_base64": "AP8="},
        {"key": "none", "value": None},
    ]


def test_headers_as_text_only_when_jsonb_can_hold_them() -> None:
    assert header_list(None) == []
    assert header_list({"k": "v"}) == [{"key": "k", "value": "v"}]
    assert header_list([("nul\x00name", b"ok")]) == [{"key_base64": "bnVsAG5hbWU=", "value": "ok"}]


def test_an_event_that_cannot_be_keyed_is_a_reject_with_the_reason() -> None:
    batch = Batch()
    batch.add(message(0, 0, b'{"before": null, "after": {"quota_id": "x", "version": 1}, "op": "c"}'))

    (reject,) = batch.rejects
    assert reject.reason == "after.quota_id must be a UUID string"
    assert not any(isinstance(item, Event) for item in batch.events)
