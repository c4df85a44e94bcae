"""A real Kafka-protocol broker for the tests: the benchmark's Tansu starter (inbox_bench.tansu),
or the Kafka that INBOX_TEST_KAFKA (bootstrap servers) names; and the few broker calls tests make."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from inbox_bench.tansu import GROUP_TIMEOUTS, create_topic, tansu


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str

    def create_topic(self, partitions: int = 3) -> str:
        return create_topic(self.bootstrap, f"titan.quota.{uuid.uuid4().hex[:10]}", partitions)

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})

    def committed(self, topic: str, group: str, partitions: int) -> dict[int, int]:
        """The group's committed offset per partition (negative when nothing is committed)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, **GROUP_TIMEOUTS})
        try:
            offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in offsets}


@contextmanager
def kafka_broker(workdir: Path) -> Iterator[KafkaBroker]:
    with tansu(workdir, "INBOX_TEST_KAFKA") as broker:
        yield KafkaBroker(broker.bootstrap)
