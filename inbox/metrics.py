"""Prometheus metrics, read from the database.

The counters are kept by PostgreSQL itself (inbox.metric_counters, maintained by statement-level
triggers in migration 006), not in process memory: every process that serves /metrics reports
the same totals, whichever process, host or JDBC sink did the work, and a restart resets nothing.
Prometheus therefore sees the same series from each scraped process; aggregate them with max(),
never sum().

A scrape reads the figures at most once per INBOX_METRICS_REFRESH_SECONDS; the metrics job of a
worker process refreshes them in the background so a scrape seldom waits on the database.

One figure is the process's own: `inbox consume` adds its Kafka consumer lag (ConsumerLag, from
librdkafka's statistics), for the partitions assigned to it. The alert rules that read all of these
are in deploy/prometheus/.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from inbox.credentials import bearer_matches
from inbox.db.connect import connect, with_timeout
from inbox.db.errors import DatabaseError
from inbox.db.queries import Queries

log = logging.getLogger(__name__)

SOURCES = ("http", "kafka", "sink", "replay", "reconcile")
# The error classes of public.quota_processing_errors. Each is served from the start (at 0), so the
# first dead letter of a class is an increase Prometheus sees, not the birth of a new series.
ERROR_CLASSES = ("invalid", "delete_blocked", "apply_error", "retries_exhausted", "unprocessable")
# A scrape must not hang on a database that does not answer.
CONNECT_TIMEOUT_SECONDS = 3
# Simple counters: (metric in inbox.metric_counters, Prometheus name without _total, help).
SIMPLE_COUNTERS = (
    ("applied", "inbox_events_applied", "Events applied to public.quota."),
    ("stale", "inbox_events_stale", "Events the version gate found not newer than the applied version."),
    ("duplicate", "inbox_events_duplicate", "Deliveries of events the inbox already held."),
    ("retried", "inbox_events_retried", "Events given back for a retry (transient failure, expired lease)."),
)


@dataclass(frozen=True)
class Snapshot:
    """The figures of one read; counters keyed by (metric, label)."""

    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    pending: int = 0
    processing: int = 0
    oldest_pending_age: float = 0.0
    dead_letters_unresolved: int = 0
    latency_buckets: tuple[float, ...] = ()
    has_figures: bool = False  # some read has succeeded
    database_up: bool = False
    read_at: float = 0.0

    def counter(self, metric: str, label: str = "") -> float:
        return self.counters.get((metric, label), 0.0)

    def labels(self, metric: str) -> list[str]:
        return sorted(label for name, label in self.counters if name == metric)


class MetricsSource:
    """Reads a Snapshot from the database, at most once per refresh interval, thread-safe."""

    def __init__(self, dsn: str, refresh_seconds: float) -> None:
        self._dsn = with_timeout(dsn, CONNECT_TIMEOUT_SECONDS, force=True)
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._snapshot = Snapshot()

    def refresh(self) -> Snapshot:
        with self._lock:
            self._snapshot = self._read()
            return self._snapshot

    def snapshot(self) -> Snapshot:
        with self._lock:
            if time.monotonic() - self._snapshot.read_at >= self.refresh_seconds:
                self._snapshot = self._read()
            return self._snapshot

    def _read(self) -> Snapshot:
        try:
            with connect(self._dsn, autocommit=True, application_name="quota-inbox metrics") as conn:
                queries = Queries(conn)
                counters = queries.metrics_counters()
                gauges = queries.metrics_gauges()
        except DatabaseError as exc:
            log.warning("metrics: database unavailable: %s", str(exc).strip())
            # Keep the last figures (counters must not drop to zero), flag the database as down.
            return replace(self._snapshot, database_up=False, read_at=time.monotonic())
        return Snapshot(
            counters=counters,
            pending=gauges.pending,
            processing=gauges.processing,
            oldest_pending_age=float(gauges.oldest_pending_age or 0.0),
            dead_letters_unresolved=gauges.dead_letters_unresolved,
            latency_buckets=tuple(float(b) for b in gauges.latency_buckets),
            has_figures=True,
            database_up=True,
            read_at=time.monotonic(),
        )


class InboxCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return families(self.source.snapshot())


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot: what /metrics serves of the database's figures."""
    yield GaugeMetricFamily(
        "inbox_database_up", "1 when the last read of the figures reached the database.", snap.database_up
    )
    if not snap.has_figures:
        return  # never read: no figures rather than made-up zeros
    yield from _counters(snap)
    yield _latency_histogram(snap)
    yield GaugeMetricFamily(
        "inbox_queue_depth", "Events pending or being processed.", snap.pending + snap.processing
    )
    yield GaugeMetricFamily(
        "inbox_oldest_pending_age_seconds",
        "Age of the oldest pending event since it was received (0 when none).",
        snap.oldest_pending_age,
    )
    yield GaugeMetricFamily(
        "inbox_dead_letters_unresolved",
        "Dead letters not yet replayed or resolved.",
        snap.dead_letters_unresolved,
    )


