"""Apply only, side by side in one run: the apply as shipped before issue 13, today's apply, and the
honest ceiling's apply (inbox_bench/ceiling.py), on the same server, the same events and to the same
end state (quota rows, version gate, outbox messages, per-event status).

* previous: the apply before migration 015, kept as a benchmark-only SQL file
  (inbox_bench/shipped_apply.sql, in a schema of its own): claim_events writes a lease on every
  row, Python validates every payload (previous_prepare below: the validation of the old
  inbox/apply/prepare.py), apply_events takes the batch as one jsonb parameter;
* today's: inbox.apply.worker.Worker as `inbox work` runs it: claim_batch inside the apply
  transaction, one claim ledger row per batch, process_batch from the typed columns.
Both drain the same backlog, stored beforehand by inbox.store.store (typed at ingest), with the
pipeline's 2 sessions (2 worker threads in this process). CPU per event: every PostgreSQL process,
and this process (the Python of the workers).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from importlib import resources
from typing import Any

from psycopg.types.json import Jsonb

from inbox.apply.worker import Worker
from inbox.db.connect import DictConnection, connect, set_worker_session
from inbox.events import InvalidEvent
from inbox.formats import interpret, ordering
from inbox.ingest import parse_texts
from inbox.settings import Settings
from inbox.store import store
from inbox_bench.ceiling import honest_ceiling, per_event
from inbox_bench.cluster import Cluster, cpu_seconds, cpu_used, scalar
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, status_counts

log = logging.getLogger(__name__)
SESSIONS = 2

TITLES = {"previous": "before issue 13", "shipped": "as shipped"}
PREVIOUS_CLAIM = "SELECT * FROM bench_shipped.claim_events(%(worker)s, %(limit)s, %(lease)s)"
PREVIOUS_APPLY = "SELECT * FROM bench_shipped.apply_events(%(worker)s, %(events)s)"


def previous_prepare(row: dict[str, Any]) -> dict[str, Any]:
    """The old inbox/apply/prepare.py's happy path: one claimed row -> the JSON apply_events takes."""
    prepared: dict[str, Any] = {
        "quota_id": str(row["quota_id"]),
        "version": row["version"],
        "is_delete": row["is_delete"],
    }
    prepared["source_lsn"], prepared["versionless"] = ordering(row["payload"])
    try:
        quota = interpret(row["payload"])
        if (quota is None) != row["is_delete"]:
            raise InvalidEvent(["the event's inbox key and its payload disagree on whether it is a delete"])
    except InvalidEvent as exc:
        prepared.update(error_class="invalid", error=str(exc))
        return prepared
    if quota is not None:
        prepared.update(
            counterparty_id=quota.counterparty_id,
            direction=quota.direction,
            period_month=quota.period_month.isoformat(),
            qty_t=str(quota.qty_t),
            tolerance_pct=None if quota.tolerance_pct is None else str(quota.tolerance_pct),
            incoterm_code=quota.incoterm_code,
            metal_code=quota.metal_code,
            source_updated_at=None
            if quota.source_updated_at is None
            else quota.source_updated_at.isoformat(),
        )
    return prepared


class PreviousWorker:
    """The previous worker's happy path: claim (lease), prepare in Python, apply_events."""

    def __init__(self, dsn: str, settings: Settings, name: str) -> None:
        self.conn = connect(dsn, autocommit=True, application_name=f"quota-inbox {name}")
        set_worker_session(
            self.conn,
            statement_timeout_ms=settings.effective_statement_timeout_ms(),
            application_name=f"quota-inbox {name}",
        )
        self.name = name
        self.settings = settings

    def process_once(self) -> int:
        params = {
            "worker": self.name,
            "limit": self.settings.batch_size,
            "lease": timedelta(seconds=self.settings.lease_seconds),
        }
        rows = self.conn.execute(PREVIOUS_CLAIM, params).fetchall()
        if rows:
            events = Jsonb([previous_prepare(r) for r in rows])
            self.conn.execute(PREVIOUS_APPLY, {"worker": self.name, "events": events}).fetchone()
        return len(rows)

    def close(self) -> None:
        self.conn.close()


def _drain(dsn: str, cfg: Config, variant: str, cluster: Cluster) -> tuple[float, dict[str, float]]:
    settings = Settings(batch_size=cfg.batch_size, database_url=dsn)
    workers: list[Any]
    if variant == "previous":
        workers = [PreviousWorker(dsn, settings, f"bench:{i}") for i in range(SESSIONS)]
    else:
        workers = [Worker(dsn, settings, f"bench:{i}") for i in range(SESSIONS)]
        for worker in workers:  # open the sessions before the clock starts, as the previous ones are
            worker.open()
    pids = {"postgres": cluster.postmaster_pid(), "bench client": os.getpid()}
    errors: list[BaseException] = []

    def loop(worker: Any) -> None:
        try:
            while True:
                done = worker.process_once()
                if not (done if isinstance(done, int) else done.claimed + done.typed):
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    cpu_0 = cpu_seconds(pids)
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    cpu = cpu_used(cpu_0, cpu_seconds(pids))
    for worker in workers:
        worker.close()
    if errors:
        raise errors[0]
    return seconds, cpu


def _end_state(conn: DictConnection) -> dict[str, Any]:
    return {
        "statuses": status_counts(conn),
        "outbox_messages": int(scalar(conn, "SELECT count(*) AS n FROM pgmq.q_quota_changes")),
        "dead_letters": int(scalar(conn, "SELECT count(*) AS n FROM public.quota_processing_errors")),
        "quota_version_sum": int(
            scalar(conn, "SELECT coalesce(sum(source_version), 0) AS n FROM public.quota")
        ),
    }


def apply_only(cluster: Cluster, stream: Stream, cfg: Config) -> list[Measurement]:
    results: list[Measurement] = []
    states: dict[str, dict[str, Any]] = {}
    for variant in ("previous", "shipped"):
        dsn = cluster.database(f"apply_{variant}", seeded=True)
        with connect(dsn, autocommit=True) as conn:
            if variant == "previous":
                conn.execute(resources.files("inbox_bench").joinpath("shipped_apply.sql").read_text())
            for a, z in stream.batches(cfg.http_batch):
                store(conn, parse_texts(stream.texts(a, z)), "http")
            conn.execute("VACUUM ANALYZE inbox.quota_events")
            seconds, cpu = _drain(dsn, cfg, variant, cluster)
            states[variant] = _end_state(conn)
        results.append(
            Measurement(
                f"apply_only_{variant}",
                f"apply only, {TITLES[variant]}, {SESSIONS} sessions",
                len(stream),
                seconds,
                {**states[variant], "cpu_seconds": cpu, "cpu_us_per_event": per_event(cpu, len(stream))},
            )
        )
    ceiling = honest_ceiling(cluster, stream, cfg)
    ceiling_apply = ceiling.detail["apply_events_per_second"]
    for m in results:
        m.detail["share_of_ceiling_apply"] = round(m.rate / ceiling_apply, 3) if ceiling_apply else None
    same = states["previous"] == states["shipped"]
    results[-1].detail["same_end_state_as_previous"] = same
    results[-1].detail["speedup_over_previous"] = round(results[1].rate / results[0].rate, 3)
    if not same:
        log.warning("end states differ: %s", states)
    return [*results, ceiling]
