"""`inbox consume` against a real Kafka-protocol broker (Tansu, or INBOX_TEST_KAFKA) and real PostgreSQL.

Every test ends the same way: the consumer has stored every distinct event exactly once, committed
every offset, and the workers turn the inbox into exactly the quota state the stream implies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from inbox.db.connect import DictConnection, connect
from inbox.kafka.consumer import ConsumerGroup, ConsumeStats, KafkaIngestor
from inbox.settings import Settings
from inbox_bench.tansu import GROUP_TIMEOUTS
from tests.acceptance.conftest import UNREACHABLE_DSN
from tests.acceptance.test_apply_at_ingest import _REFUSE_LEAD, _end_state
from tests.cdc_events import QuotaStream, expected_rows, quota_rows, quota_stream
from tests.conftest import migrated_database
from tests.helpers import apply_at_ingest_mix, drain, inbox_rows, status_counts, titan_event, to_json
from tests.kafka_broker import KafkaBroker, kafka_broker
from tests.processes import free_port
from tests.processes import wait_for as wait_until
from tests.restartable_pg import RestartablePostgres

PARTITIONS = 3
SOAK = os.environ.get("INBOX_SOAK") == "1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as running:
        yield running


@dataclass(frozen=True)
class Feed:
    """A fresh topic and consumer group on the broker, and the end offset of each partition as the
    producer's delivery reports tell it (Tansu's reported high watermark lags behind)."""

    broker: KafkaBroker
    topic: str
    group: str
    end_offsets: dict[int, int] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "api_token": None,
            "kafka_bootstrap": self.broker.bootstrap,
            "kafka_topic": self.topic,
            "kafka_group": self.group,
            "kafka_config_json": GROUP_TIMEOUTS,
        }
        return Settings(**{**fields, **overrides})

    def env(self, dsn: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "INBOX_DATABASE_URL": dsn,
            "INBOX_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "INBOX_KAFKA_TOPIC": self.topic,
            "INBOX_KAFKA_GROUP": self.group,
            "INBOX_KAFKA_CONFIG_JSON": json.dumps(GROUP_TIMEOUTS),
            **extra,
        }

    def produce(
        self,
        messages: list[tuple[bytes, bytes | None]],
        seed: int = 1,
        pace: float = 0.0,
        partitions: int = PARTITIONS,
        headers: dict[bytes, list[tuple[str, str | bytes | None]]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Each message to a random partition (so one quota's versions race across partitions), or
        every one to `partition`; headers by message key."""
        rng = random.Random(seed)
        producer = self.broker.producer()
        failures: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))
                return
            partition, offset = message.partition(), message.offset()
            self.end_offsets[partition] = max(self.end_offsets.get(partition, 0), offset + 1)

        for index, (key, value) in enumerate(messages):
            producer.produce(
                self.topic,
                value=value,
                key=key,
                partition=rng.randrange(partitions) if partition is None else partition,
                headers=(headers or {}).get(key),
                on_delivery=delivered,
            )
            producer.poll(0)
            if pace and index % 20 == 19:
                time.sleep(pace)
        assert producer.flush(60) == 0
        assert failures == []

    def produce_in_background(
        self, messages: list[tuple[bytes, bytes | None]], pace: float
    ) -> threading.Thread:
        thread = threading.Thread(target=self.produce, args=(messages, 2, pace), daemon=True)
        thread.start()
        return thread

    def all_committed(self) -> bool:
        committed = self.broker.committed(self.topic, self.group, PARTITIONS)
        return committed == {p: self.end_offsets.get(p, -1001) for p in range(PARTITIONS)}


