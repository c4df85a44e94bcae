"""Paths 4, 6 and 7: our service as deployed, `inbox serve` and `inbox work` processes on the same
PostgreSQL, fed over HTTP by this process. Validation and the outbox are on, as shipped."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inbox.db.connect import DictConnection, connect
from inbox_bench.cluster import (
    Cluster,
    RssSampler,
    Service,
    cpu_seconds,
    scalar,
    service_env,
    services,
    start_inbox,
    wait_http,
)
from inbox_bench.config import Config
from inbox_bench.events import Stream, generate
from inbox_bench.load import Sent, paced, post_all
from inbox_bench.measure import Measurement, Stopwatch, percentiles, processed, status_counts, wait_drained
from inbox_bench.processes import free_port
from inbox_bench.threads import Background

NDJSON = "application/x-ndjson"
WORKER_SESSIONS = "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE 'quota-inbox %:%:%'"


@dataclass
class Pipeline:
    base_url: str
    server: Service
    workers: list[Service]

    @property
    def all(self) -> list[Service]:
        return [self.server, *self.workers]

    def pids(self, cluster: Cluster) -> dict[str, int]:
        """The processes that do the work, by role, for memory and CPU figures."""
        named = {"inbox serve": self.server.process.pid, "bench client": os.getpid()}
        named.update({f"inbox work {i + 1}": w.process.pid for i, w in enumerate(self.workers)})
        named["postgres"] = cluster.postmaster_pid()
        return named


def worker_env(dsn: str, cfg: Config, extra: dict[str, str] | None = None) -> dict[str, str]:
    return service_env(
        dsn,
        {"INBOX_BATCH_SIZE": str(cfg.batch_size), "INBOX_WORKERS": str(cfg.worker_threads), **(extra or {})},
    )


def start_workers(
    started: list[Service], workdir: Path, dsn: str, cfg: Config, extra: dict[str, str]
) -> list[Service]:
    workers = [
        start_inbox(started, workdir, "work", worker_env(dsn, cfg, extra))
        for _ in range(cfg.worker_processes)
    ]
    expected = cfg.worker_processes * cfg.worker_threads
    with connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while scalar(conn, WORKER_SESSIONS) < expected:  # each worker thread connects on its first claim
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the worker processes did not connect within 60 s")
            time.sleep(0.05)
    return workers


@contextmanager
def pipeline(workdir: Path, dsn: str, cfg: Config, extra: dict[str, str] | None = None) -> Iterator[Pipeline]:
    port = free_port()
    with services(workdir) as started:
        env = service_env(dsn, {"INBOX_HTTP_PORT": str(port)})
        server = start_inbox(started, workdir, "serve", env)
        base_url = f"http://127.0.0.1:{port}"
        wait_http(server, f"{base_url}/ready")
        yield Pipeline(base_url, server, start_workers(started, workdir, dsn, cfg, extra or {}))


def http_path(cluster: Cluster, stream: Stream, cfg: Config, workdir: Path) -> Measurement:
    dsn = cluster.database("http", seeded=True)
    batches = stream.batches(cfg.http_batch)
    bodies = [stream.ndjson(a, z) for a, z in batches]
    with pipeline(workdir, dsn, cfg) as running, connect(dsn, autocommit=True) as conn:
        clock = Stopwatch(running.pids(cluster), len(stream))
        post_all(running.base_url, "/events", len(bodies), bodies.__getitem__, cfg.http_senders, NDJSON)
        ingested = time.perf_counter()
        clock.stop(wait_drained(conn, running.all, timeout=600))
        counts = status_counts(conn)
    functions = cluster.function_times(dsn, len(stream))
    # the clock adds where the time goes: CPU seconds by process over the run (the machine has
    # cpu_cores x seconds to give); postgres = every server process, ingest and apply
    return clock.measurement(
        "http",
        "4. ours over HTTP: batch POSTs, workers, outbox",
        {
            "ingest_seconds": round(ingested - clock.start, 4),
            "events_per_request": cfg.http_batch,
            "concurrent_requests": cfg.http_senders,
            "worker_processes": cfg.worker_processes,
            "worker_threads": cfg.worker_threads,
            "batch_size": cfg.batch_size,
            "statuses": counts,
            # inside PostgreSQL: wall time per event in each SQL function (waits included)
            "sql_function_us_per_event": functions,
        },
    )


class AppliedWatcher:
    """Client-side latency: a consumer in a process of its own polls the inbox, by primary key, for
    the acknowledged events it has not yet seen finished, every `poll` seconds. Its resolution is the
    poll interval plus one query.

    Its own process: in the client's, it shared one GIL with the 4 paced senders, so a finished event
    waited for the senders' threads before the poller could look, and the client-side tail was
    partly the benchmark's. The poller uses a prepared statement (re-planned every 2 ms it took a
    third of a core) and looks only for events whose 202 has come back: a client cannot look for an
    event it does not know was taken, and one that looked for every event handed to a sender made
    each poll cost what the senders had queued, which grew as the server fell behind."""

    def __init__(self, dsn: str, keys: list[tuple[str, int, bool]], poll: float = 0.005) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: this process has threads and sessions
        self._acked: multiprocessing.Queue[tuple[int, int] | None] = context.Queue()
        self._seen: multiprocessing.Queue[tuple[dict[int, float], dict[str, float]]] = context.Queue()
        self.process = context.Process(
            target=watch_applied,
            args=(dsn, keys, poll, self._acked, self._seen),
            name="applied-watcher",
            daemon=True,
        )
        self.process.start()
        self.seen: dict[int, float] = {}
        self.own: dict[str, float] = {}  # its CPU seconds and what one look took (ms)

    def acked(self, sent: Sent) -> None:
        self._acked.put((sent.first, sent.stop))

    def __enter__(self) -> AppliedWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every acknowledged event seen (or 120 s), then the times it was seen."""
        self._acked.put(None)
        self.seen, self.own = self._seen.get(timeout=130)
        self.process.join(10)


