"""Issue 12 against the real PostgreSQL: what the door lets in is what the database takes, what the
database refuses costs one event only, and any byte string on the topic is stored or rejected.

H1: any bytes through the consumer's classify and store path; H2: how much an accepted body grows
when PostgreSQL prints it; H4: the offsets Python takes are exactly those PostgreSQL takes, and a
batch with many events the database refuses applies every valid neighbour.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inbox.apply.prepare
import inbox.store
from inbox.apply.prepare import Typed, typed_event
from inbox.db.connect import DictConnection
from inbox.events import InvalidEvent, quota_row
from inbox.formats import key_event
from inbox.ingest import BadBatch, ParsedBatch, parse_texts
from inbox.kafka.batch import Batch, Event, Origin, TitanRun
from inbox.kafka.store import store_batch
from inbox.settings import Settings
from inbox.store import store_events
from tests.fuzz_strategies import EDGE_NUMBERS, EXAMPLES, items, json_values, render
from tests.helpers import dead_letters, drain, ingest, quota, titan_event, to_json

DB_EXAMPLES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
TOPIC = "titan.quota"
_offsets = itertools.count()


def _counts(db: DictConnection) -> tuple[int, int]:
    """(inbox rows, rejects)."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM inbox.quota_events) AS events,"
        " (SELECT count(*) FROM inbox.rejects) AS rejects"
    ).fetchone()
    assert row is not None
    return int(row["events"]), int(row["rejects"])


# -- H1: any byte string through the consumer's path ----------------------------------------------

message_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_values.map(lambda value: render(value).encode("utf-8", "surrogatepass")),
    items.map(lambda item: render(item.value).encode("utf-8", "surrogatepass")),
)


@given(st.lists(message_values, min_size=1, max_size=8))
@DB_EXAMPLES
def test_any_bytes_on_the_topic_are_stored_rejected_or_skipped_never_a_crash(
    db: DictConnection, values: list[bytes | None]
) -> None:
    batch = Batch()
    for value in values:
        batch.add(Message(topic=TOPIC, partition=0, offset=next(_offsets), key=b"k", value=value))
    inbox_before, rejects_before = _counts(db)

    stored = store_batch(db, batch)

    assert stored.accepted + stored.duplicates + stored.rejected + len(batch.skips) == len(values)
    inbox_after, rejects_after = _counts(db)
    assert (inbox_after - inbox_before, rejects_after - rejects_before) == (stored.accepted, stored.rejected)
    # every rejected message is kept verbatim; none is a bug classify() swallowed
    assert not [r for r in batch.rejects if r.reason.startswith("could not be read")]


def test_an_event_postgresql_refuses_is_halved_out_as_a_reject(db: DictConnection) -> None:
    """The safety net behind the door: a value Python took and PostgreSQL refuses (a lone surrogate
    slipped past loads() here on purpose) costs that message only."""
    texts = [to_json(titan_event(uuid.uuid4(), 1)) for _ in range(5)]
    poison = to_json(titan_event(uuid.uuid4(), 1, counterparty_id="@@")).replace("@@", "\\ud800")
    keyed = [*texts[:2], poison, *texts[2:]]
    batch = Batch(
        events=[
            Event(Origin(TOPIC, 1, n), text, key_event(json.loads(text))) for n, text in enumerate(keyed)
        ],
        next_offsets={(TOPIC, 1): len(keyed)},
    )

    stored = store_batch(db, batch)

    assert (stored.accepted, stored.rejected) == (5, 1)
    (reject,) = db.execute('SELECT reason, "offset" FROM inbox.rejects WHERE "partition" = 1').fetchall()
    assert reject["offset"] == 2 and reject["reason"].startswith("PostgreSQL refused the event")