@pytest.fixture
def feed(broker: KafkaBroker) -> Feed:
    return Feed(broker, broker.create_topic(PARTITIONS), f"quota-inbox-test-{uuid.uuid4().hex[:8]}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """tests.processes.wait_for with the Kafka tests' longer default (a group takes its time)."""
    wait_until(condition, what, timeout, every=0.1)


class InboxCounter:
    """How many events the inbox holds, on one connection (re-opened after an outage; -1 while down)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: DictConnection | None = None

    def __call__(self) -> int:
        try:
            if self.conn is None or self.conn.broken:
                self.conn = connect(self.dsn, autocommit=True)
            return inbox_rows(self.conn)
        except psycopg.OperationalError:
            self.conn = None
            return -1

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


Counters = Callable[[str], InboxCounter]  # the fixture: an inbox counter on this DSN


@pytest.fixture
def counter() -> Iterator[Counters]:
    made: list[InboxCounter] = []

    def make(dsn: str) -> InboxCounter:
        made.append(InboxCounter(dsn))
        return made[-1]

    yield make
    for one in made:
        one.close()


def consume_sessions(dsn: str) -> int:
    """How many database sessions `inbox consume` processes hold open."""
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'quota-inbox consume'"
        ).fetchone()
    return int(row["n"]) if row else 0


def assert_exact_end_state(dsn: str, stream: QuotaStream) -> None:
    """Unique inbox rows, one per distinct event; after the workers, exactly the expected quotas."""
    with connect(dsn, autocommit=True) as db:
        keys = db.execute("SELECT quota_id, version, is_delete, source FROM inbox.quota_events").fetchall()
        assert {(k["quota_id"], k["version"], k["is_delete"]) for k in keys} == stream.keys
        assert len(keys) == len(stream.keys)
        assert {k["source"] for k in keys} == {"kafka"}
        counts = drain(dsn)
        assert counts.dead == 0
        assert quota_rows(db) == expected_rows(stream)


@contextmanager
def consuming_in_process(dsn: str, settings: Settings) -> Iterator[dict[str, Any]]:
    """ConsumerGroup.run (what `inbox consume` runs: settings.kafka_consumers members) in a thread; on
    exit it is stopped and its stats are in the yielded dict (the group under "group"; with one
    member, that member under "ingestor", for a look at its stats while it runs)."""
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    outcome["group"] = group = ConsumerGroup(dsn, settings, stop)
    if len(group.members) == 1:
        outcome["ingestor"] = group.members[0]

    def run() -> None:
        try:
            outcome["stats"] = group.run()
        except BaseException as exc:  # surfaced in the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="consumer", daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the consumer did not stop"
    assert "error" not in outcome, outcome.get("error")


class ConsumerProcess:
    """`inbox consume` as a real process; its JSON log lines are read from a file."""

    def __init__(self, env: dict[str, str], log: Path, log_level: str = "INFO") -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "inbox.cli", "--log-level", log_level, "consume"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def records(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far; a consumer that died on its own fails the test with its log."""
        text = self.log.read_text(errors="replace")
        if self.process.poll() not in (None, 0, -signal.SIGKILL):
            raise AssertionError(f"inbox consume exited with {self.process.returncode}:\n{text[-3000:]}")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == message]

    def holds_partitions(self) -> bool:
        assigned = self.logged("partitions assigned")
        return bool(assigned and assigned[-1]["partitions"])

    def terminate(self) -> ConsumeStats:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        assert code == 0, self.log.read_text()[-3000:]
        (final,) = self.logged("consumer stopped")
        return ConsumeStats(**{k: final[k] for k in ConsumeStats().__dict__ if k != "partitions"})

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def stop_quietly(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


Processes = Callable[..., ConsumerProcess]  # the fixture: a consumer started with this env (and log level)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started: list[ConsumerProcess] = []

    def start(env: dict[str, str], log_level: str = "INFO") -> ConsumerProcess:
        started.append(ConsumerProcess(env, tmp_path / f"consumer-{len(started)}.log", log_level))
        return started[-1]

    yield start
    for process in started:
        process.stop_quietly()


# -- the tests --------------------------------------------------------------------------------


def test_ten_thousand_events_duplicated_and_reordered_end_exact(
    feed: Feed, dsn: str, counter: Counters
) -> None:
    inbox_count = counter(dsn)
    stream = quota_stream(random.Random(10_000), 10_000)
    assert len(stream.messages) == 10_000
    feed.produce(stream.messages)

    with consuming_in_process(dsn, feed.settings()) as outcome:
        wait_for(lambda: inbox_count() > 0, "the first stored batch")
        started = time.monotonic()
        wait_for(lambda: inbox_count() == len(stream.keys), "every distinct event in the inbox")
        elapsed = time.monotonic() - started
        wait_for(feed.all_committed, "every offset committed")
    stats: ConsumeStats = outcome["stats"]

    print(
        f"\nconsumed {stats.messages} messages, {stats.batches} batches, ~{stats.messages / elapsed:,.0f}/s"
    )
    assert stats.messages == 10_000
    assert (stats.rejected, stats.skipped) == (0, stream.skipped)
    assert stats.accepted == len(stream.keys)
    assert stats.accepted + stats.duplicates + stats.skipped == 10_000
    assert_exact_end_state(dsn, stream)


GARBAGE: list[tuple[bytes, str]] = [
    (b"\xff\xfe\x00 not UTF-8", "not UTF-8"),
    (b'{"eventType": "INSERT", "data": {', "not valid JSON"),
    (b"[1, 2]", "a message holds one event, not an array"),
    (b'{"data": {"quota_id": "Q-17"}, "metadata": {"version": 1}}', "data.quota_id must be a UUID string"),
    (b'{"op": "m", "before": null, "after": {}}', "op must be one of c, u, r, d"),
    (b"NaN", "not valid JSON"),
]


def test_garbage_goes_to_rejects_verbatim_and_the_consumer_moves_on(
    feed: Feed, dsn: str, db: DictConnection, counter: Counters
) -> None:
    inbox_count = counter(dsn)
    stream = quota_stream(random.Random(7), 200, duplicate_share=0.0)
    quota_id = uuid.uuid4()
    # A lone UTF-16 surrogate escape: no text, and PostgreSQL's jsonb refuses it (refused before it
    # is sent; tests/integration/test_hostile_input.py has the halving behind that).
    refused = (
        b'{"eventType": "INSERT", "data": {"quota_id": "%s", "counterparty_id": "\\ud800"},'
        b' "metadata": {"version": 1}}' % str(quota_id).encode()
    )
    garbage = [(raw, reason) for raw, reason in GARBAGE] + [(refused, "lone UTF-16 surrogate")]
    messages = list(stream.messages)
    for index, (raw, _) in enumerate(garbage):
        messages.insert(index * 25, (b"garbage-key", raw))
    feed.produce(messages, partitions=1, headers={b"garbage-key": [("trace", b"abc"), ("bin", b"\x00\xff")]})

    with consuming_in_process(dsn, feed.settings(kafka_batch_size=64)) as outcome:
        wait_for(lambda: inbox_count() == len(stream.keys), "the valid events")
        wait_for(feed.all_committed, "every offset committed")

    rejects = db.execute('SELECT * FROM inbox.rejects ORDER BY "offset"').fetchall()
    assert [bytes(r["raw"]) for r in rejects] == [raw for raw, _ in garbage]
    for row, (_, reason) in zip(rejects, garbage, strict=True):
        assert reason in row["reason"]
        assert (row["topic"], row["partition"], bytes(row["key"])) == (feed.topic, 0, b"garbage-key")
        assert row["headers"] == [{"key": "trace", "value": "abc"}, {"key": "bin", "value_base64": "AP8="}]
    assert outcome["stats"].rejected == len(garbage)
    assert_exact_end_state(dsn, stream)


@pytest.mark.parametrize("apply_at_ingest", [True, False], ids=["applied-at-ingest", "left-to-workers"])
def test_consumed_events_are_applied_in_their_batch_transaction(
    feed: Feed, dsn: str, db: DictConnection, counter: Counters, apply_at_ingest: bool
) -> None:
    """kafka_apply_at_ingest (on by default): the typed events of a batch are applied in the batch's
    own transaction, before its offsets are committed, with no worker running; versions racing
    across partitions end stale at the gate. Off: every event waits for the workers."""
    inbox_count = counter(dsn)
    stream = quota_stream(random.Random(11), 300)
    feed.produce(list(stream.messages))

    settings = feed.settings(kafka_batch_size=64, kafka_apply_at_ingest=apply_at_ingest)
    with consuming_in_process(dsn, settings):
        wait_for(lambda: inbox_count() == len(stream.keys), "every distinct event")
        wait_for(feed.all_committed, "every offset committed")

    rows = db.execute("SELECT status, attempts, typed FROM inbox.quota_events").fetchall()
    typed = [r for r in rows if r["typed"]]
    assert typed, "the stream's Titan events are typed at the edge"
    if apply_at_ingest:  # the typed ones finished before any worker ran; the rest wait for one
        assert {(r["status"], r["attempts"]) for r in typed} <= {("applied", 1), ("stale", 1)}, typed
    else:
        assert {(r["status"], r["attempts"]) for r in typed} == {("pending", 0)}
    assert {(r["status"], r["attempts"]) for r in rows if not r["typed"]} <= {("pending", 0)}
    assert_exact_end_state(dsn, stream)


@pytest.fixture
def other_dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A second freshly migrated database, for the same messages with the apply at ingest off."""
    with migrated_database(pg_admin_dsn, template_db, "other") as made:
        yield made


def test_the_apply_at_ingest_ends_where_the_workers_end(feed: Feed, dsn: str, other_dsn: str) -> None:
    """tests/acceptance/test_apply_at_ingest.py's POSTs as Kafka batches (each produced once the one
    before is committed: a batch is one transaction): with INBOX_KAFKA_APPLY_AT_INGEST on, then a
    drain, and (another topic, another database) with it off, then a drain, they end in the same
    state: events' outcomes, quotas, gate, dead letters, outbox and counters alike."""
    b = uuid.UUID(int=2)  # apply_at_ingest_mix's quota b, held by a call-off
    before, mix, invalid, refused = apply_at_ingest_mix()
    feeds = {"on": feed, "off": Feed(feed.broker, feed.broker.create_topic(PARTITIONS), f"{feed.group}-off")}

    for name, target, apply_at_ingest in (("on", dsn, True), ("off", other_dsn, False)):
        with connect(target, autocommit=True) as conn:
            for statement in _REFUSE_LEAD:
                conn.execute(statement)
        run = feeds[name]
        # a second to fill: each produced batch is one consumed batch
        settings = run.settings(kafka_apply_at_ingest=apply_at_ingest, kafka_batch_wait_seconds=1.0)
        with consuming_in_process(target, settings):
            for batch in (before, mix, invalid, refused):
                run.produce([(b"k", to_json(x).encode()) for x in batch], partition=0)
                wait_for(run.all_committed, "the batch stored and committed")
                if batch is before:
                    drain(target)
                    with connect(target, autocommit=True) as conn:
                        conn.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [b])
        if apply_at_ingest:
            with connect(target, autocommit=True) as conn:
                # the mix finished at ingest (deletes too: a batch of Titan events is typed as
                # columns, as HTTP's); the invalid event and the refused batch wait
                assert status_counts(conn) == {"applied": 8, "stale": 3, "dead": 1, "pending": 3}
        drain(target)

    assert _end_state(dsn) == _end_state(other_dsn)


