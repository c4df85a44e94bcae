"""Path 5: our Kafka path end to end. The topic is filled first (that is Titan's work, not ours),
then `inbox consume` and `inbox work` start; timed from the first event stored to the last applied.
Then, in the same run, the broker alone: a bare confluent_kafka consumer reads the same topic (a new
group, the consumer's batch settings, a commit per batch as `inbox consume` makes), so the report
says whether the broker or our consumer is the limit.

The broker is Tansu (tansu.py, the one the tests use too); INBOX_BENCH_KAFKA names a Kafka of your
own instead (its CPU is then not measured).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from inbox.db.connect import DictConnection, connect
from inbox.settings import Settings
from inbox_bench.cluster import (
    Cluster,
    Service,
    cpu_seconds,
    cpu_us_per_event,
    cpu_used,
    scalar,
    service_env,
    services,
    start_inbox,
)
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, status_counts, wait_drained
from inbox_bench.pipeline import start_workers
from inbox_bench.tansu import GROUP_TIMEOUTS, Broker, create_topic, tansu

# `inbox consume` runs with the shipped defaults (INBOX_KAFKA_BATCH_SIZE, INBOX_KAFKA_BATCH_WAIT_SECONDS,
# INBOX_KAFKA_APPLY_AT_INGEST) but INBOX_KAFKA_CONSUMERS, one member per partition (kafka_path); the bare
# consumer reads with the same batches.
BATCH_SIZE: int = Settings.model_fields["kafka_batch_size"].default
BATCH_WAIT_SECONDS: float = Settings.model_fields["kafka_batch_wait_seconds"].default
APPLY_AT_INGEST: bool = Settings.model_fields["kafka_apply_at_ingest"].default

# Per batch the consumer makes one transaction: received_at (its start) tells the batches apart.
BATCHES = """
SELECT count(DISTINCT received_at) AS batches,
       extract(epoch FROM max(received_at) - min(received_at)) AS ingest_seconds
FROM inbox.quota_events
"""


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
    with tansu(workdir, "INBOX_BENCH_KAFKA") as broker:
        fill_pids = _broker_pids(broker, {"bench producer": os.getpid()})
        fill_cpu_before, fill_start = cpu_seconds(fill_pids), time.perf_counter()
        topic = fill_topic(broker.bootstrap, stream, cfg.kafka_partitions)
        fill_seconds = time.perf_counter() - fill_start
        fill_cpu = cpu_used(fill_cpu_before, cpu_seconds(fill_pids))
        env = service_env(
            dsn,
            {
                "INBOX_KAFKA_BOOTSTRAP": broker.bootstrap,
                "INBOX_KAFKA_TOPIC": topic,
                "INBOX_KAFKA_GROUP": f"bench-{topic}",
                "INBOX_KAFKA_CONFIG_JSON": json.dumps(GROUP_TIMEOUTS),
                # a member per partition, as a user sizes a group: Kafka scales one by partitions
                # (with 2, one member holds two partitions and reads alone once the other is done)
                "INBOX_KAFKA_CONSUMERS": str(cfg.kafka_partitions),
            },
        )
        with services(workdir) as started, connect(dsn, autocommit=True) as conn:
            workers = start_workers(started, workdir, dsn, cfg, {})
            pids = {f"inbox work {i + 1}": w.process.pid for i, w in enumerate(workers)}
            pids.update({"postgres": cluster.postmaster_pid(), "bench client": os.getpid()})
            cpu_before = cpu_seconds(_broker_pids(broker, pids))
            consumer = start_inbox(started, workdir, "consume", env)
            pids = _broker_pids(broker, {"inbox consume": consumer.process.pid, **pids})
            _wait_first_event(conn, [consumer, *workers])
            wait_drained(conn, [consumer, *workers], timeout=600, poll=0.05, expected=len(stream))
            cpu = cpu_used(cpu_before, cpu_seconds(pids))
            seconds = float(
                scalar(
                    conn,
                    "SELECT extract(epoch FROM clock_timestamp() - min(received_at)) AS s"
                    " FROM inbox.quota_events",
                )
            )
            counts = status_counts(conn)
            batches = conn.execute(BATCHES).fetchone() or {}
        bare = bare_consume(broker, topic, len(stream))
    n_batches = int(batches.get("batches") or 0)
    return Measurement(
        "kafka",
        "5. ours over Kafka (Tansu): inbox consume, workers",
        len(stream),
        seconds,
        {
            "partitions": cfg.kafka_partitions,
            "statuses": counts,
            "timed_from": "the first event stored (after the group join) to the last applied",
            "consume_batch_size": BATCH_SIZE,
            "consume_batch_wait_seconds": BATCH_WAIT_SECONDS,
            "consume_members": cfg.kafka_partitions,
            "consume_apply_at_ingest": APPLY_AT_INGEST,
            # one transaction per batch: how many, how full, how long the consumer took to store all
            "stored_batches": n_batches,
            "events_per_stored_batch": round(len(stream) / n_batches, 1) if n_batches else None,
            "ingest_seconds": round(float(batches.get("ingest_seconds") or 0.0), 3),
            # where the time goes: CPU seconds by process, from the consumer's start (its imports
            # included) to the last event applied; "tansu" is the broker
            "cpu_seconds": cpu,
            "cpu_us_per_event": cpu_us_per_event(cpu, len(stream)),
            "fill": {
                "seconds": round(fill_seconds, 3),
                "events_per_second": round(len(stream) / fill_seconds, 1),
                "cpu_us_per_event": cpu_us_per_event(fill_cpu, len(stream)),
            },
            "bare_consume": bare,
        },
    )


def bare_consume(broker: Broker, topic: str, expected: int) -> dict[str, Any]:
    """The broker's side alone: every message of the topic read by a bare confluent_kafka consumer
    (a new group, batches as `inbox consume` takes them, a synchronous commit per batch), nothing
    stored. Timed from the first message to the last, like path 5."""
    from confluent_kafka import Consumer

    pids = _broker_pids(broker, {"bench consumer": os.getpid()})
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"bare-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP_TIMEOUTS,
        }
    )
    try:
        consumer.subscribe([topic])
        cpu_before = cpu_seconds(pids)
        seen, batches, first = 0, 0, 0.0
        deadline = time.monotonic() + 300
        while seen < expected and time.monotonic() < deadline:
            messages = [m for m in consumer.consume(BATCH_SIZE, BATCH_WAIT_SECONDS) if m.error() is None]
            if not messages:
                continue
            first = first or time.perf_counter()
            for message in messages:
                message.value()
            seen += len(messages)
            batches += 1
            consumer.commit(asynchronous=False)
        seconds = time.perf_counter() - first
        cpu = cpu_used(cpu_before, cpu_seconds(pids))
    finally:
        consumer.close()
    return {
        "events": seen,
        "seconds": round(seconds, 3),
        "events_per_second": round(seen / seconds, 1) if seconds > 0 else 0.0,
        "batches": batches,
        "cpu_us_per_event": cpu_us_per_event(cpu, seen),
        "note": "timed from the first message to the last (the group join excluded); CPU from the subscribe",
    }


def _broker_pids(broker: Broker, pids: dict[str, int]) -> dict[str, int]:
    return {**pids, "tansu": broker.pid} if broker.pid is not None else pids


def _wait_first_event(conn: DictConnection, running: list[Service]) -> None:
    deadline = time.monotonic() + 60
    while not scalar(conn, "SELECT EXISTS (SELECT 1 FROM inbox.quota_events) AS any"):
        for service in running:
            service.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("inbox consume stored nothing within 60 s")
        time.sleep(0.01)
