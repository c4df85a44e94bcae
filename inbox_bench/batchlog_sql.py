"""The SQL of the batch-log prototype (inbox_bench/batchlog.py): a bench-only schema, `batchlog`,
created by the step in its own database, never by a product migration (docs/design/batch-log.md).

Learnt from Skytools PgQ (github:pgq/pgq, functions/pgq.ticker.sql, pgq.next_batch.sql,
pgq.batch_event_sql.sql, pgq.finish_batch.sql, pgq.maint_rotate_tables.sql):

* events are appended to one of NTABLES rotated tables (partitions of batchlog.events), each row
  with the id of the transaction that wrote it (txid xid8 DEFAULT pg_current_xact_id());
* a ticker records pg_current_snapshot() in batchlog.tick; batch N holds the events whose txid is
  visible in tick N's snapshot and not in tick N-1's (PgQ's rule: an event committed out of id order
  is never skipped, an event of a transaction still open at a tick goes to a later batch);
* an apply session takes the oldest unfinished batch (one row lock, FOR UPDATE SKIP LOCKED) and
  finishes it with one row update; per event it writes nothing but the changes themselves, plus one
  batchlog.outcome row for an event that was NOT applied (stale, dead, invalid);
* retention is TRUNCATE of a rotated table once every batch that could hold its events is finished:
  no per-event update, no per-event delete, no vacuum of the event tables.
"""

from __future__ import annotations

from inbox_bench.apply_sql import BLOCKED, GATE, PUBLISHED, blocked, upserted_deleted
from inbox_bench.quota_sql import COLUMN_NAMES

NTABLES = 3
# Ingest's transactions take this advisory lock shared, the rotation exclusively: a switch of the
# current table waits for every COPY into the old one to commit (so each of them is visible in any
# snapshot that sees the switch committed).
ROTATION_LOCK = 0x62617463  # "batc"

# The typed columns the edge writes (inbox/edge.py), named as public.quota's.
TYPED = COLUMN_NAMES[2:]
COPY_COLUMNS = ("quota_id", "version", "is_delete", "source", "errors", *TYPED, "payload")
COPY_LIST = ", ".join(COPY_COLUMNS)

# errors and the typed columns of inbox.quota_events (migration 015), each `name type NULL`, from the
# catalog: the batch log stores an event's columns as the product's inbox does
TYPED_COLUMNS = """
SELECT string_agg(format('%%I %%s NULL', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                  ORDER BY array_position(%(names)s::text[], a.attname::text)) AS columns
FROM pg_attribute a
WHERE a.attrelid = 'inbox.quota_events'::regclass AND a.attname = ANY(%(names)s::text[])
  AND NOT a.attisdropped
"""
TYPED_COLUMN_NAMES = ["errors", *TYPED]


