"""Periodic jobs of a worker process, on APScheduler. Each is safe with many processes running it.

| job              | how it stays safe with many processes                                     |
|------------------|---------------------------------------------------------------------------|
| claim reaper     | SKIP LOCKED: concurrent reapers take disjoint abandoned claim ledger rows  |
| retention        | SKIP LOCKED batches of INBOX_RETENTION_BATCH_SIZE, one short transaction each |
| alerts           | an alert row lock and a re-notify interval: one message per alert per window |
| metrics          | counter folding under an advisory transaction lock; the rest only reads   |

There is no separate retry job: a failed event goes back to 'pending' with next_attempt_at in the
future, and the workers' claim takes it once that time has passed (they poll every
INBOX_POLL_SECONDS even when no NOTIFY arrives). A job would only repeat the claim's own test.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from inbox.apply.worker import reap_abandoned_claims
from inbox.db.connect import connect
from inbox.db.errors import DatabaseError, Unreachable
from inbox.db.queries import Queries
from inbox.metrics import source_for
from inbox.settings import Settings

log = logging.getLogger(__name__)


def reap_job(dsn: str, settings: Settings) -> None:
    """Spend an attempt for workers that died holding a batch (claim ledger rows without their apply
    session; SKIP LOCKED: concurrent reapers take disjoint rows)."""
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox reaper") as conn:
            counts = reap_abandoned_claims(conn, settings)
    except DatabaseError as exc:
        log.warning("claim reaper could not run: %s", exc)
        return
    if counts.retried or counts.dead:
        log.info("reaped abandoned claims", extra={"retried": counts.retried, "dead": counts.dead})


def purge_finished(dsn: str, settings: Settings, budget_seconds: float) -> int:
    """Delete finished rows older than INBOX_RETENTION, batch by batch, until none is left or the
    time budget is spent (the next run goes on). Returns how many rows were deleted."""
    total = 0
    deadline = time.monotonic() + budget_seconds
    with connect(dsn, autocommit=True, application_name="quota-inbox retention") as conn:
        queries = Queries(conn)
        while True:
            purged = queries.purge_finished_events(
                older_than=settings.retention, limit=settings.retention_batch_size
            )
            total += purged
            if purged < settings.retention_batch_size or time.monotonic() > deadline:
                return total


def purge_history(dsn: str, settings: Settings, budget_seconds: float) -> dict[str, int]:
    """Delete old rejects, long-resolved dead letters and (INBOX_GATE_RETENTION) the gates of long
    deleted quotas, batch by batch as purge_finished does. Returns how many of each were deleted."""
    totals = {"rejects": 0, "dead_letters": 0, "gates": 0}
    deadline = time.monotonic() + budget_seconds
    with connect(dsn, autocommit=True, application_name="quota-inbox retention") as conn:
        queries = Queries(conn)
        while True:
            row = queries.purge_history(
                older_than=settings.history_retention,
                gates_older_than=settings.gate_retention,
                limit=settings.retention_batch_size,
            )
            for kind in totals:
                totals[kind] += row[kind]
            if max(row.values()) < settings.retention_batch_size or time.monotonic() > deadline:
                return totals


# The share of each retention interval the inbox's purge may use (a batch may overrun it: a quarter is
# left so the job ends before its next run is due); the history (small: rejects,
# resolved dead letters, gates) gets the rest, and at least one batch. Half, as before the soak of
# issue 13, capped retention at half its own speed: when events arrive faster than that the finished
# rows pile up and the inbox's files grow with them (README, Performance).
FINISHED_SHARE = 0.75


def retention_job(dsn: str, settings: Settings) -> None:
    started = time.monotonic()
    interval = settings.retention_interval_seconds
    try:
        purged = purge_finished(dsn, settings, budget_seconds=interval * FINISHED_SHARE)
        left = interval - (time.monotonic() - started)
        history = purge_history(dsn, settings, budget_seconds=max(0.0, left))
    except DatabaseError as exc:
        log.warning("retention could not run: %s", exc)
        return
    if purged:
        log.info("retention deleted finished inbox rows", extra={"purged": purged})
    if any(history.values()):
        log.info("retention deleted old history", extra=history)


@dataclass
class DatabaseWatch:
    """What this process has seen of the database: when it stopped answering, if it has."""

    down_since: datetime | None = None
    last_logged: float = 0.0
    last_error: str = ""


def check_alerts(dsn: str, settings: Settings, watch: DatabaseWatch) -> int | None:
    """Publish the alerts that are due; returns the msg_id of a dead-letter rate alert, if sent.

    'database unreachable' cannot be published while the database is away: it is logged at ERROR
    at once (and again each alert window while it lasts), and published when the database is back.
    """
    window = timedelta(seconds=settings.alert_window_seconds)
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox alerts") as conn:
            queries = Queries(conn)
            _report_recovery(queries, watch, window)
            rate = queries.check_dead_letter_rate(
                window=window, threshold=settings.alert_dead_letter_threshold
            )
            _report_unplaceable_deletes(queries, window)
    except Unreachable as exc:
        _report_unreachable(watch, exc, settings.alert_window_seconds)
        return None
    if rate.msg_id is None:
        return None
    log.error(
        "dead-letter rate over threshold",
        extra={
            "alert": "dead_letter_rate",
            "dead_letters": rate.dead_letters,
            "by_class": rate.by_class,
            "window_seconds": settings.alert_window_seconds,
            "threshold": settings.alert_dead_letter_threshold,
            "msg_id": rate.msg_id,
        },
    )
    return rate.msg_id


def _report_unplaceable_deletes(queries: Queries, window: timedelta) -> None:
    """Any open delete_unplaceable dead letter is an alert of its own (once per window while open):
    a quota Titan deleted is still here, and only REPLICA IDENTITY FULL at Titan prevents more."""
    found = queries.open_unplaceable_deletes()
    if not found.open or found.oldest is None:
        return
    message = {
        "alert": "delete_unplaceable",
        "open": found.open,
        "oldest": found.oldest.isoformat(),
        "fix": "ALTER TABLE public.quota REPLICA IDENTITY FULL on Titan; then resolve or replay "
        "(inbox dlq list --error-class delete_unplaceable)",
    }
    if queries.publish_alert(alert="delete_unplaceable", message=message, renotify=window) is not None:
        log.error("deletes that cannot be placed", extra=message)


def _report_unreachable(watch: DatabaseWatch, exc: Exception, every_seconds: float) -> None:
    watch.last_error = str(exc).strip()
    if watch.down_since is None:
        watch.down_since = datetime.now(UTC)
    elif time.monotonic() - watch.last_logged < every_seconds:
        return
    watch.last_logged = time.monotonic()
    log.error(
        "database unreachable",
        extra={
            "alert": "database_unreachable",
            "since": watch.down_since.isoformat(),
            "error": watch.last_error,
        },
    )


def _report_recovery(queries: Queries, watch: DatabaseWatch, window: timedelta) -> None:
    if watch.down_since is None:
        return
    until = datetime.now(UTC)
    message = {
        "severity": "error",
        "summary": f"database unreachable from {watch.down_since.isoformat()} to {until.isoformat()}",
        "since": watch.down_since.isoformat(),
        "until": until.isoformat(),
        "seconds": round((until - watch.down_since).total_seconds(), 3),
        "process": f"{socket.gethostname()}:{os.getpid()}",
        "error": watch.last_error,
    }
    queries.publish_alert(alert="database_unreachable", message=message, renotify=window)
    log.info("database reachable again", extra={"since": watch.down_since.isoformat()})
    watch.down_since = None


def alert_job(dsn: str, settings: Settings, watch: DatabaseWatch) -> None:
    try:
        check_alerts(dsn, settings, watch)
    except DatabaseError as exc:
        log.warning("alert check could not run: %s", exc)


def metrics_job(dsn: str, settings: Settings) -> None:
    """Fold old counter rows (one process at a time), then refresh this process's figures."""
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox metrics") as conn:
            Queries(conn).fold_counters()
    except DatabaseError as exc:
        log.warning("metrics job could not fold counters: %s", exc)
    source_for(dsn, settings.metrics_refresh_seconds).refresh()


def start_scheduler(dsn: str, settings: Settings) -> Any:
    scheduler = BackgroundScheduler(daemon=True)
    jobs: list[tuple[str, Any, list[Any], float]] = [
        ("reap_abandoned_claims", reap_job, [dsn, settings], settings.reap_interval_seconds),
        ("retention", retention_job, [dsn, settings], settings.retention_interval_seconds),
        ("alerts", alert_job, [dsn, settings, DatabaseWatch()], settings.alert_interval_seconds),
        ("metrics", metrics_job, [dsn, settings], settings.metrics_refresh_seconds),
    ]
    for job_id, func, args, seconds in jobs:
        scheduler.add_job(
            func, "interval", args=args, seconds=seconds, id=job_id, max_instances=1, coalesce=True
        )
    scheduler.start()
    return scheduler