def _counters(snap: Snapshot) -> Iterator[Metric]:
    ingested = CounterMetricFamily(
        "inbox_events_ingested", "New events stored in the inbox, by source.", labels=["source"]
    )
    for source in sorted({*SOURCES, *snap.labels("ingested")}):
        ingested.add_metric([source], snap.counter("ingested", source))
    yield ingested
    for metric, name, help_text in SIMPLE_COUNTERS:
        yield CounterMetricFamily(name, help_text, value=snap.counter(metric))
    dead = CounterMetricFamily(
        "inbox_events_dead", "Events moved to dead letters, by error class.", labels=["error_class"]
    )
    for error_class in sorted({*ERROR_CLASSES, *snap.labels("dead")}):
        dead.add_metric([error_class], snap.counter("dead", error_class))
    yield dead


def _latency_histogram(snap: Snapshot) -> HistogramMetricFamily:
    """Cumulative buckets from the per-bucket counts the database keeps."""
    # labels are the bounds as PostgreSQL printed them, or '+Inf' (which float() reads too)
    per_bucket = {
        float(label): snap.counter("apply_latency_bucket", label)
        for label in snap.labels("apply_latency_bucket")
    }
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in snap.latency_buckets:
        running += per_bucket.get(bound, 0.0)
        buckets.append((_bound_label(bound), running))
    buckets.append(("+Inf", running + per_bucket.get(float("inf"), 0.0)))
    return HistogramMetricFamily(
        "inbox_apply_latency_seconds",
        "Time from an event's arrival in the inbox to its application.",
        buckets=buckets,
        sum_value=snap.counter("apply_latency_sum"),
    )


def _bound_label(bound: float) -> str:
    return str(int(bound)) + ".0" if bound.is_integer() else repr(bound)


@cache
def source_for(dsn: str, refresh_seconds: float) -> MetricsSource:
    """One source per database and process: the HTTP app, the metrics port and the jobs share it."""
    return MetricsSource(dsn, refresh_seconds)


class ConsumerLag(Collector):
    """The Kafka consumer's lag per assigned partition: librdkafka's `consumer_lag` statistic, the
    partition's high watermark minus the group's committed offset. The consumer commits only what the
    database has stored, so this is what Kafka holds that the inbox does not have yet.

    Fed by the consumer's stats_cb (every `statistics.interval.ms`, from inside consume()). A
    partition whose group has committed nothing yet has no known lag and is left out; a partition
    revoked from a member disappears with that member's next statistics. Several members of the group
    in one process (INBOX_KAFKA_CONSUMERS) each feed their own partitions (member).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lag: dict[int, dict[tuple[str, int], int]] = {}  # by member

    def update(self, stats_json: str, member: int = 0) -> None:
        """librdkafka's statistics JSON (the stats_cb argument) of one member's consumer."""
        try:
            topics = json.loads(stats_json).get("topics", {})
            lag = {
                (topic, int(partition)): int(figures["consumer_lag"])
                for topic, topic_figures in topics.items()
                for partition, figures in topic_figures.get("partitions", {}).items()
                # -1 is librdkafka's internal unassigned partition; lag -1 means unknown
                if int(partition) >= 0 and figures.get("desired") and int(figures["consumer_lag"]) >= 0
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("metrics: unreadable Kafka statistics: %s", exc)
            return
        with self._lock:
            self._lag[member] = lag

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "inbox_kafka_consumer_lag",
            "Messages in the partition after the group's committed offset (this process's partitions).",
            labels=["topic", "partition"],
        )
        with self._lock:
            merged = {where: lag for member in self._lag.values() for where, lag in member.items()}
            for (topic, partition), lag in sorted(merged.items()):
                family.add_metric([topic, str(partition)], lag)
        yield family


def _registry(dsn: str, refresh_seconds: float, *own: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in (InboxCollector(source_for(dsn, refresh_seconds)), *own):
        registry.register(collector)
    return registry


@cache
def registry_for(dsn: str, refresh_seconds: float) -> CollectorRegistry:
    return _registry(dsn, refresh_seconds)


def serve_metrics(
    dsn: str, refresh_seconds: float, host: str, port: int, *own: Collector, token: str | None = None
) -> tuple[Any, int]:
    """GET /metrics on host:port in a daemon thread, behind a bearer token when one is given; returns
    (server, bound port). `own`: collectors of this process's own figures, served next to the
    database's."""
    registry = _registry(dsn, refresh_seconds, *own) if own else registry_for(dsn, refresh_seconds)
    app = make_wsgi_app(registry)
    if token:
        app = _bearer_required(app, token)
    server_class = _MetricsServerV6 if ":" in host else _MetricsServer
    try:
        server = make_server(host, port, app, server_class, _QuietHandler)
    except OSError as exc:
        raise MetricsPortUnavailable(
            f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}; set INBOX_METRICS_PORT to a "
            "free port (0: any free port) or unset it"
        ) from exc
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, int(server.server_port)


class MetricsPortUnavailable(Exception):
    """INBOX_METRICS_PORT cannot be bound (in use, or not allowed): the commands print it as one line."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _MetricsServerV6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise


def _bearer_required(app: Any, token: str) -> Any:
    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token for /metrics\n"]

    return guarded
