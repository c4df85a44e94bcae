"""Paths 1 and 2: what the pipeline is compared with, on the same server and the same events
(the ceilings, path 3, are in ceiling.py).

1. the seed's design: one HTTP request and one transaction per event (seed_app.py);
2. pgmq as a peer queue: the events through send_batch, read and delete, producer and consumer
   running at once, as ours do; it stores and hands over, it validates and applies nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg

from inbox.db.connect import connect
from inbox_bench.cluster import (
    Cluster,
    cpu_seconds,
    cpu_us_per_event,
    cpu_used,
    scalar,
    services,
    spawn,
    wait_http,
)
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.load import post_all
from inbox_bench.measure import Measurement
from inbox_bench.processes import free_port


def per_event(cluster: Cluster, stream: Stream, cfg: Config, workdir: Path) -> Measurement:
    dsn = cluster.database("per_event", seeded=True)
    bodies = [text.encode("utf-8") for text in stream.texts(0, cfg.per_event)]
    port = free_port()
    with services(workdir) as started:
        app = spawn(started, workdir, "seed-app", ["-m", "inbox_bench.seed_app", str(port), dsn], os.environ)
        url = f"http://127.0.0.1:{port}"
        wait_http(app, f"{url}/health")
        start = time.perf_counter()
        post_all(url, "/event", len(bodies), bodies.__getitem__, cfg.per_event_senders)
        seconds = time.perf_counter() - start
    with connect(dsn, autocommit=True) as conn:
        changed = scalar(conn, "SELECT count(*) AS n FROM public.quota WHERE source_version > 1")
    return Measurement(
        "per_event",
        "1. per event: one request, one transaction (the seed)",
        len(bodies),
        seconds,
        {"concurrent_requests": cfg.per_event_senders, "quota_rows_updated": int(changed)},
    )


def pgmq_peer(cluster: Cluster, stream: Stream, cfg: Config) -> Measurement:
    dsn = cluster.database("pgmq", seeded=True)
    batches = [stream.texts(a, z) for a, z in stream.batches(cfg.batch_size)]
    produced: list[float] = []
    # both sessions stay open until the CPU is read: a backend that ended takes its CPU time with it
    with psycopg.connect(dsn, autocommit=True) as sender, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgmq.create('bench_peer')")
        pids = {"postgres": cluster.postmaster_pid(), "bench client": os.getpid()}

        def produce() -> None:
            for texts in batches:
                sender.execute("SELECT pgmq.send_batch('bench_peer', %s::jsonb[])", [texts]).fetchall()
            produced.append(time.perf_counter())

        cpu_0 = cpu_seconds(pids)
        start = time.perf_counter()
        producer = threading.Thread(target=produce, name="pgmq-producer")
        producer.start()
        consumed = 0
        while consumed < len(stream):
            rows = conn.execute(
                "SELECT msg_id, message FROM pgmq.read('bench_peer', 30, %s)", [cfg.batch_size]
            ).fetchall()
            if not rows:
                time.sleep(0.001)  # a pgmq consumer polls; read_with_poll would sleep longer
                continue
            conn.execute(
                "SELECT count(*) FROM pgmq.delete('bench_peer', %s::bigint[])", [[r[0] for r in rows]]
            )
            consumed += len(rows)
        end = time.perf_counter()
        producer.join()
        cpu = cpu_used(cpu_0, cpu_seconds(pids))
    return Measurement(
        "pgmq",
        "2. pgmq: send_batch, read, delete",
        consumed,
        end - start,
        {
            "send_seconds": round(produced[0] - start, 4),
            "batch": cfg.batch_size,
            "cpu_seconds": cpu,
            "cpu_us_per_event": cpu_us_per_event(cpu, consumed),
        },
    )
