"""Path 3: what the same work costs in SQL alone, on the same server and the same events.

3. the old ceiling: COPY into the inbox, then one set-based upsert into quota; one session, no
   version-gate table, no outbox, every row marked applied by one statement. Kept for comparison
   with earlier runs; it does less than the pipeline, so it flatters nothing and bounds little.
3b. the honest ceiling: the pipeline's work with no Python in the loop, on 2 sessions (the
   pipeline's 2 cores). Ingest: each session COPYs its share of the events, 500 per COPY, and
   counts them as ingested (inbox.add_counters, as inbox.ingest_typed_events does), one transaction each,
   as one POST is. Apply: each session repeats one statement, one psycopg call
   per batch of 500, that claims pending events (FOR UPDATE SKIP LOCKED, no lease write), passes
   the highest of each quota through the version gate (inbox.quota_versions), upserts or deletes
   the quota row, marks every event's status, dead-letters a delete that call-offs block, and
   publishes one outbox message per change (into quota_changes' table, as process_batch does, the
   message apply_events builds) and writes the batch's counters (inbox.count_finished), in one
   transaction. It reads the fields from the stored payload with casts: the validation the worker
   does in Python is not done here, which is what makes it a ceiling.

3c, the batch log (PgQ's design, the same work per batch instead of per event), is batchlog.py.

Both report CPU per event by process (cluster.cpu_seconds): PostgreSQL (every server process),
each session's backend, and this process.
"""

from __future__ import annotations

import os
import time

from inbox.db.connect import DictConnection, connect
from inbox_bench.apply_sql import BLOCKED, GATE, PUBLISHED, blocked, upserted_deleted
from inbox_bench.cluster import Cluster, scalar
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, Phases, Stopwatch, end_state, quota_version_sum, status_counts
from inbox_bench.quota_sql import COLUMNS, NEWER_ONLY, ON_CONFLICT, payload_values
from inbox_bench.threads import on_threads

COPY_INBOX = "COPY inbox.quota_events (quota_id, version, is_delete, payload, source) FROM STDIN"
# the ingest's count, as inbox.ingest_typed_events writes it (no trigger counts the inbox's inserts: 018)
COUNT_INGESTED = "SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['http'], ARRAY[%s]::float8[])"

