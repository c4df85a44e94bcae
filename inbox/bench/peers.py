"""Paths 1-3: what the pipeline is compared with, on the same server and the same events.

1. the seed's design: one HTTP request and one transaction per event (seed_app.py);
2. pgmq as a peer queue: the events through send_batch, read and delete, producer and consumer
   running at once, as ours do; it stores and hands over, it validates and applies nothing;
3. the practical ceiling: no service at all, COPY into the inbox and one set-based upsert into quota
   (no validation, no version-gate table, no outbox).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg

from inbox.bench.cluster import Cluster, free_port, scalar, services, spawn, wait_http
from inbox.bench.config import Config
from inbox.bench.events import Stream
from inbox.bench.load import post_all
from inbox.bench.measure import Measurement
from inbox.db.connect import connect


def per_event(cluster: Cluster, stream: Stream, cfg: Config, workdir: Path) -> Measurement:
    dsn = cluster.database("per_event", seeded=True)
    bodies = [text.encode("utf-8") for text in stream.texts(0, cfg.per_event)]
    port = free_port()
    with services(workdir) as started:
        app = spawn(started, workdir, "seed-app", ["-m", "inbox.bench.seed_app", str(port), dsn], os.environ)
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
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgmq.create('bench_peer')")
    produced: list[float] = []

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for texts in batches:
                conn.execute("SELECT pgmq.send_batch('bench_peer', %s::jsonb[])", [texts]).fetchall()
        produced.append(time.perf_counter())

    start = time.perf_counter()
    producer = threading.Thread(target=produce, name="pgmq-producer")
    producer.start()
    consumed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
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
    return Measurement(
        "pgmq",
        "2. pgmq: send_batch, read, delete",
        consumed,
        end - start,
        {"send_seconds": round(produced[0] - start, 4), "batch": cfg.batch_size},
    )


# Highest version per quota, upserted (version-gated) or deleted, every inbox row marked applied.
CEILING_APPLY = """
WITH latest AS (
    SELECT DISTINCT ON (e.quota_id) e.quota_id, e.version, e.is_delete, e.payload -> 'data' AS d
    FROM inbox.quota_events e
    WHERE e.status = 'pending'
    ORDER BY e.quota_id, e.version DESC, e.is_delete DESC
),
upserted AS (
    INSERT INTO public.quota AS q (quota_id, counterparty_id, direction, period_month, qty_t,
                                   tolerance_pct, incoterm_code, metal_code, source_version,
                                   source_updated_at)
    SELECT l.quota_id, l.d ->> 'counterparty_id', l.d ->> 'direction',
           date_trunc('month', (l.d ->> 'period_month')::date)::date, (l.d ->> 'qty_t')::numeric,
           (l.d ->> 'tolerance_pct')::numeric, l.d ->> 'incoterm_code', l.d ->> 'metal_code',
           l.version, (l.d ->> 'updated_at')::timestamptz
    FROM latest l
    WHERE NOT l.is_delete
    ON CONFLICT (quota_id) DO UPDATE
        SET counterparty_id = excluded.counterparty_id, direction = excluded.direction,
            period_month = excluded.period_month, qty_t = excluded.qty_t,
            tolerance_pct = excluded.tolerance_pct, incoterm_code = excluded.incoterm_code,
            metal_code = excluded.metal_code, source_version = excluded.source_version,
            source_updated_at = excluded.source_updated_at, updated_at = now()
        WHERE q.source_version < excluded.source_version
    RETURNING 1
),
deleted AS (
    DELETE FROM public.quota q
    USING latest l
    WHERE l.is_delete AND q.quota_id = l.quota_id AND q.source_version < l.version
    RETURNING 1
)
UPDATE inbox.quota_events e
SET status = 'applied', applied_at = now()
WHERE e.status = 'pending'
"""


def copy_rows(stream: Stream, start: int, stop: int) -> str:
    """Inbox rows in COPY text format (the generated JSON holds no tab, newline or backslash)."""
    return "".join(
        f"{q}\t{v}\t{'t' if d else 'f'}\t{text}\thttp\n"
        for (q, v, d), text in zip(stream.keys(start, stop), stream.texts(start, stop), strict=True)
    )


def ceiling(cluster: Cluster, stream: Stream) -> Measurement:
    dsn = cluster.database("ceiling", seeded=True)
    rows = copy_rows(stream, 0, len(stream))
    with connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY inbox.quota_events (quota_id, version, is_delete, payload, source) FROM STDIN"
        ) as copy:
            copy.write(rows)
        copied = time.perf_counter()
        conn.execute(CEILING_APPLY)
        end = time.perf_counter()
    return Measurement(
        "ceiling",
        "3. ceiling: COPY + one set-based upsert, no service",
        len(stream),
        end - start,
        {"copy_seconds": round(copied - start, 4), "upsert_seconds": round(end - copied, 4)},
    )