def test_a_refused_event_of_a_batch_read_as_columns_is_halved_out_with_its_key_and_headers(
    db: DictConnection,
) -> None:
    """A Titan batch the consumer reads column by column (kafka.batch.TitanRun): should PostgreSQL
    refuse one of its events (here a trigger of this test refuses one quota), the bisect builds that
    message's Event and it becomes a reject with its Kafka key, headers and bytes; the rest is stored."""
    refused = uuid.uuid4()
    db.execute(
        "CREATE FUNCTION inbox.test_refuse() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path = pg_catalog, pg_temp AS $$ BEGIN"
        f" IF NEW.quota_id = '{refused}' THEN RAISE invalid_parameter_value USING MESSAGE = 'refused here';"
        " END IF; RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER test_refuse BEFORE INSERT ON inbox.quota_events"
        " FOR EACH ROW EXECUTE FUNCTION inbox.test_refuse()"
    )
    ids = [uuid.uuid4() for _ in range(4)]
    values = [to_json(titan_event(quota_id, 1)).encode() for quota_id in [*ids[:3], refused, ids[3]]]
    batch = Batch()
    for offset, value in enumerate(values):
        batch.add(
            Message(
                topic=TOPIC,
                partition=3,
                offset=offset,
                key=b"key-%d" % offset,
                value=value,
                headers=[("trace", b"t%d" % offset)],
            )
        )
    assert isinstance(batch.events, TitanRun)

    stored = store_batch(db, batch)

    assert (stored.accepted, stored.rejected) == (4, 1)
    (reject,) = db.execute('SELECT * FROM inbox.rejects WHERE "partition" = 3').fetchall()
    assert (reject["offset"], reject["key"], bytes(reject["raw"])) == (3, b"key-3", values[3])
    assert reject["headers"] == [{"key": "trace", "value": "t3"}]
    assert reject["reason"].startswith("PostgreSQL refused the event") and "refused here" in reject["reason"]
    stored_ids = db.execute("SELECT quota_id FROM inbox.quota_events").fetchall()
    assert sorted(row["quota_id"] for row in stored_ids) == sorted(ids)


# -- H2: the growth of an accepted body when PostgreSQL prints it ---------------------------------

# The worst cases within the limits (numbers with the most zeros a number may add; "1": jsonb adds a
# space after each comma), and every edge number of the fuzz corpus.
GROWTH_CASES = ["1e40", "1e-41", "-1e40", "1", *EDGE_NUMBERS]
EXPANSION_BOUND = 10


@pytest.mark.parametrize("number", GROWTH_CASES, ids=[n[:20] for n in GROWTH_CASES])
def test_a_body_the_door_accepts_grows_at_most_tenfold_when_postgresql_prints_it(
    db: DictConnection, number: str
) -> None:
    """Issue 12 H2: 1e131071 was 8 bytes in and 131,072 digits out, each time a claim read it."""
    quota_id = uuid.uuid4()
    text = to_json(titan_event(quota_id, 1, padding=Decimal(0))).replace(
        '"padding": 0', '"p":[' + ",".join([number] * (2000 if len(number) < 100 else 20)) + "]"
    )
    try:
        store_events(db, [text], "http")
    except BadBatch:
        return  # refused at the door, nothing stored

    row = db.execute(
        "SELECT length(payload::text) AS printed FROM inbox.quota_events WHERE quota_id = %s", [quota_id]
    ).fetchone()

    assert row is not None
    factor = row["printed"] / len(text.encode())
    print(f"\n{number[:20]}: {len(text.encode())} bytes in, {row['printed']} printed, x{factor:.2f}")
    assert factor <= EXPANSION_BOUND


def test_the_h2_body_is_refused_before_it_reaches_the_database(db: DictConnection) -> None:
    text = to_json(titan_event(uuid.uuid4(), 1, padding=Decimal(0))).replace(
        '"padding": 0', '"p":[' + ",".join(["1e131071"] * 400) + "]"
    )

    with pytest.raises(BadBatch, match="1e131071 is beyond the range"):
        store_events(db, [text], "http")
    assert _counts(db) == (0, 0)


# -- H4: offsets, exactly as PostgreSQL takes them ------------------------------------------------

moments = st.sampled_from(
    [
        datetime(2026, 1, 1),
        datetime(1, 1, 1, 3),
        datetime(9999, 12, 31, 20),
        datetime(2026, 6, 30, 23, 59, 59),
    ]
)
offsets = st.builds(
    lambda seconds, micro: timedelta(seconds=seconds, microseconds=micro),
    st.integers(min_value=-86_399, max_value=86_398),
    st.sampled_from([0, 0, 0, 1, 500_000]),
)