# One primary-key lookup per event (LATERAL ... LIMIT 1): as a join, the prepared statement's generic
# plan hash-joined the few keys to a scan of the whole inbox (a look took 11-14 ms at p50, more than
# the poll interval it is meant to resolve).
WATCH_QUERY = """
    SELECT k.i
    FROM unnest(%s::uuid[], %s::bigint[], %s::boolean[], %s::int[]) AS k(quota_id, version, is_delete, i)
    CROSS JOIN LATERAL (
        SELECT 1
        FROM inbox.quota_events e
        WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
          AND e.status IN ('applied', 'stale', 'dead')
        LIMIT 1
    ) e
"""


def watch_applied(
    dsn: str,
    keys: list[tuple[str, int, bool]],
    poll: float,
    acked: multiprocessing.Queue[tuple[int, int] | None],
    result: multiprocessing.Queue[tuple[dict[int, float], dict[str, float]]],
) -> None:
    """AppliedWatcher's process: the wall-clock time (time.time(), the senders' clock) at which each
    acknowledged event was first seen finished, with its CPU seconds and the ms one look took (p50,
    max); sent back once told to stop and all were seen."""
    looks: list[float] = []
    seen: dict[int, float] = {}
    unseen: set[int] = set()
    stopping = False
    deadline = float("inf")
    with connect(dsn, autocommit=True) as conn:
        while not stopping or (unseen and time.monotonic() < deadline):
            while True:
                try:
                    item = acked.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping, deadline = True, time.monotonic() + 120
                else:
                    unseen.update(range(*item))
            if unseen:
                began = time.perf_counter()
                waiting = sorted(unseen)
                chosen = [keys[i] for i in waiting]
                rows = conn.execute(
                    WATCH_QUERY,
                    [[k[0] for k in chosen], [k[1] for k in chosen], [k[2] for k in chosen], waiting],
                    prepare=True,
                ).fetchall()
                now = time.time()
                for row in rows:
                    seen[int(row["i"])] = now
                    unseen.discard(int(row["i"]))
                looks.append((time.perf_counter() - began) * 1000)
            time.sleep(poll)
    own = {"cpu_seconds": round(time.process_time(), 2)}
    if looks:
        looks.sort()
        own |= {"look_ms_p50": round(looks[len(looks) // 2], 2), "look_ms_max": round(looks[-1], 2)}
    result.put((seen, own))


def latency(cluster: Cluster, stream: Stream, cfg: Config, workdir: Path) -> Measurement:
    dsn = cluster.database("latency", seeded=True)
    total = min(len(stream), cfg.latency_rate * cfg.latency_seconds)
    requests = [(a, z, stream.ndjson(a, z)) for a, z in stream.batches(cfg.latency_batch) if z <= total]
    interval = cfg.latency_batch / cfg.latency_rate
    watcher = AppliedWatcher(dsn, stream.keys(0, total))
    with pipeline(workdir, dsn, cfg) as running, connect(dsn, autocommit=True) as conn:
        clock = Stopwatch(running.pids(cluster), total)
        with watcher:
            sent = paced(running.base_url, requests, interval, on_ack=watcher.acked)
            wait_drained(conn, running.all, timeout=120)
            time.sleep(0.05)
        clock.stop()
        server_ms = [
            float(r["ms"])
            for r in conn.execute(
                "SELECT extract(epoch FROM applied_at - received_at) * 1000 AS ms"
                " FROM inbox.quota_events WHERE status = 'applied'"
            ).fetchall()
        ]
    with connect(dsn, autocommit=True) as conn:  # the services' sessions have ended: their stats are in
        calls = function_calls(conn, ("claim_batch", "record_claim", "process_batch"))
    client_ms = [
        (watcher.seen[i] - s.acked) * 1000 for s in sent for i in range(s.first, s.stop) if i in watcher.seen
    ]
    request_ms = [(s.acked - s.due) * 1000 for s in sent]
    seconds = max(s.acked for s in sent) - min(s.due for s in sent)
    load = os.getloadavg()
    return Measurement(
        "latency",
        f"6. latency at {cfg.latency_rate:,} events/s offered",
        total,
        seconds,
        {
            "offered_events_per_second": cfg.latency_rate,
            "events_per_request": cfg.latency_batch,
            "server_ms": percentiles(server_ms),
            "client_ms": percentiles(client_ms),
            "request_ms": percentiles(request_ms),
            # request_ms in two: waiting for a free sender (the client's queue), then the POST itself
            "sender_wait_ms": percentiles([(s.started - s.due) * 1000 for s in sent]),
            "post_ms": percentiles([(s.acked - s.started) * 1000 for s in sent]),
            # of the cores_x_seconds the machine had over the run, what each process used: near the
            # total, every process queued for a core, and the tails are that queue
            "cpu_seconds": clock.cpu,
            "cores_x_seconds": round((os.cpu_count() or 1) * seconds, 1),
            "load_average_1m_at_end": round(load[0], 2),
            # calls and ms per call (wall time in the function, waits included; track_functions):
            # claim_batch calls beyond record_claim's found nothing
            "functions": calls,
            "watcher": watcher.own,  # the client-side poller's process (it ends before the clock)
            "server_note": "applied_at - received_at: the ingest transaction's start to the apply's mark of "
            "the event (clock_timestamp); applied at ingest, to its store as applied (migration 023: the "
            "apply follows in the POST's own transaction, before its commit)",
            "client_note": "202 received -> seen finished by a 5 ms poller, own process (+ the poll)",
        },
    )


def function_calls(conn: DictConnection, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Calls and mean ms per call of these inbox functions in this database (track_functions)."""
    rows = conn.execute(
        "SELECT funcname, sum(calls)::bigint AS calls, sum(total_time) AS total, sum(self_time) AS self"
        " FROM pg_stat_user_functions WHERE schemaname = 'inbox' AND funcname = ANY(%s) GROUP BY funcname",
        [list(names)],
    ).fetchall()
    return {
        r["funcname"]: {
            "calls": r["calls"],
            "ms_per_call": round(r["total"] / max(r["calls"], 1), 3),
            "self_ms_per_call": round(r["self"] / max(r["calls"], 1), 3),
        }
        for r in rows
    }


@dataclass
class Progress(Background):
    """(time, events processed) every `interval` seconds, from the database's counters. With
    `events` and `pids`, also where each tenth of them went: at each tenth's end a snapshot of the
    server's counters and the processes' CPU (tenth_snapshot), and between, what the sessions of
    the database were doing (pg_stat_activity's wait events, sampled each interval)."""

    dsn: str
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)
    events: int = 0
    pids: dict[str, int] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, int]] = field(default_factory=lambda: [{}])

    THREAD = "progress"

    size_every: int = 10  # every size_every samples, the files' sizes too (peaks)
    peak_bytes: dict[str, int] = field(default_factory=dict)

    def _run(self) -> None:
        with connect(self.dsn, autocommit=True) as conn:
            if self.events:
                self.snapshots.append(tenth_snapshot(conn, self.pids))
            while True:
                self._sample(conn)
                if len(self.samples) % self.size_every == 1:
                    for name, size in file_sizes(conn).items():
                        self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), size)
                if self._stop.wait(self.interval):
                    self._sample(conn)
                    return

    def _sample(self, conn: DictConnection) -> None:
        self.samples.append((time.perf_counter(), processed(conn)))
        if not self.events:
            return
        bucket = self.waits[-1]
        for row in conn.execute(WAITS).fetchall():
            bucket[str(row["what"])] = bucket.get(str(row["what"]), 0) + 1
        if self.latest >= self.events * len(self.snapshots) / 10 and len(self.snapshots) <= 10:
            self.snapshots.append(tenth_snapshot(conn, self.pids))
            self.waits.append({})

    @property
    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def time_at(self, events: float) -> float:
        """When `events` had been processed, interpolated between samples."""
        for (t0, n0), (t1, n1) in zip(self.samples, self.samples[1:], strict=False):
            if n0 <= events <= n1 and n1 > n0:
                return t0 + (t1 - t0) * (events - n0) / (n1 - n0)
        raise ValueError(f"{events} events were never reached (last sample {self.latest})")


