"""Periodic jobs of a worker process, on APScheduler. Each is safe with many processes running it."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from inbox.apply.worker import reap_expired_leases
from inbox.db.connect import connect
from inbox.settings import Settings

log = logging.getLogger(__name__)


def reap_job(dsn: str, settings: Settings) -> None:
    """Expired leases back to pending (SKIP LOCKED: concurrent reapers take disjoint rows)."""
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox reaper") as conn:
            counts = reap_expired_leases(conn, settings)
    except psycopg.Error as exc:
        log.warning("lease reaper could not run: %s", exc)
        return
    if counts.retried or counts.dead:
        log.info("reaped expired leases", extra={"retried": counts.retried, "dead": counts.dead})


def start_scheduler(dsn: str, settings: Settings) -> Any:
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        reap_job,
        "interval",
        args=[dsn, settings],
        seconds=settings.reap_interval_seconds,
        id="reap_expired_leases",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    return scheduler