def schema(typed_columns: str) -> str:
    """The batch log's tables, `typed_columns` as TYPED_COLUMNS reads them."""
    return f"""
CREATE SCHEMA batchlog;
CREATE SEQUENCE batchlog.event_id_seq;

CREATE TABLE batchlog.events (
    id                bigint      NOT NULL DEFAULT nextval('batchlog.event_id_seq'),
    txid              xid8        NOT NULL DEFAULT pg_current_xact_id(),
    tbl               smallint    NOT NULL,
    quota_id          uuid        NOT NULL,
    version           bigint      NOT NULL,
    is_delete         boolean     NOT NULL,
    source            text        NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    -- errors (every reason the edge found the event invalid) and the typed columns, as inbox.quota_events
    {typed_columns},
    payload           jsonb       NOT NULL
) PARTITION BY LIST (tbl);
-- a batch's events are found by transaction id (few distinct values: btree deduplication keeps it small)
CREATE INDEX events_txid_idx ON batchlog.events (txid);

CREATE TABLE batchlog.tick (
    tick_id   bigint      PRIMARY KEY,
    snap      pg_snapshot NOT NULL,
    event_seq bigint      NOT NULL,  -- event_id_seq when taken: whether anything new was written since
    tick_time timestamptz NOT NULL DEFAULT now()
);
-- batch N = the events between tick prev_tick and tick N; finished once, by one update
CREATE TABLE batchlog.batch (
    batch_id    bigint      PRIMARY KEY,
    prev_tick   bigint      NOT NULL,
    finished_at timestamptz NULL,
    events      integer     NULL,
    applied     integer     NULL,
    stale       integer     NULL,
    dead        integer     NULL
);
CREATE INDEX batch_open_idx ON batchlog.batch (batch_id) WHERE finished_at IS NULL;
-- only the events that were not applied: an applied event's outcome is its batch's
CREATE TABLE batchlog.outcome (
    event_id bigint  PRIMARY KEY,
    batch_id bigint  NOT NULL,
    status   text    NOT NULL CHECK (status IN ('stale', 'dead')),
    reason   text    NULL
);
CREATE TABLE batchlog.queue (
    cur_table        smallint NOT NULL,
    switch_seq       bigint   NOT NULL,  -- event_id_seq at the last switch
    rotations        integer  NOT NULL DEFAULT 0,
    truncations      integer  NOT NULL DEFAULT 0,
    truncated_events bigint   NOT NULL DEFAULT 0
);
-- retired_txid: the transaction that switched away from the table; every event in it committed
-- before that one did
CREATE TABLE batchlog.event_table (
    tbl          smallint PRIMARY KEY,
    retired_txid xid8     NULL
);
INSERT INTO batchlog.queue (cur_table, switch_seq) VALUES (0, 0);
INSERT INTO batchlog.tick (tick_id, snap, event_seq) VALUES (0, pg_current_snapshot(), 0);
"""


def partition(tbl: int, keyed: bool) -> str:
    """One rotated table: append-only, never updated, so no room kept and no vacuum."""
    name = f"batchlog.events_{tbl}"
    unique = (
        f"CREATE UNIQUE INDEX events_{tbl}_key ON {name} (quota_id, version, is_delete);\n" if keyed else ""
    )
    return (
        f"CREATE TABLE {name} PARTITION OF batchlog.events FOR VALUES IN ({tbl})"
        " WITH (fillfactor = 100, autovacuum_enabled = false);\n"
        f"ALTER TABLE {name} ALTER COLUMN tbl SET DEFAULT {tbl};\n"
        f"{unique}"
        f"INSERT INTO batchlog.event_table (tbl) VALUES ({tbl});\n"
    )


def batch_events(prev_snap: str, cur_snap: str) -> str:
    """The events of a batch, read by transaction id (PgQ's rule): those of the transactions
    visible in the snapshot of its tick, `cur_snap`, and not in that of the tick before, `prev_snap`."""
    return f"""
    SELECT e.*
    FROM batchlog.events e
    WHERE e.txid >= pg_snapshot_xmin({prev_snap}) AND e.txid < pg_snapshot_xmax({cur_snap})
      AND pg_visible_in_snapshot(e.txid, {cur_snap}) AND NOT pg_visible_in_snapshot(e.txid, {prev_snap})
"""