FILES = """
SELECT 'inbox.quota_events' AS name, pg_relation_size('inbox.quota_events') AS bytes
UNION ALL
SELECT 'inbox.quota_events toast', coalesce(pg_total_relation_size(nullif(reltoastrelid, 0)), 0)
FROM pg_class WHERE oid = 'inbox.quota_events'::regclass
UNION ALL
(SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
 WHERE indrelid = 'inbox.quota_events'::regclass ORDER BY 1)
UNION ALL
SELECT t, pg_total_relation_size(t::regclass)
FROM unnest(ARRAY['pgmq.q_quota_changes', 'public.quota', 'inbox.quota_versions', 'inbox.claim_ledger',
                  'inbox.claim_debts', 'inbox.metric_counters']) AS t
"""


def file_sizes(conn: DictConnection) -> dict[str, int]:
    """Bytes on disk: the inbox's heap, its TOAST and each index apart, then the other tables whole
    (indexes and TOAST included)."""
    return {str(r["name"]): int(r["bytes"]) for r in conn.execute(FILES).fetchall()}


# what each session of the soak's database (and the server's own processes) is doing now: one
# sample; summed over a tenth, the share of time spent running (CPU), on locks, on I/O, on WAL
WAITS = """
SELECT coalesce(nullif(backend_type, 'client backend'), split_part(application_name, ':', 1)) || ' '
       || CASE WHEN state = 'idle' THEN 'idle' ELSE coalesce(wait_event_type || ':' || wait_event, 'running')
          END AS what
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND (datname = current_database() OR datname IS NULL)
  AND backend_type NOT IN ('logical replication launcher', 'archiver', 'io worker')
"""

