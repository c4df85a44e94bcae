"""`inbox consume`: a consumer group member that moves Titan's topic into the inbox in batches.

The delivery contract, at-least-once made effectively-once by the inbox key:
* one transaction per batch (events and rejects); offsets are stored in librdkafka and committed,
  synchronously, only after that transaction commits. Auto-commit is off.
* overlap (per member): batch N is stored by one background thread while this thread fetches and
  sorts batch N+1; N's offsets are committed (here, in order) once its transaction has committed, and
  only then is N+1 handed to the store thread. At most one batch of a member is in the database at a
  time, so offsets never pass an unstored batch. Librdkafka is only ever called from this thread (a
  member's own consumer). A failed first attempt is waited out here exactly as without the overlap
  (below); what is fetched meanwhile joins N+1, never N. A revocation during N+1's fetch waits for
  N's transaction and commits N's offsets of those partitions.
* a crash loses nothing: what was not committed is read again, and a redelivered event is a no-op.
* database down: the batch in hand is kept, the partitions are paused (the group still gets its
  heartbeats and rebalances), storing is retried with a growing delay, fetching resumes after.
  Nothing unstored is ever committed; partitions revoked meanwhile are dropped from the batch.
* revocation: stored offsets are committed before the partitions go; SIGTERM finishes the batch in
  hand (if the database takes it), commits, and leaves the group.
* INBOX_KAFKA_CONSUMERS members (threads) in one process (ConsumerGroup): each a KafkaIngestor with its own
  librdkafka consumer, store thread and database session, so that up to that many batches are in the
  database at once. The group splits the partitions between them (a member beyond the partition count
  idles); each member commits the offsets of its own partitions only, by the rules above, so a
  partition's order and the "nothing committed past an unstored batch" rule are per member exactly as
  for separate processes. A quota's events share a partition (Titan keys them by quota_id), so one
  quota is never in two members' batches at once; were it, the inbox key and the version gate make it
  safe as between two processes. SIGTERM stops every member; a member that fails stops the others.
* INBOX_KAFKA_APPLY_AT_INGEST (on by default): the typed events of a batch are applied in the batch's
  transaction, before its offsets are committed; what that apply leaves waits for `inbox work`.
* INBOX_METRICS_PORT set: /metrics served there (once per process), with the consumer lag per partition
  of every member from librdkafka's statistics (inbox/metrics.py: ConsumerLag).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from inbox.counts import Counts
from inbox.db.connect import Session, connect
from inbox.db.errors import DatabaseError, Unreachable
from inbox.db.migrate import MigrationError, pending_migrations
from inbox.kafka.batch import Batch, Partition
from inbox.kafka.store import store_batch
from inbox.metrics import ConsumerLag, serve_metrics
from inbox.settings import Settings

log = logging.getLogger(__name__)

# The consumer's correctness rests on these: nothing is committed that the database has not stored.
FIXED_CONFIG = {"enable.auto.commit": False, "enable.auto.offset.store": False}
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# While paused, how often to serve the group (rebalance callbacks run inside consume()).
SERVE_GROUP_SECONDS = 0.2
# How often librdkafka reports statistics (the consumer lag of /metrics) when metrics are served;
# INBOX_KAFKA_CONFIG_JSON may set statistics.interval.ms otherwise.
STATISTICS_INTERVAL_MS = 5000


class KafkaSetupError(Exception):
    """The consumer cannot start as configured; no traceback needed."""


def consumer_config(settings: Settings) -> dict[str, Any]:
    extra = settings.kafka_config()
    forced = sorted(set(extra) & set(FIXED_CONFIG))
    if forced:
        raise KafkaSetupError(
            f"INBOX_KAFKA_CONFIG_JSON may not set {', '.join(forced)}: "
            "the consumer commits offsets itself, after the database has stored the batch"
        )
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.kafka_group,
        "client.id": f"quota-inbox-{socket.gethostname()}-{os.getpid()}",
        # A new group starts at the beginning of the topic: no event published before it is missed.
        "auto.offset.reset": "earliest",
        **({"statistics.interval.ms": STATISTICS_INTERVAL_MS} if settings.metrics_port is not None else {}),
        **extra,
        **FIXED_CONFIG,
    }


def _names_only(exc: KafkaException, config: dict[str, Any]) -> str:
    """librdkafka's reason with every quoted value cut out (it quotes the value it refuses, which may
    be a password); the names of settings stay."""
    reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    return re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in config else "…", reason)


def _stop_serving(metrics_server: Any) -> None:
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()


@dataclass
class ConsumeStats(Counts):
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    skipped: int = 0
    batches: int = 0
    store_failures: int = 0
    partitions: set[str] = field(default_factory=set)  # every partition held at some point


class AliveFile:
    """INBOX_KAFKA_ALIVE_FILE, touched (at most once a second) once every member's loop has turned
    since the last touch: one member stuck is enough for the probe to see the file go stale."""

    def __init__(self, path: Path | None, members: int) -> None:
        self.path = path
        self._members = frozenset(range(members))
        self._waiting = set(self._members)
        self._last_touch = 0.0
        self._lock = threading.Lock()

    def beat(self, member: int) -> None:
        if self.path is None:
            return
        with self._lock:
            self._waiting.discard(member)
            now = time.monotonic()
            if self._waiting or now - self._last_touch < 1.0:
                return
            self._waiting, self._last_touch = set(self._members), now
        try:
            self.path.touch()
        except OSError as exc:
            log.warning("cannot touch the alive file", extra={"path": str(self.path), "error": str(exc)})


class KafkaIngestor:
    """Runs until stop is set; one instance per group member (ConsumerGroup starts INBOX_KAFKA_CONSUMERS
    of them in one process, each on a thread of its own)."""

    def __init__(
        self,
        dsn: str,
        settings: Settings,
        stop: threading.Event,
        *,
        member: int = 0,
        lag: ConsumerLag | None = None,
        alive: AliveFile | None = None,
    ) -> None:
        self.dsn = dsn
        self.member = member
        self.lag = lag  # fed by this member's statistics when /metrics is served
        self.alive = alive or AliveFile(settings.kafka_alive_file, 1)
        self.settings = settings
        # the typed events of a batch are applied in its transaction (kafka_apply_at_ingest)
        self._apply_attempts = settings.max_attempts if settings.kafka_apply_at_ingest else None
        self.stop = stop
        self.stats = ConsumeStats()
        self._db = Session(
            dsn,
            application_name="quota-inbox consume",
            statement_timeout_ms=settings.effective_statement_timeout_ms(),
        )
        self.assigned: set[Partition] = set()  # the partitions this member holds now
        # the batches fetched and not yet finished, oldest first, for the rebalance callbacks
        self._held: list[Batch] = []
        # the batch in the database while this thread fetches the next (for _on_revoke)
        self._in_flight: tuple[Batch, Future[ConsumeStats | None]] | None = None
        self._last_logged: dict[int, float] = {}  # kafka error code -> when it was last logged

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> ConsumeStats:
        config = consumer_config(self.settings)
        config["client.id"] = f"{config['client.id']}-{self.member}"
        hooks = {
            "logger": logging.getLogger("librdkafka"),
            "error_cb": self._on_error,
            **({"stats_cb": functools.partial(self.lag.update, member=self.member)} if self.lag else {}),
        }
        try:
            consumer = Consumer({**config, **hooks})
        except KafkaException as exc:
            raise KafkaSetupError(f"librdkafka refused the settings: {_names_only(exc, config)}") from None
        consumer.subscribe(
            [self.settings.kafka_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming",
            extra={
                "topic": self.settings.kafka_topic,
                "group": self.settings.kafka_group,
                "member": self.member,
            },
        )
        store_thread = ThreadPoolExecutor(1, thread_name_prefix="inbox-store")
        in_flight: tuple[Batch, Future[ConsumeStats | None]] | None = None
        try:
            while not self.stop.is_set():
                # a revocation during this fetch waits for the batch in flight (_on_revoke)
                self._held = [in_flight[0]] if in_flight else []
                self._in_flight = in_flight
                batch = self._next_batch(consumer)
                self._in_flight = None
                if in_flight is not None:
                    finished = self._finish(consumer, *in_flight, batch)
                    in_flight = None
                    if not finished and self.stop.is_set():
                        break  # stopping with the database away: N+1 is left uncommitted as well
                self._held = []
                if batch:
                    in_flight = (batch, store_thread.submit(self._try_store, batch))
            if in_flight is not None:
                # SIGTERM: the batch in the database is finished (and committed if stored)
                self._finish(consumer, *in_flight, Batch())
                in_flight = None
        finally:
            self._held, self._in_flight = [], None
            store_thread.shutdown(wait=True)
            consumer.close()  # revokes the partitions (committing what is stored) and leaves the group
            self._db.close()
            log.info("member stopped", extra={"member": self.member, **self.stats.as_log()})
        return self.stats

    def _next_batch(self, consumer: Consumer) -> Batch:
        self._beat()
        batch = Batch()
        messages = consumer.consume(self.settings.kafka_batch_size, self.settings.kafka_batch_wait_seconds)
        self._add(batch, messages)
        if messages:
            log.debug("batch fetched", extra={"messages": len(messages)})
        return batch

    def _add(self, batch: Batch, messages: list[Message]) -> None:
        for message in messages:
            error = message.error()
            if error is None:
                batch.add(message)
                self.stats.messages += 1
            else:
                self._on_error(error)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka retries by itself (brokers away, leader moves); log each kind of error at most
        every half minute. A fatal error ends the consumer."""
        if error.fatal():
            raise KafkaException(error)
        now = time.monotonic()
        if error.code() != KafkaError._PARTITION_EOF and now - self._last_logged.get(error.code(), -60) >= 30:
            self._last_logged[error.code()] = now
            log.warning("kafka: %s", error.str())

    # -- storing, and waiting out the database ----------------------------------------------------

    def _finish(
        self, consumer: Consumer, batch: Batch, stored: Future[ConsumeStats | None], later: Batch
    ) -> bool:
        """Wait for the batch's transaction; commit its offsets once it is stored. A failed attempt is
        waited out here, with the partitions paused (later: the batch fetched meanwhile, which takes
        what is fetched during the wait). False: given up (stopping, or its partitions revoked)."""
        counted = stored.result()
        if counted is None:
            self.stats.store_failures += 1
            self._held = [batch, later]
            counted = self._wait_for_database(consumer, batch, later)
            if counted is None:
                return False
        self.stats.add(counted)
        if batch:
            self._commit(consumer, batch)
        return True

    def _wait_for_database(self, consumer: Consumer, batch: Batch, later: Batch) -> ConsumeStats | None:
        """The batch's first attempt failed: retry it, however long the database is away, with a
        growing delay. None: given up (stopping, or every partition of the batch revoked meanwhile);
        nothing of it is committed then. Messages fetched while paused join `later`: were they added
        to `batch`, its offsets would pass the unstored `later`."""
        delay = RETRY_FIRST_SECONDS
        try:
            while True:
                self._serve_group_paused(consumer, later, delay)
                if self.stop.is_set() or not batch:
                    return None
                counted = self._try_store(batch)
                if counted is not None:
                    log.info("database back: the batch in hand is stored, fetching resumes")
                    return counted
                self.stats.store_failures += 1
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        finally:
            if consumer.assignment():
                consumer.resume(consumer.assignment())

    def _try_store(self, batch: Batch) -> ConsumeStats | None:
        """One attempt (on the store thread, or this one when waiting out the database): the batch's
        counts, or None when the database did not take it (the caller counts the failure). Touches
        neither librdkafka nor self.stats."""
        try:
            stored = store_batch(self._db.connection(), batch, self._apply_attempts)
        except DatabaseError as exc:
            # Connection lost, server restarting, deadlock, timeout, even a dropped table: the
            # batch stays in hand and is stored once the database takes it again.
            log.warning("could not store the batch; will retry", extra={"error": str(exc).strip()})
            self._db.close()
            return None
        counted = ConsumeStats(
            batches=1,
            accepted=stored.accepted,
            duplicates=stored.duplicates,
            rejected=stored.rejected,
            skipped=len(batch.skips),
        )
        log.debug("batch stored", extra={**stored.__dict__, "skipped": counted.skipped})
        return counted

    def _serve_group_paused(self, consumer: Consumer, batch: Batch, seconds: float) -> None:
        """Wait with every assigned partition paused, while the group may rebalance (its callbacks
        run inside consume()). A message fetched just before a pause joins the batch in hand."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            self._beat()  # waiting for the database is alive and well
            assigned = consumer.assignment()
            if assigned:
                consumer.pause(assigned)  # again each round: a partition assigned meanwhile waits too
            self._add(batch, consumer.consume(self.settings.kafka_batch_size, SERVE_GROUP_SECONDS))
            if time.monotonic() >= deadline:
                return

    def _beat(self) -> None:
        """This member's loop turns (INBOX_KAFKA_ALIVE_FILE: proof for a probe)."""
        self.alive.beat(self.member)

    # -- offsets ----------------------------------------------------------------------------------

    def _commit(self, consumer: Consumer, batch: Batch) -> None:
        """Store the batch's offsets in librdkafka, then commit them synchronously. A failed commit
        (rebalance, broker away) only means a redelivery, which the inbox absorbs; the stored offsets
        are retried with the next commit or on revocation."""
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in batch.next_offsets.items()
        ]
        try:
            consumer.store_offsets(offsets=offsets)
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            log.warning("offsets not committed (they will be read again)", extra={"error": str(exc)})

    def _commit_stored(self, consumer: Consumer) -> None:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offsets not committed on revocation", extra={"error": str(exc)})

    # -- rebalance callbacks (run inside consume()) -----------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        names = _names(partitions)
        self.stats.partitions.update(names)
        self.assigned.update((p.topic, p.partition) for p in partitions)
        log.info("partitions assigned", extra={"partitions": names, "member": self.member})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._store_in_flight_offsets(consumer, partitions)
        self._commit_stored(consumer)
        self._forget(partitions)
        log.info("partitions revoked", extra={"partitions": _names(partitions), "member": self.member})

    def _store_in_flight_offsets(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A revocation while batch N is in the database (this thread fetching N+1): wait for N's
        transaction and, once it has committed, store N's offsets of the revoked partitions, so that
        they are committed with the rest and their next owner does not read N again. A failed store
        (or a bug, raised by _finish) leaves them to be dropped, as before the overlap."""
        if self._in_flight is None:
            return
        batch, stored = self._in_flight
        try:
            counted = stored.result()
        except Exception:
            return
        gone = {(p.topic, p.partition) for p in partitions}
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items() if (t, p) in gone]
        if counted is None or not offsets:
            return
        try:
            consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            log.warning("offsets not committed on revocation", extra={"error": str(exc)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Already someone else's: committing would fail, and their messages will be read again.
        self._forget(partitions)
        log.warning("partitions lost", extra={"partitions": _names(partitions), "member": self.member})

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        for batch in self._held:
            batch.drop(gone)


class ConsumerGroup:
    """`inbox consume`: INBOX_KAFKA_CONSUMERS members of the group in this process (members), each
    run on a thread of its own until stop is set; /metrics (INBOX_METRICS_PORT) served once for all of
    them, reading the database's figures with metrics_dsn."""

    def __init__(
        self, dsn: str, settings: Settings, stop: threading.Event, metrics_dsn: str | None = None
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.metrics_dsn = metrics_dsn or dsn
        self.lag = ConsumerLag()
        alive = AliveFile(settings.kafka_alive_file, settings.kafka_consumers)
        fed = self.lag if settings.metrics_port is not None else None
        self.members = [
            KafkaIngestor(dsn, settings, stop, member=i, lag=fed, alive=alive)
            for i in range(settings.kafka_consumers)
        ]

    def run(self) -> ConsumeStats:
        """The members' stats summed. A member that raises sets stop (the others finish their batch
        in hand, commit and leave the group) and its exception is raised here once all have ended."""
        port = self.settings.metrics_port
        metrics_server = (
            _serve_metrics(self.settings, port, self.metrics_dsn, self.lag) if port is not None else None
        )
        failures: list[BaseException] = []

        def run(member: KafkaIngestor) -> None:
            try:
                member.run()
            except BaseException as exc:
                failures.append(exc)
                self.stop.set()

        threads = [
            threading.Thread(target=run, args=(member,), name=f"inbox-consumer-{member.member}")
            for member in self.members
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            _stop_serving(metrics_server)
        total = ConsumeStats()
        for member in self.members:
            total.add(member.stats)
        if not any(isinstance(failure, KafkaSetupError) for failure in failures):  # else it never ran
            log.info("consumer stopped", extra={"members": len(self.members), **total.as_log()})
        if failures:
            raise failures[0]
        return total


def _serve_metrics(settings: Settings, port: int, metrics_dsn: str, lag: ConsumerLag) -> Any:
    server, port = serve_metrics(
        metrics_dsn,
        settings.metrics_refresh_seconds,
        settings.http_host,
        port,
        lag,
        token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
    )
    log.info("metrics served", extra={"url": f"http://{settings.http_host}:{port}/metrics"})
    return server


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{p.topic}[{p.partition}]" for p in partitions)


def check_schema(dsn: str) -> None:
    """Refuse to start against a database whose migrations are behind; an unreachable one is fine
    (the consumer waits for it like for any outage)."""
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox consume") as conn:
            pending = pending_migrations(conn)
    except MigrationError as exc:
        raise KafkaSetupError(str(exc)) from exc
    except Unreachable as exc:
        log.warning("database unreachable at start; the consumer will wait for it", extra={"error": str(exc)})
        return
    if pending:
        raise KafkaSetupError(f"migrations not applied: {', '.join(pending)}; run `inbox migrate`")
