"""What the outbox and the counter triggers cost: the same ingest and apply, in scratch databases
where one of them is switched off, against one where everything is as shipped.

* outbox off: a BEFORE INSERT trigger on the queue's table skips every row, so process_batch (which
  inserts its messages there itself since issue 13, session 5) runs unchanged; the trigger's own
  call per message is left in the figure;
* triggers off: the statement-level counter trigger of migration 006 that is left dropped, the
  dead-letter one (migration 016 dropped the status-change trigger, the apply counts per batch; 018
  the insert trigger, the ingest counts per batch).

Ingest is inbox.store.store (parse, key, one transaction per 500 events) without HTTP; the apply is
Worker threads in this process draining the backlog, so the figures isolate the database work.
"""

from __future__ import annotations

import time

from inbox.apply.worker import Worker
from inbox.db.connect import connect
from inbox.ingest import parse_texts
from inbox.settings import Settings
from inbox.store import store
from inbox_bench.cluster import Cluster
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement
from inbox_bench.threads import on_threads

NO_OUTBOX = """
CREATE FUNCTION pgmq.bench_skip_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER bench_outbox_off BEFORE INSERT ON pgmq.q_quota_changes
    FOR EACH ROW EXECUTE FUNCTION pgmq.bench_skip_row();
"""
DROP_TRIGGERS = """
DROP TRIGGER quota_processing_errors_count ON public.quota_processing_errors;
"""
VARIANTS = {"as_shipped": "", "outbox_off": NO_OUTBOX, "triggers_off": DROP_TRIGGERS}


def ingest(dsn: str, stream: Stream, batch: int) -> float:
    with connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for a, z in stream.batches(batch):
            store(conn, parse_texts(stream.texts(a, z)), "http")
        return time.perf_counter() - start


def drain(dsn: str, cfg: Config) -> float:
    """Worker threads claim and apply until nothing is left; returns the seconds it took."""
    settings = Settings(batch_size=cfg.batch_size, database_url=dsn)
    workers = [Worker(dsn, settings, f"bench:{i}") for i in range(cfg.worker_threads)]

    def loop(i: int) -> int:
        batches = 0
        while True:
            counts = workers[i].process_once()
            if not counts.claimed + counts.typed:
                break
            batches += 1
        return batches

    try:
        seconds, _ = on_threads(len(workers), loop, "overhead-worker")
    finally:
        for worker in workers:
            worker.close()
    return seconds


def overheads(cluster: Cluster, stream: Stream, cfg: Config, rounds: int) -> list[Measurement]:
    """Each variant `rounds` times, interleaved, best round kept: noise only ever slows a run down."""
    stream = stream.head(cfg.overhead_events)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, change in VARIANTS.items():
            dsn = cluster.database(name, seeded=True)
            if change:
                with connect(dsn, autocommit=True) as conn:
                    conn.execute(change)
            ingest_s = ingest(dsn, stream, cfg.http_batch)
            apply_s = drain(dsn, cfg)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], ingest_s), min(old[1], apply_s))
    return [
        Measurement(
            f"apply_{name}",
            f"apply, {name.replace('_', ' ')}",
            len(stream),
            apply_s,
            {
                "ingest_seconds": round(ingest_s, 4),
                "ingest_events_per_second": round(len(stream) / ingest_s, 1),
                "worker_threads": cfg.worker_threads,
                "rounds": rounds,
            },
        )
        for name, (ingest_s, apply_s) in best.items()
    ]