@pytest.mark.parametrize(
    "number", ["1e9999999999999999999", "1e-99999999999999999999", "1e131071"], ids=["huge", "tiny", "h2"]
)
def test_a_poison_number_between_two_good_events_is_rejected_and_both_are_stored(
    feed: Feed, dsn: str, db: DictConnection, counter: Counters, number: str
) -> None:
    """Issue 12 H1: `inbox consume` exited 1 on [good, poison, good], storing and committing nothing,
    at every restart: a crash loop on the partition."""
    inbox_count = counter(dsn)
    first, poison_id, last = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    poison = to_json(titan_event(poison_id, 1, qty_t=Decimal(7))).replace('"qty_t": 7', f'"qty_t": {number}')
    messages: list[tuple[bytes, bytes | None]] = [
        (b"good", to_json(titan_event(first, 1)).encode()),
        (b"poison", poison.encode()),
        (b"good", to_json(titan_event(last, 1)).encode()),
    ]
    feed.produce(messages, partitions=1)

    with consuming_in_process(dsn, feed.settings()) as outcome:
        wait_for(lambda: inbox_count() == 2, "both good events")
        wait_for(feed.all_committed, "every offset committed")

    stored = {row["quota_id"] for row in db.execute("SELECT quota_id FROM inbox.quota_events").fetchall()}
    assert stored == {first, last}
    (reject,) = db.execute('SELECT "offset", raw, reason FROM inbox.rejects').fetchall()
    assert (reject["offset"], bytes(reject["raw"])) == (1, poison.encode())
    assert reject["reason"].startswith("not valid JSON: number")
    assert outcome["stats"].rejected == 1