# Highest version per quota, upserted (version-gated) or deleted, every inbox row marked applied.
OLD_CEILING_APPLY = f"""
WITH latest AS (
    SELECT DISTINCT ON (e.quota_id) e.quota_id, e.version, e.is_delete, e.payload -> 'data' AS d
    FROM inbox.quota_events e
    WHERE e.status = 'pending'
    ORDER BY e.quota_id, e.version DESC, e.is_delete DESC
),
upserted AS (
    INSERT INTO public.quota AS q ({COLUMNS})
    SELECT {payload_values("l")}
    FROM latest l
    WHERE NOT l.is_delete
    {ON_CONFLICT}
        {NEWER_ONLY}
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

# One batch, claimed and finished in one statement (one transaction): the same outcomes, tables and
# messages as claim_events + apply_events, without the lease and without Python between them.
HONEST_APPLY = f"""
WITH claimed AS (
    SELECT e.quota_id, e.version, e.is_delete, e.payload, e.attempts
    FROM inbox.quota_events e
    WHERE e.status = 'pending' AND e.next_attempt_at <= now()
    ORDER BY e.next_attempt_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
checked AS (
    SELECT c.*,
           {blocked("c")}
    FROM claimed c
),
best AS (  -- per quota, the highest (version, is_delete) of the batch that may apply
    SELECT DISTINCT ON (c.quota_id) c.quota_id, c.version, c.is_delete, c.payload -> 'data' AS d
    FROM checked c
    WHERE NOT c.blocked
    ORDER BY c.quota_id, c.version DESC, c.is_delete DESC
),
{GATE},
passed AS (
    SELECT g.*, b.d FROM gate g JOIN best b USING (quota_id)
),
{upserted_deleted(payload_values("p"))},
marked AS (
    UPDATE inbox.quota_events e
    SET status = CASE WHEN c.blocked THEN 'dead' WHEN g.quota_id IS NOT NULL THEN 'applied' ELSE 'stale' END,
        attempts = e.attempts + 1,
        last_error = CASE WHEN c.blocked THEN '{BLOCKED}' END,
        applied_at = CASE WHEN g.quota_id IS NOT NULL THEN now() END
    FROM checked c
    LEFT JOIN gate g ON (g.quota_id, g.version, g.is_delete) = (c.quota_id, c.version, c.is_delete)
    WHERE (e.quota_id, e.version, e.is_delete) = (c.quota_id, c.version, c.is_delete)
    RETURNING e.status,
              CASE WHEN e.status = 'applied' THEN extract(epoch FROM e.applied_at - e.received_at)::float8 END
                  AS latency
),
counted AS (  -- the batch's counts, once, as the pipeline writes them (migration 016)
    SELECT inbox.count_finished(count(*) FILTER (WHERE m.status = 'applied'),
                                count(*) FILTER (WHERE m.status = 'stale'),
                                array_agg(m.latency) FILTER (WHERE m.latency IS NOT NULL)) AS done
    FROM marked m
),
buried AS (
    INSERT INTO public.quota_processing_errors (
        event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
    SELECT c.payload, '{BLOCKED}', c.attempts + 1, c.quota_id, c.version, c.is_delete, 'delete_blocked'
    FROM checked c
    WHERE c.blocked
    RETURNING 1
),
{PUBLISHED}
SELECT (SELECT count(*) FROM marked, counted) AS finished,
       (SELECT n FROM published) AS published,
       (SELECT count(*) FROM buried) AS dead
"""

# The plan settings apply_events and claim_events run with (sql/): every table read by key.
SESSION = "SET enable_seqscan = off; SET enable_bitmapscan = off"


def copy_rows(stream: Stream, start: int, stop: int) -> str:
    """Inbox rows in COPY text format (the generated JSON holds no tab, newline or backslash)."""
    return "".join(
        f"{q}\t{v}\t{'t' if d else 'f'}\t{text}\thttp\n"
        for (q, v, d), text in zip(stream.keys(start, stop), stream.texts(start, stop), strict=True)
    )


def backend_pid(conn: DictConnection) -> int:
    return int(scalar(conn, "SELECT pg_backend_pid() AS pid"))


def ceiling(cluster: Cluster, stream: Stream) -> Measurement:
    dsn = cluster.database("ceiling", seeded=True)
    rows = copy_rows(stream, 0, len(stream))
    with connect(dsn, autocommit=True) as conn:
        pids = {"postgres": cluster.postmaster_pid(), "postgres session": backend_pid(conn)}
        pids["bench client"] = os.getpid()
        clock = Stopwatch(pids, len(stream))
        with conn.cursor().copy(COPY_INBOX) as copy:
            copy.write(rows)
        copied = time.perf_counter()
        conn.execute(OLD_CEILING_APPLY)
        clock.stop()
    return clock.measurement(
        "ceiling",
        "3. old ceiling: COPY + one upsert, 1 session",
        {
            "copy_seconds": round(copied - clock.start, 4),
            "upsert_seconds": round(clock.end - copied, 4),
            "sessions": 1,
        },
    )


def honest_ceiling(cluster: Cluster, stream: Stream, cfg: Config, sessions: int = 2) -> Measurement:
    dsn = cluster.database("ceiling_honest", seeded=True)
    batches = stream.batches(cfg.batch_size)
    # made before the clock starts: the ceiling times the database, not the generator
    shares = [[copy_rows(stream, a, z) for a, z in batches[i::sessions]] for i in range(sessions)]
    conns = [connect(dsn, autocommit=True) for _ in range(sessions)]
    try:
        for conn in conns:
            conn.execute(SESSION)
        pids = {"postgres": cluster.postmaster_pid()}
        pids.update({f"postgres session {i + 1}": backend_pid(c) for i, c in enumerate(conns)})
        pids["bench client"] = os.getpid()

        def ingest(i: int) -> int:
            for rows in shares[i]:
                with conns[i].transaction():
                    with conns[i].cursor().copy(COPY_INBOX) as copy:
                        copy.write(rows)
                    conns[i].execute(COUNT_INGESTED, [rows.count("\n")], prepare=True)
            return len(shares[i])

        def apply(i: int) -> int:
            calls = 0
            while True:
                row = conns[i].execute(HONEST_APPLY, {"batch": cfg.batch_size}, prepare=True).fetchone()
                calls += 1
                if row is None or not row["finished"]:
                    return calls

        phases = Phases(pids, len(stream))
        with phases.phase("ingest"):
            _, copies = on_threads(sessions, ingest, "ceiling-ingest")
        with phases.phase("apply"):
            _, calls = on_threads(sessions, apply, "ceiling-apply")
        conn = conns[0]
        counts = status_counts(conn)
        messages = int(scalar(conn, "SELECT count(*) AS n FROM pgmq.q_quota_changes"))
        left = int(scalar(conn, "SELECT count(*) AS n FROM inbox.quota_events WHERE status = 'pending'"))
        versions = quota_version_sum(conn)
        state = end_state(conn)
    finally:
        for conn in conns:
            conn.close()
    if left:
        raise RuntimeError(f"the honest ceiling left {left} events pending")
    return phases.measurement(
        "ceiling_honest",
        "3b. honest ceiling: SQL only, 2 sessions",
        {
            "sessions": sessions,
            "batch_size": cfg.batch_size,
            "copy_calls": copies,
            "apply_calls": calls,
            "statuses": counts,
            "outbox_messages": messages,
            "quota_version_sum": versions,
            "end_state": state,  # compared by ceiling_batch (batchlog.py)
            "cpu_note": "postgres = every server process; each session = its backend; bench client = this"
            " process, which only sends prepared statements and COPY text made before the clock started",
        },
    )
