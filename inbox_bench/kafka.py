"""Path 5: our Kafka path end to end. The topic is filled first (that is Titan's work, not ours),
then `inbox consume` and `inbox work` start; timed from the first event stored to the last applied.

The broker is Tansu (tansu.py, the one the tests use too); INBOX_BENCH_KAFKA names a Kafka of your
own instead.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from inbox.db.connect import DictConnection, connect
from inbox_bench.cluster import Cluster, Service, inbox_cli, scalar, service_env, services, spawn
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, status_counts, wait_drained
from inbox_bench.pipeline import start_workers
from inbox_bench.tansu import GROUP_TIMEOUTS, create_topic, tansu


def fill_topic(bootstrap: str, stream: Stream, partitions: int) -> str:
    from confluent_kafka import Producer

    topic = create_topic(bootstrap, f"titan.quota.bench.{uuid.uuid4().hex[:8]}", partitions)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    for (quota_id, _, _), text in zip(stream.keys(0, len(stream)), stream.texts(0, len(stream)), strict=True):
        while True:
            try:
                producer.produce(topic, value=text.encode("utf-8"), key=quota_id.encode("ascii"))
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError("the producer could not deliver every event to the broker")
    return topic


def kafka_path(cluster: Cluster, stream: Stream, cfg: Config, workdir: Path) -> Measurement:
    dsn = cluster.database("kafka", seeded=True)
    with tansu(workdir, "INBOX_BENCH_KAFKA") as bootstrap:
        topic = fill_topic(bootstrap, stream, cfg.kafka_partitions)
        env = service_env(
            dsn,
            {
                "INBOX_KAFKA_BOOTSTRAP": bootstrap,
                "INBOX_KAFKA_TOPIC": topic,
                "INBOX_KAFKA_GROUP": f"bench-{topic}",
                "INBOX_KAFKA_CONFIG_JSON": json.dumps(GROUP_TIMEOUTS),
            },
        )
        with services(workdir) as started, connect(dsn, autocommit=True) as conn:
            workers = start_workers(started, workdir, dsn, cfg, {})
            consumer = spawn(started, workdir, "inbox-consume", inbox_cli("consume"), env)
            _wait_first_event(conn, [consumer, *workers])
            wait_drained(conn, [consumer, *workers], timeout=600, expected=len(stream))
            seconds = float(
                scalar(
                    conn,
                    "SELECT extract(epoch FROM clock_timestamp() - min(received_at)) AS s"
                    " FROM inbox.quota_events",
                )
            )
            counts = status_counts(conn)
    return Measurement(
        "kafka",
        "5. ours over Kafka (Tansu): inbox consume, workers",
        len(stream),
        seconds,
        {
            "partitions": cfg.kafka_partitions,
            "statuses": counts,
            "timed_from": "the first event stored (after the group join) to the last applied",
        },
    )


def _wait_first_event(conn: DictConnection, running: list[Service]) -> None:
    deadline = time.monotonic() + 60
    while not scalar(conn, "SELECT EXISTS (SELECT 1 FROM inbox.quota_events) AS any"):
        for service in running:
            service.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("inbox consume stored nothing within 60 s")
        time.sleep(0.01)
