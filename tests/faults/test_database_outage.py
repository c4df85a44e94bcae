"""PostgreSQL stopped and started under load: the HTTP ingestor, the workers and the Kafka consumer
ride it out in their own processes, and nothing accepted is lost.

While the database is away, POST /events answers 503 with Retry-After (never a 500, never a 202 for
something it did not store) and the consumer commits no offset. Once it is back, every process
reconnects by itself, and every event accepted before, during (by a retry) and after the outage ends
applied: the quota state is exactly what both streams imply.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from inbox.db.connect import connect
from inbox.formats import key_event, skip_reason
from inbox.ingest import loads
from tests.cdc_events import QuotaStream, expected_rows, quota_rows, quota_stream
from tests.helpers import dead_letters, status_counts
from tests.integration.test_kafka_consume import Feed
from tests.kafka_broker import KafkaBroker, kafka_broker
from tests.processes import InboxProcess, inbox_process, quick_env, wait_for
from tests.restartable_pg import RestartablePostgres

SOAK = os.environ.get("INBOX_SOAK") == "1"
OUTAGE_SECONDS = 20.0 if SOAK else 8.0  # longer than the HTTP pool's 5 s wait for a connection
POSTERS = 3
PARTITIONS = 3


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    with kafka_broker(tmp_path) as running:
        yield running


@dataclass
class Answers:
    """What the senders were told, request by request."""

    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: list[str | None] = field(default_factory=list)  # of each 503
    stored_keys: list[tuple[uuid.UUID, int, bool]] = field(default_factory=list)  # of each 202
    lock: threading.Lock = field(default_factory=threading.Lock)


def _batches(stream: QuotaStream, size: int) -> list[list[str]]:
    texts = [v.decode() for _, v in stream.messages if v is not None]
    texts = [t for t in texts if skip_reason(loads(t)) is None]
    return [texts[i : i + size] for i in range(0, len(texts), size)]


class Sender(threading.Thread):
    """A well-behaved webhook sender: posts its batches in order and, on 503, waits and retries the
    same batch; it gives up on nothing."""

    def __init__(self, url: str, batches: list[list[str]], answers: Answers, pace: float) -> None:
        super().__init__(daemon=True)
        self.url, self.batches, self.answers, self.pace = url, batches, answers, pace
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60) as client:
                for batch in self.batches:
                    while not self._post(client, batch):
                        time.sleep(0.5)
                    time.sleep(self.pace)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _post(self, client: httpx.Client, batch: list[str]) -> bool:
        response = client.post(
            "/events", content="\n".join(batch), headers={"Content-Type": "application/x-ndjson"}
        )
        with self.answers.lock:
            self.answers.statuses[response.status_code] += 1
            if response.status_code == 503:
                self.answers.retry_after.append(response.headers.get("retry-after"))
            if response.status_code == 202:
                self.answers.stored_keys.extend(_keys(batch))
        return response.status_code != 503


def _keys(batch: list[str]) -> list[tuple[uuid.UUID, int, bool]]:
    return [(k.quota_id, k.version, k.is_delete) for k in (key_event(loads(t)) for t in batch)]


@pytest.mark.soak
def test_database_stopped_and_started_under_load_loses_nothing(
    restartable_pg: RestartablePostgres, broker: KafkaBroker, tmp_path: Path
) -> None:
    dsn = restartable_pg.dsn
    rng = random.Random(23)
    http_stream = quota_stream(rng, 6000 if SOAK else 2400)
    kafka_stream = quota_stream(rng, 6000 if SOAK else 2400)
    feed = Feed(broker, broker.create_topic(PARTITIONS), f"quota-inbox-outage-{uuid.uuid4().hex[:8]}")
    service_env = quick_env(dsn, INBOX_HTTP_PORT="0", INBOX_LEASE_SECONDS="3")
    consumer_env = {**feed.env(dsn), "INBOX_KAFKA_BATCH_SIZE": "100", "PYTHONUNBUFFERED": "1"}
    answers = Answers()
    batches = _batches(http_stream, 20)
    per_sender = [batches[i::POSTERS] for i in range(POSTERS)]

    with (
        inbox_process("run", env=service_env, log=tmp_path / "run.log") as service,
        inbox_process("consume", env=consumer_env, log=tmp_path / "consume.log") as consumer,
    ):
        url = service.url()
        senders = [Sender(url, mine, answers, pace=0.25 if SOAK else 0.1) for mine in per_sender]
        for sender in senders:
            sender.start()
        producing = feed.produce_in_background(kafka_stream.messages, pace=0.15 if SOAK else 0.1)
        wait_for(lambda: answers.statuses[202] >= 10, "some events accepted before the outage")

        outage = _outage(restartable_pg, service, feed)

        for sender in senders:
            sender.join(300)
            assert sender.error is None, sender.error
        producing.join(300)
        wait_for(feed.all_committed, "every Kafka offset committed", timeout=120)
        wait_for(lambda: _settled(dsn), "every accepted event to be applied", timeout=180)
        assert service.proc.poll() is None and consumer.proc.poll() is None  # never restarted

    print(
        f"\noutage {outage.seconds:.1f} s; HTTP answers {dict(answers.statuses)}; "
        f"/ready during the outage {outage.ready}; committed offsets held {outage.committed_held}; "
        f"{len(set(answers.stored_keys))} HTTP events, {len(kafka_stream.keys)} Kafka events"
    )
    assert set(answers.statuses) == {202, 503}  # never a 500
    assert answers.statuses[503] >= POSTERS
    assert all(value is not None and int(value) > 0 for value in answers.retry_after)
    assert set(outage.ready) == {503}
    assert outage.committed_held
    with connect(dsn, autocommit=True) as db:
        stored = {
            (r["quota_id"], r["version"], r["is_delete"])
            for r in db.execute("SELECT quota_id, version, is_delete FROM inbox.quota_events")
        }
        assert set(answers.stored_keys) <= stored  # every 202 was stored ...
        assert set(answers.stored_keys) == http_stream.keys  # ... and every batch got its 202 in the end
        assert stored == http_stream.keys | kafka_stream.keys
        assert set(status_counts(db)) <= {"applied", "stale"}
        assert dead_letters(db) == []
        assert quota_rows(db) == {**expected_rows(http_stream), **expected_rows(kafka_stream)}


@dataclass
class Outage:
    seconds: float = 0.0
    ready: list[int] = field(default_factory=list)
    committed_held: bool = False


def _outage(pg: RestartablePostgres, service: InboxProcess, feed: Feed) -> Outage:
    """Stop PostgreSQL, watch the service and the consumer while it is away, start it again."""
    outage = Outage()
    pg.stop()
    stopped = time.monotonic()
    time.sleep(1.0)  # a commit of a batch stored just before the stop may still be in flight
    committed = feed.broker.committed(feed.topic, feed.group, PARTITIONS)
    with httpx.Client(base_url=service.url(), timeout=30) as client:
        while time.monotonic() - stopped < OUTAGE_SECONDS - 1.0:
            outage.ready.append(client.get("/ready").status_code)
            assert client.get("/health").status_code == 200
            time.sleep(0.5)
    outage.committed_held = feed.broker.committed(feed.topic, feed.group, PARTITIONS) == committed
    pg.start()
    outage.seconds = time.monotonic() - stopped
    return outage


def _settled(dsn: str) -> bool:
    with connect(dsn, autocommit=True) as db:
        counts = status_counts(db)
    return counts.get("pending", 0) + counts.get("processing", 0) == 0
