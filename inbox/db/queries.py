"""The named queries of sql/queries.sql, one typed method each: the only caller of `query(...)`.

`Queries(conn)` costs nothing (it holds the connection); each method is one execute() of its
named query, as before, and returns what the query returns, typed: rows as TypedDicts (they are
the dicts psycopg's dict_row builds, no copy), single-row answers as their value or a dataclass.
A query that always returns one row (an aggregate, a function call) raises NoRow if it did not:
that is a broken schema, not an expected answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, cast

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from inbox.db import binary
from inbox.db.sqlfiles import query

DictConnection = psycopg.Connection[dict[str, Any]]


# The payload of the workers' wake-up hint when some stored event is untyped (inbox/apply/waker.py).
UNTYPED_HINT = "untyped"


class NoRow(Exception):
    """A query that always returns one row returned none."""


# -- rows -------------------------------------------------------------------------------------------


class EventKeyRow(TypedDict):
    quota_id: str
    version: int
    is_delete: bool


class PayloadRow(TypedDict):
    """untyped_payloads: the payload as PostgreSQL prints it (None: stored larger than max_bytes)."""

    quota_id: uuid.UUID
    version: int
    is_delete: bool
    stored_bytes: int
    payload: str | None


class DeadLetterLine(TypedDict):
    """What the log line of a new dead letter says (queries dead_letters_*)."""

    quota_id: uuid.UUID
    version: int
    is_delete: bool
    event_type: str | None
    error_class: str
    retry_count: int
    error_message: str


class DeadLetterRow(TypedDict, total=False):
    """A row of inbox.v_dead_letters (dlq_list leaves event_data out and shortens the message)."""

    id: uuid.UUID
    quota_id: uuid.UUID
    version: int
    is_delete: bool
    event_type: str | None
    error_class: str
    error_message: str
    error_length: int
    retry_count: int
    created_at: datetime
    resolved_at: datetime | None
    resolution_note: str | None
    inbox_status: str | None
    applied_version: int | None
    superseded: bool
    event_data: Any


class ReplayedRow(TypedDict, total=False):
    id: uuid.UUID
    quota_id: uuid.UUID
    version: int
    is_delete: bool
    outcome: str
    # added by `inbox dlq replay` once it has looked where the event ended
    inbox_status: str | None
    dead_letter_id: uuid.UUID | None
    ended: str


class ReplayEndedRow(TypedDict):
    quota_id: uuid.UUID
    version: int
    is_delete: bool
    inbox_status: str | None
    dead_letter_id: uuid.UUID | None


class StateRow(TypedDict, total=False):
    status: str
    events: int | None
    exact: bool
    # with an estimate: the age of the statistics behind it (status_statistics)
    analyzed_at: datetime | None
    changed_since: int


class OutboxRow(TypedDict):
    msg_id: int
    enqueued_at: datetime
    read_ct: int
    message_text: str


class MigrationRow(TypedDict):
    version: int
    name: str
    checksum: str


class ObjectFileRow(TypedDict):
    file: str
    checksum: str


class DriftCountRow(TypedDict):
    drift: str
    versions: str | None
    quotas: int


class SchemaCreators(TypedDict):
    schema: str
    public_may_create: bool
    roles: list[str]


# -- single-row answers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """How an event given back is retried: attempts before it is dead-lettered, and the delay
    (base * 2^attempts with jitter, at most cap)."""

    max_attempts: int
    base: timedelta
    cap: timedelta

    def params(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "backoff_base": self.base, "backoff_cap": self.cap}


@dataclass(frozen=True, slots=True)
class ApplyCounts:
    applied: int
    stale: int
    dead: int
    not_owned: int
    published: int


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """What one ingest call stored: rows new (or replaced by a newer change), and how many of them it
    applied at once (finished: applied, stale or dead; the rest wait for the workers)."""

    inserted: int
    finished: int


@dataclass(frozen=True, slots=True)
class RetryCounts:
    """release_claim and reap_abandoned_claims: attempts spent (retried), and dead-lettered."""

    retried: int
    dead: int


@dataclass(frozen=True)
class Keys:
    """The keys of a batch as three parallel lists, sent to PostgreSQL as binary arrays; quota ids
    as UUIDs, or as their canonical text (the edge's columns), which the queries cast to uuid."""

    quota_ids: list[uuid.UUID] | list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    is_delete: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.quota_ids)

    def __getitem__(self, part: slice) -> Keys:
        return Keys(self.quota_ids[part], self.versions[part], self.is_delete[part])

    def params(self) -> dict[str, Any]:
        return {"quota_ids": self.quota_ids, "versions": self.versions, "is_delete": self.is_delete}

    def rows(self) -> list[EventKeyRow]:
        return [
            EventKeyRow(quota_id=str(q), version=v, is_delete=d)
            for q, v, d in zip(self.quota_ids, self.versions, self.is_delete, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class TypedBatch:
    """The parameters of inbox.ingest_typed_events beside the events' JSON array: one list per
    column, parallel to the events (None where an event is not typed)."""

    keys: Keys
    source_lsns: list[int | None]
    typed: list[bool]
    columns: dict[str, list[Any]]  # counterparty_ids, directions, ... (query ingest_typed_events)


@dataclass(frozen=True, slots=True)
class DeadLetterRate:
    dead_letters: int
    by_class: Any
    msg_id: int | None  # the alert published, if one was due


@dataclass(frozen=True, slots=True)
class UnplaceableDeletes:
    """Open delete_unplaceable dead letters: how many, and when the oldest was written."""

    open: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class Gauges:
    pending: int
    processing: int
    oldest_pending_age: float | None
    dead_letters_unresolved: int
    latency_buckets: list[Decimal]


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a command means (None: any)."""

    quota_id: uuid.UUID | None = None
    error_class: str | None = None
    since: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"quota_id": self.quota_id, "error_class": self.error_class, "since": self.since}


@dataclass(frozen=True, slots=True)
class ReconcileCounts:
    source_rows: int
    source_quotas: int
    csla_quotas: int


@dataclass(frozen=True, slots=True)
class RepairBatch:
    """One batch of reconcile_file_repairs; last_quota_id None: nothing was left to repair."""

    last_quota_id: uuid.UUID | None
    filed: int
    refiled: int
    in_flight: int
    not_repaired: int


def _keys(keys: Iterable[EventKeyRow]) -> Jsonb:
    return Jsonb(list(keys))


class Queries:
    """The named queries on one connection (procrastinate's JobManager is the model)."""

    __slots__ = ("conn",)

    def __init__(self, conn: DictConnection) -> None:
        self.conn = conn

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        row = self.conn.execute(query(name), params).fetchone()
        if row is None:
            raise NoRow(f"query {name} returned no row")
        return row

    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.conn.execute(query(name), params).fetchall()

    def _run(self, name: str, params: dict[str, Any] | None = None) -> None:
        self.conn.execute(query(name), params)

    def autocommitting(self) -> bool:
        """An autocommit session outside any transaction: each statement commits on its own."""
        idle = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        return self.conn.autocommit and idle

    def atomic(self) -> AbstractContextManager[Any]:
        """Around one statement that must change all or nothing: a savepoint inside a transaction
        (a failure leaves the transaction usable); nothing when autocommitting, since the statement
        is its own transaction: no BEGIN, SAVEPOINT, RELEASE and COMMIT round trips to wait for."""
        return nullcontext() if self.autocommitting() else self.conn.transaction()

    # -- sessions -------------------------------------------------------------------------------

    def set_worker_session(self, *, statement_timeout: str, idle_timeout: str, application_name: str) -> None:
        self._run(
            "set_worker_session",
            {
                "statement_timeout": statement_timeout,
                "idle_timeout": idle_timeout,
                "application_name": application_name,
            },
        )

    def set_local_statement_timeout(self, timeout: str) -> None:
        self._run("set_local_statement_timeout", {"timeout": timeout})

    def ping(self) -> None:
        self._run("ping")

    def listen_for_events(self) -> None:
        self._run("listen_for_events")

    def notify_after_commit(self) -> None:
        """From now on this session's ingest does not notify the workers inside its transaction: the
        caller sends the hint after each commit (hint_workers)."""
        self._run("notify_after_commit")

    def hint_workers(self, *, untyped: bool) -> None:
        """The workers' wake-up hint, in a transaction of its own that does not wait for the disk;
        untyped: some stored event has no typed columns. Autocommit sessions outside a transaction
        only (anywhere else it would make that transaction's commit asynchronous)."""
        if not self.autocommitting():
            raise RuntimeError("hint_workers runs on an autocommit session outside a transaction")
        self._run("hint_workers", {"payload": UNTYPED_HINT if untyped else ""})

    def database_now(self) -> datetime:
        now: datetime = self._one("database_now")["now"]
        return now

    def worker_sessions(self) -> int:
        return int(self._one("worker_sessions")["sessions"])

    # -- migrations -----------------------------------------------------------------------------

    def try_lock_migrations(self) -> bool:
        return bool(self._one("try_lock_migrations")["locked"])

    def migration_lock_holder(self) -> list[dict[str, Any]]:
        return self._all("migration_lock_holder")

    def unlock_migrations(self) -> None:
        self._run("unlock_migrations")

    def create_migrations_table(self) -> None:
        self._run("create_migrations_table")

    def migrations_table_exists(self) -> bool:
        return bool(self._one("migrations_table_exists")["present"])

    def applied_migrations(self) -> list[MigrationRow]:
        return self._all("applied_migrations")

    def record_migration(self, version: int, name: str, checksum: str) -> None:
        self._run("record_migration", {"version": version, "name": name, "checksum": checksum})

    def schemas_others_may_create_in(self) -> list[SchemaCreators]:
        return self._all("schemas_others_may_create_in")

    def applied_object_files(self) -> dict[str, str]:
        """{file: checksum} of the object files the database has."""
        return {str(r["file"]): str(r["checksum"]) for r in self._all("applied_object_files")}

    def pin_search_path_locally(self) -> None:
        self._run("pin_search_path_locally")

    def record_object_file(self, file: str, checksum: str) -> None:
        self._run("record_object_file", {"file": file, "checksum": checksum})

    def forget_object_files(self, keep: Sequence[str]) -> list[str]:
        """Forget the recorded object files not in keep; returns the forgotten ones."""
        return [str(r["file"]) for r in self._all("forget_object_files", {"files": list(keep)})]

    def pgmq_installed(self) -> bool:
        return bool(self._one("pgmq_installed")["present"])

    def pgmq_extension_available(self) -> bool:
        return bool(self._one("pgmq_extension_available")["available"])

    def create_pgmq_extension(self) -> None:
        self._run("create_pgmq_extension")

    # -- ingest ---------------------------------------------------------------------------------

    def ingest_events(
        self,
        *,
        events: str,
        quota_ids: list[uuid.UUID],
        versions: list[int],
        is_delete: list[bool],
        source_lsns: list[int | None],
        source: str,
    ) -> int:
        """Store events (one JSON array text) keyed by the three arrays, with Debezium's source LSN
        where they carry one; returns how many were new."""
        params = {
            "events": events,
            "quota_ids": quota_ids,
            "versions": versions,
            "is_delete": is_delete,
            "source_lsns": source_lsns,
            "source": source,
        }
        return int(self._one("ingest_events", params)["inserted"])

    def ingest_typed_events(
        self, *, events: str, batch: TypedBatch, source: str, apply_attempts: int | None = None
    ) -> IngestCounts:
        """Store events (one JSON array text) with their keys and typed columns: how many were new;
        with apply_attempts, the typed ones are applied in the same transaction, and how many of them
        were finished (applied, stale or dead) is said too (inbox.ingest_typed_events)."""
        columns, keys = batch.columns, batch.keys
        params = {
            "events": events,
            "quota_ids": binary.uuid_array(keys.quota_ids),
            "versions": binary.int8_array(keys.versions),
            "is_delete": binary.bool_array(keys.is_delete),
            "source": source,
            "source_lsns": binary.int8_array(batch.source_lsns),
            "typed": binary.bool_array(batch.typed),
            "counterparty_ids": binary.text_array(columns["counterparty_ids"]),
            "directions": binary.text_array(columns["directions"]),
            "period_months": binary.date_array(columns["period_months"]),
            # as decimal text (query ingest_typed_events says why): str() of a Decimal keeps its digits
            "qty_t": binary.decimal_text_array(columns["qty_t"]),
            "tolerance_pct": binary.decimal_text_array(columns["tolerance_pct"]),
            "incoterm_codes": binary.text_array(columns["incoterm_codes"]),
            "metal_codes": binary.text_array(columns["metal_codes"]),
            "source_updated_at": binary.timestamptz_array(columns["source_updated_at"]),
            "apply_attempts": apply_attempts,
        }
        row = self._one("ingest_typed_events", params)
        return IngestCounts(int(row["inserted"]), int(row["finished"]))

    def insert_request_rejects(self, *, source: str, raws: list[bytes], reasons: list[str]) -> None:
        """Items of a request that could not be keyed, verbatim (the request stored the rest)."""
        self._run("insert_request_rejects", {"source": source, "raws": raws, "reasons": reasons})

    def insert_rejects(
        self,
        *,
        topics: list[str],
        partitions: list[int],
        offsets: list[int],
        keys: list[bytes | None],
        raws: list[bytes],
        headers: list[Any],
        reasons: list[str],
    ) -> None:
        """Kafka messages that could not be stored as events: one array per column of inbox.rejects
        (headers: JSON-able values)."""
        params = {
            "topics": topics,
            "partitions": partitions,
            "offsets": offsets,
            "keys": keys,
            "raws": raws,
            "headers": [Jsonb(h) for h in headers],
            "reasons": reasons,
        }
        self._run("insert_rejects", params)

    # -- the worker -----------------------------------------------------------------------------

    def apply_session(self, token: int) -> tuple[int, int]:
        """Take the advisory lock that says this session is alive; (backend pid, token)."""
        row = self._one("apply_session", {"token": token})
        return int(row["backend_pid"]), int(row["session_token"])

    def claim_batch(self, limit: int) -> Keys:
        """Lock up to limit due typed events for this transaction (nothing is written)."""
        row = self._one("claim_batch", {"limit": limit})
        return Keys(row["quota_ids"], row["versions"], row["is_delete"])

    def record_claim(
        self, *, worker: str, backend_pid: int, session_token: int, keys: Keys, backoff: Backoff
    ) -> int:
        """The claim ledger row of a batch (committed by the caller's autocommit session); its id.
        Claims whose worker is gone are released first (their attempts spent, with `backoff`)."""
        params = {
            "worker": worker,
            "backend_pid": backend_pid,
            "session_token": session_token,
            **keys.params(),
            **backoff.params(),
        }
        return int(self._one("record_claim", params)["id"])

    def drop_claim(self, ledger: int) -> None:
        self._run("drop_claim", {"ledger": ledger})

    def process_batch(
        self, *, ledger: int | None, keys: Keys, max_attempts: int, refused: str | None = None
    ) -> ApplyCounts:
        """Finish these events; with `refused` (why the database refused the one event), dead-letter
        them as apply_error instead of applying them."""
        params = {
            "ledger": ledger,
            **keys.params(),
            "error_class": None if refused is None else "apply_error",
            "error": refused,
            "max_attempts": max_attempts,
        }
        row = self._one("process_batch", params)
        return ApplyCounts(row["applied"], row["stale"], row["dead"], row["not_owned"], row["published"])

    def release_claim(self, *, ledger: int | None, keys: Keys, error: str, backoff: Backoff) -> RetryCounts:
        params = {"ledger": ledger, **keys.params(), "error": error, **backoff.params()}
        row = self._one("release_claim", params)
        return RetryCounts(row["retried"], row["dead"])

    def reap_abandoned_claims(self, *, limit: int, backoff: Backoff) -> RetryCounts:
        row = self._one("reap_abandoned_claims", {"limit": limit, **backoff.params()})
        return RetryCounts(row["retried"], row["dead"])

    def untyped_keys(self, limit: int) -> list[EventKeyRow]:
        """Due untyped events, locked for the caller's transaction."""
        rows = self._all("untyped_keys", {"limit": limit})
        return [
            EventKeyRow(quota_id=str(r["quota_id"]), version=r["version"], is_delete=r["is_delete"])
            for r in rows
        ]

    def untyped_payloads(self, *, keys: Iterable[EventKeyRow], max_bytes: int) -> Iterator[PayloadRow]:
        """Streamed, row by row as PostgreSQL prints them (inbox/apply/worker.py: read_payloads)."""
        params = {"keys": _keys(keys), "max_bytes": max_bytes}
        rows: Iterator[Any] = self.conn.cursor().stream(query("untyped_payloads"), params)
        return rows

    def commit_without_flush(self) -> None:
        """This transaction's commit does not wait for the disk: for work redone if a crash loses it."""
        self._run("commit_without_flush")

    def type_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store the typed columns of untyped events (inbox/apply/prepare.py: typed_columns)."""
        self._run("type_events", {"rows": Jsonb(list(rows))})

    def dead_letters_for_keys(self, keys: Iterable[EventKeyRow]) -> list[DeadLetterLine]:
        return self._all("dead_letters_for_keys", {"keys": _keys(keys)})

    def dead_letters_of_this_transaction(self) -> list[DeadLetterLine]:
        return self._all("dead_letters_of_this_transaction")

    # -- jobs -----------------------------------------------------------------------------------

    def purge_history(
        self, *, older_than: timedelta, gates_older_than: timedelta | None, limit: int
    ) -> dict[str, int]:
        """{rejects, dead_letters, gates}: how many of each one batch deleted."""
        params = {"older_than": older_than, "gates_older_than": gates_older_than, "limit": limit}
        row = self._one("purge_history", params)
        return {kind: int(row[kind]) for kind in ("rejects", "dead_letters", "gates")}

    def purge_finished_events(self, *, older_than: timedelta, limit: int) -> int:
        return int(self._one("purge_finished_events", {"older_than": older_than, "limit": limit})["purged"])

    def check_dead_letter_rate(self, *, window: timedelta, threshold: int) -> DeadLetterRate:
        row = self._one("check_dead_letter_rate", {"window": window, "threshold": threshold})
        return DeadLetterRate(int(row["dead_letters"]), row["by_class"], row["msg_id"])

    def publish_alert(self, *, alert: str, message: dict[str, Any], renotify: timedelta) -> int | None:
        msg_id = self._one("publish_alert", {"alert": alert, "message": Jsonb(message), "renotify": renotify})
        return None if msg_id["msg_id"] is None else int(msg_id["msg_id"])

    def open_unplaceable_deletes(self) -> UnplaceableDeletes:
        row = self._one("open_unplaceable_deletes")
        return UnplaceableDeletes(int(row["open"]), row["oldest"])

    def fold_counters(self) -> None:
        self._run("fold_counters")

    # -- metrics --------------------------------------------------------------------------------

    def metrics_counters(self) -> dict[tuple[str, str], float]:
        return {(r["metric"], r["label"]): float(r["value"]) for r in self._all("metrics_counters")}

    def metrics_gauges(self) -> Gauges:
        row = self._one("metrics_gauges")
        return Gauges(
            int(row["pending"]),
            int(row["processing"]),
            row["oldest_pending_age"],
            int(row["dead_letters_unresolved"]),
            list(row["latency_buckets"]),
        )

    # -- status ---------------------------------------------------------------------------------

    def status_exact_counts(self) -> list[StateRow]:
        return self._all("status_exact_counts")

    def status_by_state(self) -> list[StateRow]:
        return self._all("status_by_state")

    def status_statistics(self) -> dict[str, Any]:
        """analyzed_at and changed_since of the inbox table ({} before it has statistics)."""
        row = self.conn.execute(query("status_statistics")).fetchone()
        return row or {}

    def status_lag(self) -> dict[str, Any]:
        return self._one("status_lag")

    def status_processed(self) -> list[dict[str, Any]]:
        return self._all("status_processed")

    def status_dead_letters_by_class(self) -> list[dict[str, Any]]:
        return self._all("status_dead_letters_by_class")

    def status_rejects(self) -> dict[str, Any]:
        return self._one("status_rejects")

    def inbox_counts(self) -> dict[str, int]:
        """{status: events} of the statuses that have any."""
        return {str(r["status"]): int(r["n"]) for r in self._all("inbox_counts")}

    def quota_states(self) -> list[dict[str, Any]]:
        return self._all("quota_states")

    def unresolved_dead_letters(self) -> list[dict[str, Any]]:
        return self._all("unresolved_dead_letters")

    # -- dead letters ---------------------------------------------------------------------------

    def dlq_error_classes(self) -> list[str]:
        return [str(r["error_class"]) for r in self._all("dlq_error_classes")]

    def dlq_list(
        self, filters: DeadLetterFilter, *, include_resolved: bool, limit: int | None
    ) -> list[DeadLetterRow]:
        params = {**filters.params(), "include_resolved": include_resolved, "limit": limit}
        return self._all("dlq_list", params)

    def dlq_show(self, dead_letter_id: uuid.UUID) -> DeadLetterRow | None:
        row: Any = self.conn.execute(query("dlq_show"), {"id": dead_letter_id}).fetchone()
        return cast("DeadLetterRow | None", row)

    def dlq_replay(self, ids: Sequence[uuid.UUID], note: str) -> list[ReplayedRow]:
        return self._all("dlq_replay", {"ids": list(ids), "note": note})

    def dlq_replay_matching(
        self, filters: DeadLetterFilter, *, until: datetime, limit: int, note: str
    ) -> list[ReplayedRow]:
        params = {**filters.params(), "until": until, "limit": limit, "note": note}
        return self._all("dlq_replay_matching", params)

    def dlq_replay_ended(self, keys: Iterable[EventKeyRow]) -> list[ReplayEndedRow]:
        return self._all("dlq_replay_ended", {"keys": _keys(keys)})

    def dlq_resolve(self, dead_letter_id: uuid.UUID, note: str) -> datetime | None:
        """When it was resolved now; None if it was already resolved (or does not exist)."""
        row = self.conn.execute(query("dlq_resolve"), {"id": dead_letter_id, "note": note}).fetchone()
        return None if row is None else row["resolved_at"]

    # -- outbox ---------------------------------------------------------------------------------

    def outbox_last_msg_ids(self, limit: int) -> int:
        """The msg_id just before the last `limit` messages (0 when there are fewer)."""
        return int(self._one("outbox_last_msg_ids", {"limit": limit})["before_last"])

    def outbox_peek(self, *, after: int, limit: int) -> list[OutboxRow]:
        return self._all("outbox_peek", {"after": after, "limit": limit})

    def outbox_read(self, *, vt: int, limit: int) -> list[OutboxRow]:
        return self._all("outbox_read", {"vt": vt, "limit": limit})

    def outbox_archive(self, msg_ids: Sequence[int]) -> None:
        self._run("outbox_archive", {"msg_ids": list(msg_ids)})

    def wake_workers(self) -> None:
        """The hint for rows filed untyped: idle workers type them and claim now."""
        self._run("wake_workers")

    # -- the story of one quota (inbox/quota_story.py) ------------------------------------------

    def read_only_snapshot(self) -> None:
        """The first statement of a transaction whose reads must agree with each other."""
        self._run("read_only_snapshot")

    def quota_show_row(self, quota_id: uuid.UUID) -> dict[str, Any] | None:
        return self.conn.execute(query("quota_show_row"), {"quota_id": quota_id}).fetchone()

    def quota_show_gate(self, quota_id: uuid.UUID) -> dict[str, Any] | None:
        return self.conn.execute(query("quota_show_gate"), {"quota_id": quota_id}).fetchone()

    def quota_show_events(self, quota_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        return self._all("quota_show_events", {"quota_id": quota_id, "limit": limit})

    def quota_show_dead_letters(self, quota_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        return self._all("quota_show_dead_letters", {"quota_id": quota_id, "limit": limit})

    def quota_show_queue_bound(self, scan: int) -> int | None:
        """The newest msg_id of the outbox queue beyond its `scan` newest messages (None: there is none)."""
        return cast(int | None, self._one("quota_show_queue_bound", {"scan": scan})["unsearched"])

    def quota_show_outbox(
        self, quota_id: uuid.UUID, unsearched: int | None, limit: int
    ) -> list[dict[str, Any]]:
        params = {"quota_id": quota_id, "unsearched": unsearched, "limit": limit}
        return self._all("quota_show_outbox", params)

    def quota_show_repairs(self, quota_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        return self._all("quota_show_repairs", {"quota_id": quota_id, "limit": limit})

    # -- reconcile (inbox/reconcile.py) ---------------------------------------------------------

    def stream_table(
        self, table: str, columns: Sequence[str], *, cursor_name: str, fetch: int
    ) -> Iterator[dict[str, Any]]:
        """Every row of `table` ("name" or "schema.name", given at run time), the named columns,
        through a server-side cursor; the names are quoted by psycopg.sql composition."""
        with self.conn.cursor(name=cursor_name) as cursor:
            cursor.itersize = fetch
            cursor.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    sql.Identifier(*table.split(".")),
                )
            )
            yield from cursor

    def reconcile_create_source(self) -> None:
        self._run("reconcile_create_source")

    @contextmanager
    def reconcile_copy_source(self) -> Iterator[Callable[[Sequence[Any]], None]]:
        """COPY into pg_temp.reconcile_source: yields the function that writes one row."""
        with self.conn.cursor().copy(query("reconcile_copy_source")) as copy:
            yield copy.write_row

    def reconcile_analyze_source(self) -> None:
        self._run("reconcile_analyze_source")

    def reconcile_compare(self) -> None:
        """inbox.quota_drift into pg_temp.reconcile_drift, indexed by quota_id."""
        self._run("reconcile_compare")
        self._run("reconcile_index_drift")

    def reconcile_counts(self) -> ReconcileCounts:
        row = self._one("reconcile_counts")
        return ReconcileCounts(row["source_rows"], row["source_quotas"], row["csla_quotas"])

    def reconcile_drift_counts(self) -> list[DriftCountRow]:
        return self._all("reconcile_drift_counts")

    def reconcile_drift_rows(self, *, cursor_name: str, fetch: int) -> Iterator[dict[str, Any]]:
        """The drift in quota_id order, through a server-side cursor (in the caller's transaction)."""
        with self.conn.cursor(name=cursor_name) as cursor:
            cursor.itersize = fetch
            cursor.execute(query("reconcile_drift_rows"))
            yield from cursor

    def reconcile_file_repairs(self, *, after: uuid.UUID, limit: int, run_id: uuid.UUID) -> RepairBatch:
        row = self._one("reconcile_file_repairs", {"after": after, "limit": limit, "run_id": run_id})
        return RepairBatch(
            row["last_quota_id"], row["filed"], row["refiled"], row["in_flight"], row["not_repaired"]
        )