SERVER_COUNTERS = """
SELECT (SELECT num_timed + num_requested FROM pg_stat_checkpointer) AS checkpoints,
       (SELECT buffers_written FROM pg_stat_checkpointer) AS checkpoint_buffers,
       (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes,
       (SELECT wal_fpi FROM pg_stat_wal) AS wal_fpi,
       (SELECT jsonb_object_agg(relname, jsonb_build_object('vacuums', autovacuum_count,
                                'analyzes', autoanalyze_count, 'dead', n_dead_tup, 'live', n_live_tup))
        FROM pg_stat_user_tables
        WHERE schemaname || '.' || relname IN ('inbox.quota_events', 'inbox.claim_ledger', 'public.quota',
              'inbox.quota_versions', 'pgmq.q_quota_changes', 'inbox.metric_counters')) AS tables,
       -- buffers not found in shared_buffers (read from the kernel) by table, heap and indexes: where a
       -- table or an index outgrows the cache
       (SELECT jsonb_object_agg(schemaname || '.' || relname,
                                heap_blks_read + coalesce(idx_blks_read, 0) + coalesce(toast_blks_read, 0))
        FROM pg_statio_user_tables
        WHERE heap_blks_read + coalesce(idx_blks_read, 0) + coalesce(toast_blks_read, 0) > 0) AS blocks_read
"""


