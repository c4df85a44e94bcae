"""Apply only: today's apply beside the honest ceiling's apply (inbox_bench/ceiling.py), on the same
server, the same events and to the same end state (quota rows, outbox messages, per-event status).

* as shipped: inbox.apply.worker.Worker as `inbox work` runs it: claim_batch inside the apply
  transaction, one claim ledger row per batch, process_batch from the typed columns. It drains a
  backlog stored beforehand by inbox.store.store (typed at ingest), with the pipeline's 2 sessions
  (2 worker threads in this process). CPU per event: every PostgreSQL process, and this process
  (the Python of the workers).

An apply of an earlier commit is measured by running that commit's `inbox-bench --only apply` back
to back with this one (issue 13): the tree keeps one apply, the one it ships.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from inbox.apply.worker import Worker
from inbox.db.connect import DictConnection, connect
from inbox.ingest import parse_texts
from inbox.settings import Settings
from inbox.store import store
from inbox_bench.ceiling import honest_ceiling
from inbox_bench.cluster import Cluster, cpu_seconds, cpu_us_per_event, cpu_used, scalar
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, quota_version_sum, status_counts
from inbox_bench.threads import on_threads

log = logging.getLogger(__name__)
SESSIONS = 2
SAME_END_STATE = ("statuses", "outbox_messages", "quota_version_sum")  # what the ceiling reports too


def _drain(dsn: str, cfg: Config, cluster: Cluster) -> tuple[float, dict[str, float]]:
    settings = Settings(batch_size=cfg.batch_size, database_url=dsn)
    workers = [Worker(dsn, settings, f"bench:{i}") for i in range(SESSIONS)]
    for worker in workers:  # open the sessions before the clock starts
        worker.open()
    pids = {"postgres": cluster.postmaster_pid(), "bench client": os.getpid()}

    def drain(i: int) -> int:
        batches = 0
        while (done := workers[i].process_once()).claimed + done.typed:
            batches += 1
        return batches

    try:
        cpu_0 = cpu_seconds(pids)
        seconds, _ = on_threads(SESSIONS, drain, "apply-only")
        cpu = cpu_used(cpu_0, cpu_seconds(pids))
    finally:
        for worker in workers:
            worker.close()
    return seconds, cpu


def _end_state(conn: DictConnection) -> dict[str, Any]:
    return {
        "statuses": status_counts(conn),
        "outbox_messages": int(scalar(conn, "SELECT count(*) AS n FROM pgmq.q_quota_changes")),
        "dead_letters": int(scalar(conn, "SELECT count(*) AS n FROM public.quota_processing_errors")),
        "quota_version_sum": quota_version_sum(conn),
    }


def apply_only(cluster: Cluster, stream: Stream, cfg: Config) -> list[Measurement]:
    dsn = cluster.database("apply_shipped", seeded=True)
    with connect(dsn, autocommit=True) as conn:
        for a, z in stream.batches(cfg.http_batch):
            store(conn, parse_texts(stream.texts(a, z)), "http")
        conn.execute("VACUUM ANALYZE inbox.quota_events")
        seconds, cpu = _drain(dsn, cfg, cluster)
        state = _end_state(conn)
    shipped = Measurement(
        "apply_only_shipped",
        f"apply only, as shipped, {SESSIONS} sessions",
        len(stream),
        seconds,
        {**state, "cpu_seconds": cpu, "cpu_us_per_event": cpu_us_per_event(cpu, len(stream))},
    )
    ceiling = honest_ceiling(cluster, stream, cfg)
    ceiling_apply = ceiling.detail["apply_events_per_second"]
    share = round(shipped.rate / ceiling_apply, 3) if ceiling_apply else None
    shipped.detail["share_of_ceiling_apply"] = share
    same = all(state[k] == ceiling.detail[k] for k in SAME_END_STATE)
    shipped.detail["same_end_state_as_ceiling"] = same
    if not same:
        log.warning(
            "end states differ: shipped %s, ceiling %s",
            {k: state[k] for k in SAME_END_STATE},
            {k: ceiling.detail[k] for k in SAME_END_STATE},
        )
    return [shipped, ceiling]