@pytest.mark.soak
def test_consumer_killed_mid_stream_and_restarted_ends_exact(
    feed: Feed, dsn: str, processes: Processes, counter: Counters
) -> None:
    """Bounded: 4,000 messages, one SIGKILL. INBOX_SOAK=1: 40,000 messages, a SIGKILL every ~2,000 stored."""
    inbox_count = counter(dsn)
    messages, kills, pace = (40_000, 5, 0.02) if SOAK else (4000, 1, 0.005)
    stream = quota_stream(random.Random(99), messages)
    env = feed.env(dsn, INBOX_KAFKA_BATCH_SIZE="50")
    first = processes(env)
    wait_for(first.holds_partitions, "the first consumer to join")
    producing = feed.produce_in_background(stream.messages, pace=pace)

    victim = first
    for _ in range(kills):
        progress = inbox_count() + 300 * (1 + 6 * SOAK)
        wait_for(lambda: inbox_count() >= progress, "more events stored")  # noqa: B023 (read at once)
        victim.kill()  # SIGKILL: no revocation, no commit of the batch in hand
        # A COMMIT the victim sent just before it died still lands: count once its sessions are gone.
        wait_for(lambda: consume_sessions(dsn) == 0, "the killed consumer's sessions to end")
        stored_at_kill = inbox_count()
        assert stored_at_kill < len(stream.keys), "the kill came too late to be mid-stream"
        victim = processes(env)

    producing.join(120)
    wait_for(lambda: inbox_count() == len(stream.keys), "every distinct event after the restarts", 300)
    wait_for(feed.all_committed, "every offset committed")
    stats = victim.terminate()
    assert stats.accepted == len(stream.keys) - stored_at_kill
    assert_exact_end_state(dsn, stream)


def test_two_consumer_processes_share_the_partitions(
    feed: Feed, dsn: str, processes: Processes, counter: Counters, tmp_path: Path
) -> None:
    inbox_count = counter(dsn)
    stream = quota_stream(random.Random(2), 3000)
    env = feed.env(dsn, INBOX_KAFKA_BATCH_SIZE="100", INBOX_KAFKA_CONSUMERS="1")  # a member each
    alive_file = tmp_path / "consume.alive"
    one = processes({**env, "INBOX_KAFKA_ALIVE_FILE": str(alive_file)})
    wait_for(one.holds_partitions, "the first consumer to join")
    two = processes(env)
    wait_for(lambda: one.holds_partitions() and two.holds_partitions(), "both consumers to hold partitions")
    held = [set(p.logged("partitions assigned")[-1]["partitions"]) for p in (one, two)]
    assert not held[0] & held[1]
    assert len(held[0] | held[1]) == PARTITIONS

    feed.produce(stream.messages, pace=0.002)
    wait_for(lambda: inbox_count() == len(stream.keys), "every distinct event")
    wait_for(feed.all_committed, "every offset committed")
    assert time.time() - alive_file.stat().st_mtime < 5  # the liveness probe's file is fresh
    stats = [one.terminate(), two.terminate()]

    assert all(s.accepted > 0 for s in stats), stats
    assert sum(s.accepted for s in stats) == len(stream.keys)
    assert_exact_end_state(dsn, stream)


# -- two batches in flight: batch N in the database while N+1 is fetched --------------------------
# (within one member: these run one, INBOX_KAFKA_CONSUMERS=1; members side by side are further down)

IN_FLIGHT_BATCH = 10


def distinct_events(count: int, version: int = 1) -> list[tuple[bytes, bytes | None]]:
    return [(b"k", to_json(titan_event(uuid.uuid4(), version)).encode()) for _ in range(count)]


# the sessions of `inbox consume` whose store waits for a lock (the one the test holds)
STORE_WAITING = "application_name = 'quota-inbox consume' AND wait_event_type = 'Lock'"


def stores_waiting_on_a_lock(dsn: str) -> int:
    """How many of the consumer's stores wait for a lock (the one the test holds)."""
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) AS n FROM pg_stat_activity WHERE {STORE_WAITING}").fetchone()
    return int(row["n"]) if row else 0


def store_waits_on_a_lock(dsn: str) -> bool:
    """The consumer's store is waiting for a lock (the one the test holds)."""
    return stores_waiting_on_a_lock(dsn) > 0