FUNCTIONS = f"""
-- event_id_seq's value now (0 before the first event)
CREATE FUNCTION batchlog.event_seq() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM batchlog.event_id_seq $$;

-- Reads: batchlog.queue. Writes: nothing.
-- The table this ingest transaction writes into, read under the rotation lock (held to commit).
CREATE FUNCTION batchlog.current_table() RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({ROTATION_LOCK});
    -- a new statement, a new snapshot: a switch that committed before the lock was granted is seen
    RETURN (SELECT 'batchlog.events_' || q.cur_table FROM batchlog.queue q);
END;
$$;

-- Reads: batchlog.queue. Writes: inbox.metric_counters (the ingest's count, as inbox.ingest_typed_events).
CREATE FUNCTION batchlog.ingest_table(p_events integer) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['http'], ARRAY[p_events]::float8[]);
    SELECT batchlog.current_table();
END;

-- Reads: pg_temp.stage, batchlog.queue. Writes: the current event table, inbox.metric_counters.
-- The keyed ingest: the staged rows (COPY into pg_temp.stage) into the current table, a redelivery
-- (same quota_id, version, is_delete in that table) counted as a duplicate and not stored again.
CREATE FUNCTION batchlog.ingest_staged() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table text := batchlog.current_table();
    v_staged integer;
    v_stored integer;
BEGIN
    SELECT count(*) INTO v_staged FROM pg_temp.stage;
    EXECUTE format('INSERT INTO %s ({COPY_LIST}) SELECT {COPY_LIST}'
                   ' FROM pg_temp.stage ON CONFLICT (quota_id, version, is_delete) DO NOTHING', v_table);
    GET DIAGNOSTICS v_stored = ROW_COUNT;
    PERFORM inbox.add_counters(ARRAY['ingested', 'duplicate'], ARRAY['http', 'http'],
                               ARRAY[v_stored, v_staged - v_stored]::float8[]);
    RETURN v_stored;
END;
$$;

-- Reads: batchlog.tick, event_id_seq. Writes: batchlog.tick, batchlog.batch.
-- PgQ's ticker: a tick when at least p_min_events ids were drawn since the last one (one ticker at a
-- time: the product would hold an advisory lock). Returns the new tick's id, or NULL.
CREATE FUNCTION batchlog.tick(p_min_events bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last batchlog.tick;
    v_seq bigint := batchlog.event_seq();
BEGIN
    SELECT * INTO v_last FROM batchlog.tick ORDER BY tick_id DESC LIMIT 1;
    IF v_seq - v_last.event_seq < p_min_events THEN
        RETURN NULL;
    END IF;
    INSERT INTO batchlog.tick (tick_id, snap, event_seq)
    VALUES (v_last.tick_id + 1, pg_current_snapshot(), v_seq);
    INSERT INTO batchlog.batch (batch_id, prev_tick) VALUES (v_last.tick_id + 1, v_last.tick_id);
    RETURN v_last.tick_id + 1;
END;
$$;

-- Reads: batchlog.queue, event_table, batch, tick. Writes: the same; TRUNCATE of one event table.
-- PgQ's maint_rotate_tables: once the current table holds p_rotate_events, switch to the next one,
-- truncating it first; only when every batch that can hold its events is finished, i.e. the oldest
-- unfinished batch's first tick (or, with none unfinished, the last tick) saw committed the
-- transaction that switched away from it. No row when nothing was done (not due, or the next
-- table still needed, or being read past the caller's lock_timeout).
CREATE FUNCTION batchlog.rotate(p_rotate_events bigint,
                                OUT switched_to smallint, OUT truncated boolean, OUT truncated_events bigint)
RETURNS SETOF record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_queue batchlog.queue;
    v_next smallint;
    v_retired xid8;
    v_snap pg_snapshot;
BEGIN
    IF batchlog.event_seq() - (SELECT q.switch_seq FROM batchlog.queue q) < p_rotate_events THEN
        RETURN;  -- checked before the row lock: the ticker asks every few milliseconds
    END IF;
    SELECT * INTO v_queue FROM batchlog.queue FOR UPDATE;
    IF batchlog.event_seq() - v_queue.switch_seq < p_rotate_events THEN
        RETURN;
    END IF;
    v_next := (v_queue.cur_table + 1) % {NTABLES};
    truncated_events := 0;
    SELECT retired_txid INTO v_retired FROM batchlog.event_table WHERE tbl = v_next;
    IF v_retired IS NOT NULL THEN
        SELECT t.snap INTO v_snap
        FROM batchlog.batch b JOIN batchlog.tick t ON t.tick_id = b.prev_tick
        WHERE b.finished_at IS NULL
        ORDER BY b.batch_id LIMIT 1;
        IF NOT FOUND THEN
            SELECT t.snap INTO v_snap FROM batchlog.tick t ORDER BY t.tick_id DESC LIMIT 1;
        END IF;
        IF NOT pg_visible_in_snapshot(v_retired, v_snap) THEN
            RETURN;  -- events_<next> still holds events of unfinished (or unticked) batches
        END IF;
        EXECUTE format('SELECT count(*) FROM batchlog.events_%s', v_next) INTO truncated_events;
        BEGIN
            EXECUTE format('TRUNCATE batchlog.events_%s', v_next);  -- lock_timeout: the caller's
        EXCEPTION WHEN lock_not_available THEN
            RETURN;  -- an apply kept reading it: next time
        END;
    END IF;
    PERFORM pg_advisory_xact_lock({ROTATION_LOCK});  -- every ingest into the current table has committed
    UPDATE batchlog.event_table SET retired_txid = pg_current_xact_id() WHERE tbl = v_queue.cur_table;
    UPDATE batchlog.event_table SET retired_txid = NULL WHERE tbl = v_next;
    UPDATE batchlog.queue
    SET cur_table = v_next, switch_seq = batchlog.event_seq(), rotations = rotations + 1,
        truncations = truncations + (v_retired IS NOT NULL)::int,
        truncated_events = batchlog.queue.truncated_events + rotate.truncated_events;
    switched_to := v_next;
    truncated := v_retired IS NOT NULL;
    RETURN NEXT;
END;
$$;

-- Every stored event and its outcome, read batch by batch (each batch's events by transaction id):
-- applied unless batchlog.outcome says otherwise, 'pending' until its batch is finished, 'received'
-- until a tick took it. What inbox.v_status would read. An event in no batch would be missing here,
-- one in two batches twice: the step counts both.
CREATE VIEW batchlog.v_event_status AS
SELECT e.id, e.quota_id, e.version, e.is_delete, b.batch_id,
       CASE WHEN b.finished_at IS NULL THEN 'pending' ELSE coalesce(o.status, 'applied') END AS status,
       o.reason
FROM batchlog.batch b
JOIN batchlog.tick t ON t.tick_id = b.batch_id
JOIN batchlog.tick p ON p.tick_id = b.prev_tick
CROSS JOIN LATERAL ({batch_events("p.snap", "t.snap")}) e
LEFT JOIN batchlog.outcome o ON o.event_id = e.id
UNION ALL
SELECT e.id, e.quota_id, e.version, e.is_delete, NULL, 'received', NULL
FROM batchlog.events e
WHERE NOT pg_visible_in_snapshot(e.txid,
                                 (SELECT t.snap FROM batchlog.tick t ORDER BY t.tick_id DESC LIMIT 1));
"""