def tenth_snapshot(conn: DictConnection, pids: dict[str, int]) -> dict[str, Any]:
    """The server's cumulative counters, the files' sizes and the processes' CPU now; a tenth's
    figures are the differences of two snapshots. "postgres reaped" is the CPU of the server's
    processes that ended, which the live count misses: autovacuum workers and the sessions that
    closed (retention connects once per run, so its work lands here)."""
    import psutil

    row = conn.execute(SERVER_COUNTERS).fetchone() or {}
    cpu = cpu_seconds(pids)
    if "postgres" in pids:
        times = psutil.Process(pids["postgres"]).cpu_times()
        cpu["postgres reaped"] = float(times.children_user + times.children_system)
    return {
        "at": time.perf_counter(),
        "events": processed(conn),
        "cpu": cpu,
        "sizes": file_sizes(conn),
        **row,
    }


def tenth_figures(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tenth (two snapshots apart): events, seconds, CPU microseconds per event by process, WAL
    bytes and full-page images per event, checkpoints, autovacuum runs by table, and the largest
    files' MB at its end."""
    figures = []
    for a, b in itertools.pairwise(snapshots):
        n = max(1, int(b["events"]) - int(a["events"]))
        vacuums_before = {t: v["vacuums"] for t, v in (a["tables"] or {}).items()}
        cpu = {k: round((b["cpu"][k] - a["cpu"].get(k, 0.0)) / n * 1e6, 1) for k in b["cpu"]}
        figures.append(
            {
                "events": n,
                "seconds": round(b["at"] - a["at"], 2),
                "cpu_us_per_event": cpu,
                "wal_bytes_per_event": round((int(b["wal_bytes"]) - int(a["wal_bytes"])) / n),
                "wal_fpi_per_1000_events": round((int(b["wal_fpi"]) - int(a["wal_fpi"])) * 1000 / n, 1),
                "checkpoints": int(b["checkpoints"]) - int(a["checkpoints"]),
                "checkpoint_buffers": int(b["checkpoint_buffers"]) - int(a["checkpoint_buffers"]),
                "autovacuums": {
                    t: v["vacuums"] - vacuums_before.get(t, 0)
                    for t, v in (b["tables"] or {}).items()
                    if v["vacuums"] != vacuums_before.get(t, 0)
                },
                "mb_at_end": {k: _mb(v) for k, v in b["sizes"].items() if v >= 8 * 2**20},
                "blocks_read_per_1000_events": {
                    t: round((v - (a["blocks_read"] or {}).get(t, 0)) * 1000 / n, 1)
                    for t, v in (b["blocks_read"] or {}).items()
                    if v - (a["blocks_read"] or {}).get(t, 0) >= n / 100
                },
            }
        )
    return figures


SIZES = """
SELECT pg_total_relation_size('inbox.quota_events') AS inbox_bytes,
       (SELECT count(*) FROM inbox.quota_events) AS inbox_rows,
       pg_total_relation_size('public.quota') AS quota_bytes,
       (SELECT count(*) FROM public.quota) AS quota_rows,
       pg_total_relation_size('pgmq.q_quota_changes') AS outbox_bytes,
       (SELECT count(*) FROM pgmq.q_quota_changes) AS outbox_messages,
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE relid = 'inbox.quota_events'::regclass) AS inbox_dead_tuples
"""


def soak(cluster: Cluster, cfg: Config, workdir: Path) -> Measurement:
    """Many events through HTTP with retention on (compressed to seconds): does throughput hold,
    do the tables stay bounded, does memory stay flat? The producer keeps at most soak_backlog
    events unprocessed, like a producer that is told to slow down, so ingest and apply overlap to
    the end instead of the backlog draining alone."""
    stream = generate(cfg.soak_events, cfg.soak_quotas)  # from version 1: the first lap creates them
    dsn = cluster.database("soak")
    batches = stream.batches(cfg.http_batch)
    retention = {
        "INBOX_RETENTION": f"PT{cfg.soak_retention_seconds}S",
        "INBOX_RETENTION_INTERVAL_SECONDS": str(max(1, cfg.soak_retention_seconds // 2)),
    }
    progress = Progress(dsn, events=len(stream))
    held_back: list[float] = []  # each time the producer waited for the backlog, how long

    def body(k: int) -> bytes:
        start, stop = batches[k]
        if start - progress.latest > cfg.soak_backlog:
            waited = time.perf_counter()
            while start - progress.latest > cfg.soak_backlog:
                time.sleep(0.02)
            held_back.append(time.perf_counter() - waited)
        return stream.ndjson(start, stop)

    with pipeline(workdir, dsn, cfg, retention) as running, connect(dsn, autocommit=True) as conn:
        progress.pids = running.pids(cluster)
        with RssSampler(running.pids(cluster)) as rss, progress:
            start = time.perf_counter()
            post_all(running.base_url, "/events", len(batches), body, cfg.http_senders, NDJSON)
            posted, left = time.perf_counter(), len(stream) - processed(conn)
            end = wait_drained(conn, running.all, timeout=3600, poll=0.05)
        time.sleep(cfg.soak_retention_seconds + 1)
        before_purge = file_sizes(conn)
        purged = _purge(conn, cfg.soak_retention_seconds)
        sizes = conn.execute(SIZES).fetchone()
        after = file_sizes(conn)
    functions = cluster.function_times(dsn, len(stream))
    return Measurement(
        "soak",
        f"7. soak: {len(stream):,} events over HTTP, retention on",
        len(stream),
        end - start,
        {
            **_tenths(progress, start, len(stream)),
            # where each tenth went (Progress): CPU per event by process, WAL, checkpoints,
            # autovacuums, and what the sessions were waiting on (samples of pg_stat_activity)
            "tenths": [
                {**figures, "waits": dict(sorted(waits.items(), key=lambda kv: -kv[1])[:12])}
                for figures, waits in zip(tenth_figures(progress.snapshots), progress.waits, strict=False)
            ],
            "after_retention": {**(sizes or {}), "purged_at_end": purged},
            # MB on disk per file: the largest seen while events flowed (sampled every few seconds),
            # when the last event was applied, and after the final purge
            "files_mb": {
                name: {
                    "peak": _mb(max(progress.peak_bytes.get(name, 0), before_purge.get(name, 0))),
                    "drained": _mb(before_purge.get(name, 0)),
                    "after_retention": _mb(size),
                }
                for name, size in after.items()
            },
            "peak_rss_mb": {name: round(b / 2**20, 1) for name, b in rss.peaks.items()},
            # inside PostgreSQL: wall time per event in each SQL function (waits included), the
            # final purge's included
            "sql_function_us_per_event": functions,
            "retention_seconds": cfg.soak_retention_seconds,
            "max_backlog": cfg.soak_backlog,
            # the end of the last tenth: the backlog left when the last POST was answered, applied
            # with no ingest beside it; a drain much slower than the tenths would be a tail artifact
            "drain": {
                "events": left,
                "seconds": round(end - posted, 2),
                "events_per_second": round(left / (end - posted), 1) if end > posted else 0.0,
            },
            # how often and how long the producer waited for the workers: a stall would show here
            "producer_waits": {
                "count": len(held_back),
                "longest_seconds": round(max(held_back, default=0.0), 2),
            },
        },
    )


def _tenths(progress: Progress, start: int | float, events: int) -> dict[str, Any]:
    tenth = events / 10
    first = tenth / (progress.time_at(tenth) - start)
    last = tenth / (progress.time_at(events) - progress.time_at(events - tenth))
    bounds = [start, *(progress.time_at(tenth * k) for k in range(1, 11))]
    rates = [tenth / (b - a) for a, b in itertools.pairwise(bounds)]
    return {
        "first_tenth_events_per_second": round(first, 1),
        "last_tenth_events_per_second": round(last, 1),
        "last_over_first": round(last / first, 3),
        # the first tenth runs before retention deletes (its events are younger than INBOX_RETENTION),
        # before autovacuum's first visit and the first checkpoint, on empty tables: a warm-up, not
        # the steady state (README, the soak). Against tenths 2-9 the last tenth says whether the
        # rate holds once every cost is paid.
        "last_over_median_of_tenths_2_to_9": round(last / statistics.median(rates[1:9]), 3),
        "tenths_events_per_second": [round(r, 1) for r in rates],
    }


def _mb(size: int) -> float:
    return round(size / 2**20, 1)


def _purge(conn: DictConnection, older_than_seconds: int) -> int:
    """What the retention job does, run to the end once: the table left is what retention keeps."""
    total = 0
    while purged := int(
        scalar(
            conn,
            "SELECT inbox.purge_finished_events(make_interval(secs => %s), 5000) AS n",
            [older_than_seconds],
        )
    ):
        total += purged
    return total