@given(moments, offsets)
@DB_EXAMPLES
def test_python_takes_an_updated_at_exactly_when_postgresql_does(
    db: DictConnection, moment: datetime, offset: timedelta
) -> None:
    text = moment.replace(tzinfo=timezone(offset)).isoformat()
    data = {**titan_event(uuid.uuid4(), 1)["data"], "updated_at": text}
    reasons: list[str] = []
    try:
        row = quota_row(data)
    except InvalidEvent as exc:
        reasons = exc.reasons
    python_takes = not reasons
    assert all(reason.startswith("updated_at") for reason in reasons)
    try:
        # What the worker sends (prepare: isoformat), read back the way every reader does.
        sent = row.source_updated_at.isoformat() if python_takes and row.source_updated_at else text
        db.execute("SELECT %s::timestamptz AS t", [sent]).fetchone()
        postgresql_takes = True
    except psycopg.DataError:
        postgresql_takes = False

    assert python_takes == postgresql_takes, text


# Typed values a validation gap could let through, which PostgreSQL refuses: at ingest (a numeric
# it cannot hold) or at the apply (the quota table's CHECKs).
POISON_COLUMNS: list[dict[str, Any]] = [
    {"qty_t": Decimal("1e999999")},  # numeric overflow: refused when stored
    {"period_month": date(2026, 2, 2)},  # not the first of its month
    {"counterparty_id": ""},
    {"direction": "x" * 10},
    {"qty_t": Decimal("-1")},  # the quota table's CHECK
    {"tolerance_pct": Decimal("101")},
]


def test_events_the_database_refuses_cost_themselves_never_their_neighbours(
    dsn: str, db: DictConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six poison events among 36 (issue 12 H4: 2 valid neighbours ended dead). Here the poison is
    put into the typed columns by the validation itself, as a validation gap would leave it (at the
    edge, and again when a worker types an event stored untyped); each one alone is dead-lettered
    without the columns it was refused for, the 30 others are applied."""
    ids = [uuid.uuid4() for _ in range(36)]
    poisoned = {ids[i]: POISON_COLUMNS[n] for n, i in enumerate(range(2, 36, 6))}

    def gap(value: Any, is_delete: bool) -> Typed:  # the worker's typing of an untyped event
        typed = typed_event(value, is_delete)
        poison = poisoned.get(uuid.UUID(str(value["data"]["quota_id"])))
        if poison is None or typed.row is None:
            return typed
        return dataclasses.replace(typed, row=dataclasses.replace(typed.row, **poison))

    def edge_gap(*args: Any, **kwargs: Any) -> ParsedBatch:  # the edge's rows
        batch = parse_texts(*args, **kwargs)
        rows = [
            row
            if row is None or key.quota_id not in poisoned
            else dataclasses.replace(row, **poisoned[key.quota_id])
            for key, row in zip(batch.keys, batch.rows, strict=True)
        ]
        return dataclasses.replace(batch, rows=rows)

    monkeypatch.setattr(inbox.store, "parse_texts", edge_gap)
    monkeypatch.setattr(inbox.apply.prepare, "typed_event", gap)
    ingest(db, [titan_event(q, 1) for q in ids])

    counts = drain(dsn, Settings(batch_size=100))

    assert (counts.applied, counts.dead, counts.retried) == (30, 6, 0)
    assert all(quota(db, q) is not None for q in ids if q not in poisoned)
    letters = dead_letters(db)
    assert {d["quota_id"] for d in letters} == set(poisoned)
    assert {d["error_class"] for d in letters} == {"apply_error"}


def test_an_offset_postgresql_refuses_is_an_invalid_dead_letter_and_its_batch_applies(
    dsn: str, db: DictConnection
) -> None:
    """The whole path of issue 12 H4: six events with +20:00 among 36, one worker batch."""
    ids = [uuid.uuid4() for _ in range(36)]
    odd = set(ids[3::6])
    ingest(db, [titan_event(q, 1, updated_at="2026-01-01T00:00:00+20:00" if q in odd else None) for q in ids])

    counts = drain(dsn)

    assert (counts.applied, counts.dead) == (30, 6)
    letters = dead_letters(db)
    assert {d["quota_id"] for d in letters} == odd
    assert {d["error_class"] for d in letters} == {"invalid"}
    assert all("updated_at has a time-zone offset" in d["error_message"] for d in letters)