@contextmanager
def inserts_blocked(dsn: str) -> Iterator[DictConnection]:
    """A session of the test's own that holds inbox.quota_events in SHARE mode: every store waits for
    it until the block ends (or the yielded connection rolls back)."""
    with connect(dsn) as blocker:
        blocker.execute("LOCK TABLE inbox.quota_events IN SHARE MODE")
        try:
            yield blocker
        finally:
            blocker.rollback()


@contextmanager
def batch_n_held(
    feed: Feed,
    dsn: str,
    ingestor: KafkaIngestor,
    events: list[tuple[bytes, bytes | None]],
    committed: Callable[[], int],
) -> Iterator[DictConnection]:
    """The first IN_FLIGHT_BATCH events stored and committed; then batch N's insert waiting on the
    test's lock (the yielded session) while N+1, the rest of the events, is fetched."""
    feed.produce(events[:IN_FLIGHT_BATCH], partitions=1)
    wait_for(lambda: committed() == IN_FLIGHT_BATCH, "the first batch committed")
    with inserts_blocked(dsn) as blocker:
        feed.produce(events[IN_FLIGHT_BATCH:], partitions=1)
        wait_for(lambda: store_waits_on_a_lock(dsn), "batch N's store to wait on the test's lock")
        wait_for(lambda: ingestor.stats.messages == len(events), "batch N+1 fetched")
        yield blocker


def test_offsets_never_pass_a_batch_whose_transaction_has_not_committed(
    feed: Feed, dsn: str, counter: Counters
) -> None:
    """Batch N's store waits on a lock the test holds while N+1 is fetched: the group's committed
    offset stays at N's start until the test lets N commit; then N and N+1 commit, in order."""
    inbox_count = counter(dsn)
    events = distinct_events(3 * IN_FLIGHT_BATCH)
    # a batch is IN_FLIGHT_BATCH messages exactly: consume() returns once it has that many
    settings = feed.settings(
        kafka_batch_size=IN_FLIGHT_BATCH, kafka_batch_wait_seconds=2.0, kafka_consumers=1
    )
    seen: list[int] = []  # every committed offset of partition 0 the test read, in order

    def committed() -> int:
        seen.append(feed.broker.committed(feed.topic, feed.group, 1)[0])
        return seen[-1]

    with (
        consuming_in_process(dsn, settings) as outcome,
        batch_n_held(feed, dsn, outcome["ingestor"], events, committed) as blocker,
    ):
        for _ in range(10):  # held while N's transaction is open and N+1 is in hand
            assert committed() == IN_FLIGHT_BATCH, "an offset passed a batch not yet stored"
            time.sleep(0.2)
        assert inbox_count() == IN_FLIGHT_BATCH
        blocker.rollback()  # N may commit now
        wait_for(lambda: committed() == len(events), "N and N+1 committed")
    assert inbox_count() == len(events)
    assert seen == sorted(seen)  # in order: never backwards
    stats = outcome["stats"]
    assert (stats.batches, stats.accepted, stats.duplicates, stats.store_failures) == (3, 30, 0, 0)