# the SELECT list of quota_sql.COLUMNS from what passed the gate (alias p): the typed columns as stored
TYPED_VALUES = ", ".join(["p.quota_id", "p.version", *(f"p.{c}" for c in TYPED)])

# One batch, claimed, applied and finished in one statement (one transaction): the honest ceiling's
# gate, quota upsert/delete, dead letters, counters and outbox messages (inbox_bench/ceiling.py,
# HONEST_APPLY), set-based over the batch's events read by transaction id, from typed columns.
APPLY = f"""
WITH claimed AS (
    SELECT b.batch_id, b.prev_tick
    FROM batchlog.batch b
    WHERE b.finished_at IS NULL
    ORDER BY b.batch_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
span AS (
    SELECT c.batch_id, p.snap AS prev_snap, t.snap AS cur_snap
    FROM claimed c
    JOIN batchlog.tick t ON t.tick_id = c.batch_id
    JOIN batchlog.tick p ON p.tick_id = c.prev_tick
),
checked AS (
    SELECT e.*,
           e.errors IS NOT NULL AS invalid,
           {blocked("e")}
    FROM span s
    CROSS JOIN LATERAL ({batch_events("s.prev_snap", "s.cur_snap")}) e
),
best AS (  -- per quota, the highest (version, is_delete) of the batch that may apply
    SELECT DISTINCT ON (c.quota_id) c.*
    FROM checked c
    WHERE NOT c.blocked AND NOT c.invalid
    ORDER BY c.quota_id, c.version DESC, c.is_delete DESC, c.id
),
{GATE},
passed AS (
    SELECT g.previous_version, g.applied_at, b.*
    FROM gate g JOIN best b USING (quota_id)
),
{upserted_deleted(TYPED_VALUES)},
outcomes AS (  -- every event of the batch: applied (the one that passed the gate), stale or dead
    SELECT c.id, c.quota_id, c.version, c.is_delete, c.payload, c.received_at,
           CASE WHEN c.invalid OR c.blocked THEN 'dead'
                WHEN p.id IS NOT NULL THEN 'applied'
                ELSE 'stale' END AS status,
           CASE WHEN c.invalid THEN array_to_string(c.errors, '; ')
                WHEN c.blocked THEN '{BLOCKED}' END AS reason,
           CASE WHEN c.invalid THEN 'invalid' WHEN c.blocked THEN 'delete_blocked' END AS error_class
    FROM checked c
    LEFT JOIN passed p ON p.id = c.id
),
recorded AS (  -- one row per event only for what was not applied
    INSERT INTO batchlog.outcome (event_id, batch_id, status, reason)
    SELECT o.id, (SELECT batch_id FROM claimed), o.status, o.reason
    FROM outcomes o
    WHERE o.status <> 'applied'
    RETURNING 1
),
buried AS (
    INSERT INTO public.quota_processing_errors (
        event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
    SELECT o.payload, o.reason, 1, o.quota_id, o.version, o.is_delete, o.error_class
    FROM outcomes o
    WHERE o.status = 'dead'
    RETURNING 1
),
tally AS (
    SELECT count(*) AS events,
           count(*) FILTER (WHERE o.status = 'applied') AS applied,
           count(*) FILTER (WHERE o.status = 'stale') AS stale,
           count(*) FILTER (WHERE o.status = 'dead') AS dead,
           array_agg(extract(epoch FROM now() - o.received_at)::float8) FILTER (WHERE o.status = 'applied')
               AS latencies
    FROM outcomes o
),
counted AS (  -- the batch's counts, once, as the pipeline writes them (migration 016)
    SELECT inbox.count_finished(t.applied, t.stale, t.latencies) AS done
    FROM tally t
    WHERE EXISTS (SELECT 1 FROM claimed)
),
{PUBLISHED},
finished AS (  -- the batch's one update
    UPDATE batchlog.batch b
    SET finished_at = now(), events = t.events, applied = t.applied, stale = t.stale, dead = t.dead
    FROM claimed c, tally t
    WHERE b.batch_id = c.batch_id
    RETURNING b.batch_id, b.events
)
SELECT f.batch_id, f.events,
       (SELECT n FROM published) AS published,
       (SELECT count(*) FROM recorded) AS not_applied,
       (SELECT count(*) FROM buried) AS dead,
       (SELECT count(*) FROM counted) AS counted
FROM finished f
"""

