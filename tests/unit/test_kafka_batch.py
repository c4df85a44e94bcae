"""Sorting consumed messages into events, rejects and skips, and the offsets a batch completes."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import inbox.kafka.batch
from inbox.edge import decode_columns
from inbox.events import EventKey
from inbox.kafka.batch import Batch, Event, Origin, Partition, Reject, TitanRun, classify, header_list, parsed
from inbox.store import typed_batch
from tests.cdc_events import debezium_event
from tests.fuzz_strategies import EXAMPLES, examples, items, render
from tests.helpers import titan_event, to_json
from tests.unit.test_edge import exact, titan_texts

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


# -- a batch sorted at once (TitanRun) is the batch sorted message by message ----------------------


def one_by_one(messages: list[Message]) -> tuple[list[Event], list[Reject], list[tuple[Partition, str]]]:
    """What classify() makes of each message alone: the per-message path, the reference."""
    events: list[Event] = []
    rejects: list[Reject] = []
    skips: list[tuple[Partition, str]] = []
    for m in messages:
        origin = Origin(
            m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), header_list(m.headers())
        )
        item = classify(origin, m.value())
        if isinstance(item, Event):
            events.append(item)
        elif isinstance(item, Reject):
            rejects.append(item)
        else:
            skips.append((origin.where, item))
    return events, rejects, skips


def stored_form(events: Sequence[Event], *, deletes_typed: bool = False) -> tuple[Any, ...]:
    """What the store sends PostgreSQL for these events (quota ids as text either way), exactly.
    deletes_typed: a Titan delete counts as typed, as the edge's columns send it (edge.decode_columns)."""
    batch = parsed(events)
    typed = typed_batch(batch)
    flags = typed.typed
    if deletes_typed:
        flags = [t or d for t, d in zip(flags, typed.keys.is_delete, strict=True)]
    columns = {name: [repr(v) for v in column] for name, column in typed.columns.items()}
    return (
        batch.array_text,
        [str(q) for q in typed.keys.quota_ids],
        typed.keys.versions,
        typed.keys.is_delete,
        typed.source_lsns,
        flags,
        columns,
        batch.keys,
        [exact(row) for row in batch.rows],
    )


def check_sorted_at_once(values: list[bytes | None]) -> Batch:
    messages = [
        Message(topic=TOPIC, partition=n % 2, offset=n, key=b"k%d" % n, value=v, headers=[("h", b"%d" % n)])
        for n, v in enumerate(values)
    ]
    batch = Batch()
    for m in messages:
        batch.add(m)
    events, rejects, skips = one_by_one(messages)

    assert [(e.origin, e.text, e.key, exact(e.row)) for e in batch.events] == [
        (e.origin, e.text, e.key, exact(e.row)) for e in events
    ]
    assert batch.rejects == rejects
    assert batch.skips == skips
    columns = isinstance(batch.events, TitanRun)
    assert stored_form(batch.events) == stored_form(events, deletes_typed=columns)
    # halves, as the store's bisect takes them
    middle = len(batch.events) // 2
    assert [e.key for e in batch.events[middle:]] == [e.key for e in events[middle:]]
    return batch


def test_a_batch_of_titan_events_and_tombstones_stays_columns_and_stores_as_one_by_one() -> None:
    values: list[bytes | None] = [titan(1), None, to_json(titan_event(QUOTA_ID, 2, "DELETE")).encode()]
    values += [to_json(titan_event(uuid.uuid4(), 7, tolerance_pct=None, incoterm_code=None)).encode(), None]

    batch = check_sorted_at_once(values)

    assert isinstance(batch.events, TitanRun) and len(batch.events) == 3
    assert batch.next_offsets == {(TOPIC, 0): 5, (TOPIC, 1): 4}


@pytest.mark.parametrize(
    "other",
    [
        b"{oops",
        b"\xff",
        b"[" + titan(3) + b"]",
        to_json(debezium_event(QUOTA_ID, 4, "u")).encode(),
        to_json(debezium_event(QUOTA_ID, 0, "t")).encode(),
        titan(5).replace(b'"BUY"', b'"HOLD"'),  # keyed, invalid: stored for a dead letter
        titan(6).replace(b'"qty_t": ', b'"qty_t" : '),  # valid, read by the slow path
    ],
)
def test_one_other_message_sorts_the_whole_batch_message_by_message(other: bytes) -> None:
    batch = check_sorted_at_once([titan(1), None, other, titan(2)])

    assert not isinstance(batch.events, TitanRun)