def test_connection_lost_under_the_store_thread_is_waited_out_as_before(
    feed: Feed, dsn: str, counter: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    """Batch N's session is terminated while its insert waits (N+1 in hand): one failure logged and
    counted, the partitions paused, N retried after the first delay ("database back"), nothing of N or
    N+1 committed before N is stored; then both are stored and committed, as without the overlap."""
    inbox_count = counter(dsn)
    events = distinct_events(3 * IN_FLIGHT_BATCH)
    settings = feed.settings(
        kafka_batch_size=IN_FLIGHT_BATCH, kafka_batch_wait_seconds=2.0, kafka_consumers=1
    )

    def committed() -> int:
        return feed.broker.committed(feed.topic, feed.group, 1)[0]

    with (
        caplog.at_level(logging.INFO, logger="inbox.kafka.consumer"),
        consuming_in_process(dsn, settings) as outcome,
    ):
        ingestor: KafkaIngestor = outcome["ingestor"]
        with batch_n_held(feed, dsn, ingestor, events, committed) as blocker:
            blocker.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {STORE_WAITING}")
            wait_for(lambda: ingestor.stats.store_failures == 1, "the failed store counted")
            assert committed() == IN_FLIGHT_BATCH
        wait_for(lambda: committed() == len(events), "N and N+1 committed")
    messages = [r.getMessage() for r in caplog.records if r.name == "inbox.kafka.consumer"]
    assert messages.count("could not store the batch; will retry") == 1
    assert messages.count("database back: the batch in hand is stored, fetching resumes") == 1
    stats = outcome["stats"]
    assert (stats.batches, stats.accepted, stats.duplicates, stats.store_failures) == (3, 30, 0, 1)
    assert inbox_count() == len(events)


def test_a_rebalance_while_a_batch_is_stored_commits_it_for_the_next_owner(
    feed: Feed, dsn: str, counter: Counters
) -> None:
    """A second consumer joins while batch N's insert waits on the test's lock and the first consumer
    fetches N+1: the revocation waits for N's transaction and commits N's offsets, so whoever owns a
    partition next does not read N again: no duplicates at all."""
    inbox_count = counter(dsn)
    events = distinct_events(2 * IN_FLIGHT_BATCH)
    # a long wait: the first consumer is in its fetch of N+1 (where rebalances run) while N is stored
    settings = feed.settings(
        kafka_batch_size=IN_FLIGHT_BATCH, kafka_batch_wait_seconds=20.0, kafka_consumers=1
    )
    with consuming_in_process(dsn, settings) as first:
        ingestor: KafkaIngestor = first["ingestor"]
        wait_for(lambda: len(ingestor.stats.partitions) == PARTITIONS, "the first consumer to join")
        feed.produce(events[:IN_FLIGHT_BATCH])
        wait_for(lambda: inbox_count() == IN_FLIGHT_BATCH, "the first batch stored")
        wait_for(feed.all_committed, "the first batch committed")
        with inserts_blocked(dsn) as blocker:
            feed.produce(events[IN_FLIGHT_BATCH:])  # batch N
            wait_for(lambda: store_waits_on_a_lock(dsn), "batch N's store to wait on the test's lock")
            with consuming_in_process(dsn, settings) as second:
                time.sleep(3)  # the second joins; the first's revocation waits for N
                blocker.rollback()
                wait_for(lambda: inbox_count() == len(events), "batch N stored")
                wait_for(feed.all_committed, "every offset committed")
    assert first["stats"].duplicates + second["stats"].duplicates == 0
    assert first["stats"].accepted + second["stats"].accepted == len(events)


def test_a_bug_under_the_store_thread_ends_the_consumer_as_before(
    feed: Feed, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is no DatabaseError (a bug) raised on the store thread leaves run() on this
    thread as it did without the overlap: the same exception (`inbox consume` exits 1 with its
    traceback), nothing committed, the group left."""

    def bug(conn: Any, batch: Any, apply_attempts: int | None) -> Any:
        raise ZeroDivisionError("a bug in storing")

    monkeypatch.setattr("inbox.kafka.consumer.store_batch", bug)
    feed.produce(distinct_events(IN_FLIGHT_BATCH), partitions=1)
    stop = threading.Event()
    ingestor = KafkaIngestor(dsn, feed.settings(kafka_batch_size=IN_FLIGHT_BATCH), stop)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            ingestor.run()
        except BaseException as exc:
            raised.append(exc)

    consumer = threading.Thread(target=run, name="consumer", daemon=True)
    consumer.start()
    try:
        wait_for(lambda: not consumer.is_alive(), "the consumer to end on the bug")
    finally:
        stop.set()
        consumer.join(60)
    assert [type(e) for e in raised] == [ZeroDivisionError]
    assert str(raised[0]) == "a bug in storing"
    assert feed.broker.committed(feed.topic, feed.group, 1)[0] < 0
    assert ingestor.stats.batches == 0


@contextmanager
def commits_blocked(dsn: str, version: int | None = None) -> Iterator[DictConnection]:
    """A deferred constraint trigger (in this test's database only) makes the COMMIT of every store
    that inserts an event (of this version, if given) wait for an advisory lock the test's own
    session holds until the block ends (or it runs `SELECT pg_advisory_unlock_all()`)."""
    only = "" if version is None else f" WHEN (NEW.version = {int(version)})"
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION public.test_wait_at_commit() RETURNS trigger LANGUAGE plpgsql"
            " SET search_path = pg_catalog, pg_temp"
            " AS $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER test_wait_at_commit AFTER INSERT ON inbox.quota_events"
            f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW{only} EXECUTE FUNCTION public.test_wait_at_commit()"
        )
        conn.execute("SELECT pg_advisory_lock(4242)")
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock_all()")


def test_killed_with_two_batches_in_flight_redelivers_and_loses_nothing(
    feed: Feed, dsn: str, processes: Processes, counter: Counters
) -> None:
    """SIGKILL of `inbox consume` while batch N's COMMIT waits (on a lock the test holds) and N+1 is
    in hand. The COMMIT then lands without its consumer: N is stored, its offsets are not. The next
    consumer reads N and N+1 again; N counts as duplicates, nothing is lost or stored twice."""
    inbox_count = counter(dsn)
    events = distinct_events(3 * IN_FLIGHT_BATCH)
    env = feed.env(dsn, INBOX_KAFKA_BATCH_SIZE=str(IN_FLIGHT_BATCH), INBOX_KAFKA_BATCH_WAIT_SECONDS="2")
    first = processes(env, log_level="DEBUG")  # DEBUG: "batch fetched"
    wait_for(first.holds_partitions, "the consumer to join")
    feed.produce(events[:IN_FLIGHT_BATCH], partitions=1)
    wait_for(
        lambda: feed.broker.committed(feed.topic, feed.group, 1)[0] == IN_FLIGHT_BATCH,
        "the first batch committed",
    )

    with commits_blocked(dsn) as blocker:
        feed.produce(events[IN_FLIGHT_BATCH:], partitions=1)
        wait_for(lambda: store_waits_on_a_lock(dsn), "batch N's COMMIT to wait on the test's lock")
        wait_for(lambda: len(first.logged("batch fetched")) == 3, "batch N+1 fetched")
        first.kill()
        blocker.execute("SELECT pg_advisory_unlock_all()")  # N's COMMIT, sent before the kill, lands
        wait_for(lambda: consume_sessions(dsn) == 0, "the killed consumer's sessions to end")
    assert inbox_count() == 2 * IN_FLIGHT_BATCH  # N stored; N+1 was in hand, never sent
    assert feed.broker.committed(feed.topic, feed.group, 1)[0] == IN_FLIGHT_BATCH  # N's offsets not

    second = processes(env)
    wait_for(lambda: inbox_count() == len(events), "every event after the restart")
    wait_for(
        lambda: feed.broker.committed(feed.topic, feed.group, 1)[0] == len(events), "every offset committed"
    )
    stats = second.terminate()
    assert (stats.messages, stats.duplicates, stats.accepted) == (20, IN_FLIGHT_BATCH, IN_FLIGHT_BATCH)
    with connect(dsn, autocommit=True) as db:
        stored = [r["quota_id"] for r in db.execute("SELECT quota_id FROM inbox.quota_events")]
    assert sorted(stored) == sorted(
        uuid.UUID(json.loads(value or b"")["data"]["quota_id"]) for _, value in events
    )


# -- INBOX_KAFKA_CONSUMERS: members side by side in one process ----------------------------------

BLOCKED_VERSION = 7777  # the version whose stores' COMMIT waits on the test's lock (commits_blocked)


def test_members_store_side_by_side_and_each_commits_only_what_it_stored(
    feed: Feed, dsn: str, counter: Counters
) -> None:
    """Two members in one process: the COMMIT of the batch of partition 0's member waits on the
    test's lock, and meanwhile the other member stores and commits its own partitions (two batches in
    the database at once); partition 0's committed offset does not move until its batch has
    committed. Then everything is committed, nothing stored twice."""
    inbox_count = counter(dsn)
    settings = feed.settings(
        kafka_batch_size=IN_FLIGHT_BATCH, kafka_batch_wait_seconds=2.0, kafka_consumers=2
    )
    seen: list[int] = []  # partition 0's committed offsets, as the test read them

    def committed() -> dict[int, int]:
        offsets = feed.broker.committed(feed.topic, feed.group, PARTITIONS)
        seen.append(offsets[0])
        return offsets

    with consuming_in_process(dsn, settings) as outcome:
        members: list[KafkaIngestor] = outcome["group"].members
        wait_for(
            lambda: all(m.assigned for m in members) and sum(len(m.assigned) for m in members) == PARTITIONS,
            "both members to hold partitions",
        )
        (blocked,) = [m for m in members if (feed.topic, 0) in m.assigned]
        others = sorted(p for m in members if m is not blocked for _, p in m.assigned)
        with commits_blocked(dsn, BLOCKED_VERSION):
            feed.produce(distinct_events(IN_FLIGHT_BATCH, BLOCKED_VERSION), partition=0)
            wait_for(lambda: store_waits_on_a_lock(dsn), "partition 0's batch to wait at its COMMIT")
            for partition in others:
                feed.produce(distinct_events(IN_FLIGHT_BATCH), partition=partition)
            wait_for(
                lambda: all(committed()[p] == IN_FLIGHT_BATCH for p in others),
                "the other member's partitions stored and committed meanwhile",
            )
            assert store_waits_on_a_lock(dsn), "partition 0's batch is still in the database"
            assert committed()[0] < 0, "an offset passed a batch not yet stored"
            assert inbox_count() == IN_FLIGHT_BATCH * len(others)
        wait_for(feed.all_committed, "partition 0 committed once its batch has")
    assert all(offset < 0 for offset in seen[:-1]) or seen[-1] == IN_FLIGHT_BATCH
    assert inbox_count() == IN_FLIGHT_BATCH * (1 + len(others))
    stats: ConsumeStats = outcome["stats"]
    assert (stats.accepted, stats.duplicates, stats.store_failures) == (inbox_count(), 0, 0)
    assert blocked.stats.accepted == IN_FLIGHT_BATCH


def test_sigterm_finishes_and_commits_every_members_batch_in_hand(
    feed: Feed, dsn: str, processes: Processes, counter: Counters
) -> None:
    """`inbox consume` with two members, each with a batch waiting on the test's lock, gets SIGTERM:
    it waits for both transactions, commits both members' offsets, leaves the group and exits 0."""
    inbox_count = counter(dsn)
    env = feed.env(
        dsn,
        INBOX_KAFKA_BATCH_SIZE=str(IN_FLIGHT_BATCH),
        INBOX_KAFKA_BATCH_WAIT_SECONDS="2",
        INBOX_KAFKA_CONSUMERS="2",
    )
    consumer = processes(env)
    wait_for(
        lambda: len({r["member"] for r in consumer.logged("partitions assigned") if r["partitions"]}) == 2,
        "both members to hold partitions",
    )
    with inserts_blocked(dsn) as blocker:
        for partition in range(PARTITIONS):
            feed.produce(distinct_events(IN_FLIGHT_BATCH), partition=partition)
        wait_for(lambda: stores_waiting_on_a_lock(dsn) == 2, "both members' batches to wait on the lock")
        consumer.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert consumer.process.poll() is None, "it waits for the batches in the database"
        assert all(o < 0 for o in feed.broker.committed(feed.topic, feed.group, PARTITIONS).values())
        blocker.rollback()
        stats = consumer.terminate()  # SIGTERM again is harmless; exit 0 and the final counts
    assert feed.all_committed()
    assert inbox_count() == stats.accepted == stats.messages
    assert stats.accepted >= 2 * IN_FLIGHT_BATCH  # both members' batches in hand, at least


# -- the database stopped and started mid-stream ----------------------------------------------


def test_database_stopped_and_started_mid_stream_loses_nothing(
    feed: Feed, restartable_pg: RestartablePostgres, processes: Processes, counter: Counters
) -> None:
    dsn = restartable_pg.dsn
    inbox_count = counter(dsn)
    stream = quota_stream(random.Random(5), 3000)
    consumer = processes(feed.env(dsn, INBOX_KAFKA_BATCH_SIZE="100"))
    wait_for(consumer.holds_partitions, "the consumer to join")
    producing = feed.produce_in_background(stream.messages, pace=0.01)

    wait_for(lambda: inbox_count() >= 200, "some events stored")
    restartable_pg.stop()
    wait_for(lambda: bool(consumer.logged("could not store the batch; will retry")), "a failed store")
    time.sleep(2)  # the stream goes on while the database is away
    restartable_pg.start()

    producing.join(60)
    wait_for(lambda: inbox_count() == len(stream.keys), "every distinct event after the outage")
    wait_for(feed.all_committed, "every offset committed")
    stats = consumer.terminate()
    assert stats.store_failures > 0
    assert consumer.logged("database back: the batch in hand is stored, fetching resumes")
    assert_exact_end_state(dsn, stream)


# -- refusing to start ------------------------------------------------------------------------


def run_consume(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "inbox.cli", "consume"]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_consume_refuses_to_hand_its_commits_to_librdkafka(dsn: str) -> None:
    result = run_consume(
        {"INBOX_DATABASE_URL": dsn, "INBOX_KAFKA_CONFIG_JSON": '{"enable.auto.commit": true, "acks": "all"}'}
    )
    assert result.returncode == 1
    assert "inbox: error: INBOX_KAFKA_CONFIG_JSON may not set enable.auto.commit" in result.stderr


def test_consume_refuses_an_unmigrated_database(empty_dsn: str) -> None:
    result = run_consume({"INBOX_DATABASE_URL": empty_dsn})
    assert result.returncode == 1
    assert "inbox: error: migrations not applied: 010_baseline" in result.stderr
    assert "run `inbox migrate`" in result.stderr


def _lag_scrape(url: str) -> dict[str, Any] | None:
    """The consumer's /metrics: inbox_database_up and the lag by partition; None until it answers."""
    try:
        response = httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None
    assert response.status_code == 200, response.text
    samples = [s for family in text_string_to_metric_families(response.text) for s in family.samples]
    return {
        "database_up": next(s.value for s in samples if s.name == "inbox_database_up"),
        "lag": {int(s.labels["partition"]): s.value for s in samples if s.name == "inbox_kafka_consumer_lag"},
    }


def test_metrics_port_serves_the_consumer_lag(feed: Feed, dsn: str) -> None:
    """`inbox consume`'s /metrics: per partition, what the topic holds after the group's committed
    offset; it stays while the database is away (nothing stored, nothing committed), then drops to 0.
    Two members (the default): one /metrics with both members' partitions."""
    stream = quota_stream(random.Random(5), 90, duplicate_share=0.0)
    feed.produce(stream.messages)
    assert all(feed.end_offsets[p] > 2 for p in range(PARTITIONS))
    committer = Consumer(
        {"bootstrap.servers": feed.broker.bootstrap, "group.id": feed.group, **GROUP_TIMEOUTS}
    )
    try:  # the group has stored the first two messages of each partition
        committer.commit(
            offsets=[TopicPartition(feed.topic, p, 2) for p in range(PARTITIONS)], asynchronous=False
        )
    finally:
        committer.close()
    fast_statistics = {**GROUP_TIMEOUTS, "statistics.interval.ms": 200}

    port = free_port()
    settings = feed.settings(
        metrics_port=port, metrics_refresh_seconds=0.1, kafka_config_json=fast_statistics
    )
    behind = {p: feed.end_offsets[p] - 2 for p in range(PARTITIONS)}
    with consuming_in_process(UNREACHABLE_DSN, settings):
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(
            lambda: (_lag_scrape(url) or {}).get("lag") == behind,
            "the lag while the database is away",
            90,
            every=0.1,
            detail=lambda: f"{_lag_scrape(url)} != {behind}",
        )
        assert (_lag_scrape(url) or {})["database_up"] == 0

    port = free_port()
    # another group: Tansu at times stalls for a minute or more before it assigns the partitions of a
    # group whose two members have just left (bare confluent_kafka consumers show it too)
    again = Feed(feed.broker, feed.topic, f"{feed.group}-again", feed.end_offsets)
    settings = again.settings(
        metrics_port=port, metrics_refresh_seconds=0.1, kafka_config_json=fast_statistics
    )
    with consuming_in_process(dsn, settings):
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(again.all_committed, "every offset committed")
        wait_for(
            lambda: (_lag_scrape(url) or {}).get("lag") == dict.fromkeys(range(PARTITIONS), 0),
            "no lag once everything is stored",
        )
        assert (_lag_scrape(url) or {})["database_up"] == 1