# What the run left: every batch finished, their counts, and the events still stored (the
# truncated table's are gone, as retention deletes them today) each in exactly one batch.
CHECK = """
SELECT (SELECT count(*) FROM batchlog.batch WHERE finished_at IS NULL) AS open_batches,
       (SELECT count(*) FROM batchlog.batch) AS batches,
       (SELECT coalesce(sum(events), 0) FROM batchlog.batch) AS batched_events,
       (SELECT coalesce(max(events), 0) FROM batchlog.batch) AS largest_batch,
       (SELECT coalesce(sum(applied), 0) FROM batchlog.batch) AS applied,
       (SELECT coalesce(sum(stale), 0) FROM batchlog.batch) AS stale,
       (SELECT coalesce(sum(dead), 0) FROM batchlog.batch) AS dead,
       (SELECT count(*) FROM batchlog.outcome) AS outcome_rows,
       (SELECT count(*) FROM batchlog.events) AS stored_events,
       (SELECT rotations FROM batchlog.queue) AS rotations,
       (SELECT truncations FROM batchlog.queue) AS truncations,
       (SELECT truncated_events FROM batchlog.queue) AS truncated_events
"""

STORED_STATUS = """
SELECT s.status, count(*) AS n, count(DISTINCT s.id) AS distinct_events
FROM batchlog.v_event_status s
GROUP BY s.status
"""
