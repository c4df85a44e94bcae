"""The claim never reads a payload it cannot afford (issue 12, H2 and M4's nesting).

Rows are stored here as the owner, straight into the inbox: the HTTP door bounds numbers and
nesting, but the sink's trigger, a replay or SQL by hand do not, and rows stored before the door
did must not stop the workers either.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from inbox.db.connect import DictConnection
from inbox.settings import Settings
from tests.helpers import drain, event_status, ingest, quota, titan_event, to_json


def _store_raw(db: DictConnection, quota_id: uuid.UUID, payload_text: str) -> None:
    db.execute(
        "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source)"
        " VALUES (%s, 1, false, %s::jsonb, 'sink')",
        [quota_id, payload_text],
    )


def _with_extra(quota_id: uuid.UUID, extra_json: str) -> str:
    """A valid Titan event for quota_id whose data carries one more field, given as raw JSON."""
    text = to_json(titan_event(quota_id, 1, "INSERT"))
    return text[:-1] + f', "extra": {extra_json}}}'


def _neighbours_applied_poison_dead(
    db: DictConnection, poison: uuid.UUID, good: list[uuid.UUID]
) -> dict[str, Any]:
    for q in good:
        assert quota(db, q) is not None, "a neighbour of the poison was not applied"
    assert quota(db, poison) is None
    assert event_status(db, poison, 1) == "dead"
    # not event_data: printing it is what the poison makes costly
    letters = db.execute(
        "SELECT error_class, error_message, retry_count FROM public.quota_processing_errors"
        " WHERE quota_id = %s",
        [poison],
    ).fetchall()
    assert len(letters) == 1
    return letters[0]


def test_a_payload_that_prints_far_larger_than_it_is_stored_is_not_read(db: DictConnection, dsn: str) -> None:
    """1e131071 is 8 bytes in jsonb and 131,072 digits each time PostgreSQL prints it: about 8,200 of
    them (a kilobyte stored, compressed) pass the 1 GB limit of a string, and the claim, which
    printed payloads, failed, rolled back without spending an attempt, and every worker retried the
    same batch forever. Now the claim returns keys only and the payloads are streamed one by one: a
    statement that fails on one row hands over every row before it and the row alone is dead-lettered
    with its SQLSTATE (not run here: printing 1 GB takes this machine 30 s); one that prints to more
    than a worker reads is dead-lettered without being parsed (here: 20 of them, 2.6 MB)."""
    good = [uuid.uuid4() for _ in range(3)]
    poison = uuid.uuid4()
    ingest(db, [titan_event(good[0], 1, "INSERT")])
    _store_raw(db, poison, _with_extra(poison, "[" + ",".join(["1e131071"] * 20) + "]"))  # 2.6 MB printed
    ingest(db, [titan_event(q, 1, "INSERT") for q in good[1:]])

    drain(dsn, Settings(max_body_bytes=64 * 1024))

    letter = _neighbours_applied_poison_dead(db, poison, good)
    assert letter["error_class"] == "unreadable"
    assert "prints to" in letter["error_message"]
    assert letter["retry_count"] == 1  # the claim spent an attempt


def test_a_payload_stored_larger_than_a_worker_reads_is_not_printed(db: DictConnection, dsn: str) -> None:
    good = [uuid.uuid4() for _ in range(2)]
    poison = uuid.uuid4()
    ingest(db, [titan_event(good[0], 1, "INSERT")])
    _store_raw(db, poison, _with_extra(poison, json.dumps(uuid.uuid4().hex * 20_000)))  # 640 kB, random
    ingest(db, [titan_event(good[1], 1, "INSERT")])

    drain(dsn, Settings(max_body_bytes=64 * 1024))

    letter = _neighbours_applied_poison_dead(db, poison, good)
    assert letter["error_class"] == "unreadable"
    assert "stored in" in letter["error_message"]


def test_a_payload_nested_5000_deep_fails_neither_the_claim_nor_its_batch(
    db: DictConnection, dsn: str
) -> None:
    """Python's JSON reader gives up around 1,000 levels (RecursionError): raised while the worker
    loaded the claimed batch, it failed the whole batch, claim after claim."""
    good = [uuid.uuid4() for _ in range(4)]
    poison = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT") for q in good[:2]])
    _store_raw(db, poison, _with_extra(poison, "[" * 5000 + "]" * 5000))
    ingest(db, [titan_event(q, 1, "INSERT") for q in good[2:]])

    counts = drain(dsn)

    letter = _neighbours_applied_poison_dead(db, poison, good)
    assert counts.applied == 4
    assert letter["error_class"] == "unreadable"
    assert "RecursionError" in letter["error_message"]