def test_a_single_message_holding_an_array_is_a_reject_not_its_elements() -> None:
    batch = check_sorted_at_once([b"[" + titan(3) + b"," + titan(4) + b"]"])

    assert [r.reason for r in batch.rejects] == ["a message holds one event, not an array"]


def test_messages_added_after_the_batch_was_read_join_it_in_order() -> None:
    batch = Batch()
    batch.add(message(0, 1, titan(1)))
    assert isinstance(batch.events, TitanRun)
    batch.add(message(0, 2, titan(2)))
    batch.add(message(0, 3, None))

    assert [e.key.version for e in batch.events] == [1, 2]
    assert batch.skips == [((TOPIC, 0), "tombstone")]
    assert batch.next_offsets == {(TOPIC, 0): 4}


@settings(max_examples=examples(EXAMPLES), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            titan_texts().map(lambda text: text.encode("utf-8", "surrogatepass")),
            st.just(None),
            st.integers(0, 19).flatmap(
                lambda n: st.binary(max_size=40) if n == 19 else items.map(lambda i: render(i.value).encode())
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_batch_sorted_at_once_as_message_by_message(values: list[bytes | None]) -> None:
    batch = check_sorted_at_once(values)
    event("sorted at once" if isinstance(batch.events, TitanRun) else "message by message")


# Titan events the columns take, of many quotas, versions, quantities and tolerances, deletes too
clean_titan = st.builds(
    lambda quota_id, version, event_type, qty, tolerance: to_json(
        titan_event(quota_id, version, event_type, qty_t=qty, tolerance_pct=tolerance)
    ),
    st.uuids(),
    st.integers(0, 2**63 - 1),
    st.sampled_from(["INSERT", "UPDATE", "DELETE"]),
    st.decimals(min_value=Decimal("0.0001"), max_value=10**12, places=4),
    st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=2)),
)


@settings(max_examples=examples(EXAMPLES), deadline=None)
@given(
    st.lists(st.one_of(clean_titan, clean_titan, clean_titan, titan_texts()), min_size=1, max_size=6),
    st.lists(st.booleans(), max_size=6),
)
def test_titan_batches_sorted_at_once_as_message_by_message(texts: list[str], tombstones: list[bool]) -> None:
    values: list[bytes | None] = [text.encode("utf-8", "surrogatepass") for text in texts]
    for at, tombstone in enumerate(tombstones):
        if tombstone:
            values.insert(at, None)
    batch = check_sorted_at_once(values)
    event("sorted at once" if isinstance(batch.events, TitanRun) else "message by message")


def test_a_drop_while_the_store_thread_sorts_the_batch_waits_for_the_sort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost partition is dropped on the consumer's thread while the store thread may be sorting the
    very batch: the drop waits for the sort, so it removes what the sort found, and nothing is sorted
    twice."""
    sorting, release = threading.Event(), threading.Event()

    def slow_decode(texts: Sequence[str]) -> Any:
        sorting.set()
        release.wait()
        return decode_columns(texts)

    monkeypatch.setattr(inbox.kafka.batch, "decode_columns", slow_decode)
    batch = Batch()
    for n in range(4):
        batch.add(message(n % 2, n, titan(n + 1)))
    store_thread = threading.Thread(target=lambda: batch.events)
    store_thread.start()
    sorting.wait()
    consumer_thread = threading.Thread(target=batch.drop, args=({(TOPIC, 1)},))
    consumer_thread.start()
    consumer_thread.join(0.2)  # with the drop waiting for the sort, it is still running here
    release.set()
    store_thread.join()
    consumer_thread.join()

    assert [(e.origin.partition, e.key.version) for e in batch.events] == [(0, 1), (0, 3)]
    assert batch.next_offsets == {(TOPIC, 0): 3}


def test_a_bug_in_reading_columns_sorts_the_batch_message_by_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(texts: Sequence[str]) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(inbox.kafka.batch, "decode_columns", broken)

    batch = check_sorted_at_once([titan(1), None, titan(2)])

    assert not isinstance(batch.events, TitanRun) and len(batch.events) == 2
    assert "could not read a batch column by column" in caplog.text
