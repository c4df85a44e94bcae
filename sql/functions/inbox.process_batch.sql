-- -------------------------------------------------------------------------------------------------
-- Function: inbox.process_batch(p_ledger bigint, p_quota_ids uuid[], p_versions bigint[],
--                               p_is_delete boolean[], p_error_class text, p_error text,
--                               p_max_attempts integer, p_fresh boolean DEFAULT false)
--     RETURNS TABLE (applied, stale, dead, not_owned, published)
--
-- Reads:       inbox.quota_events (typed columns), inbox.quota_versions, public.call_off; the message types
--              inbox.outbox_message and inbox.outbox_quota
-- Writes:      inbox.quota_versions, public.quota, inbox.quota_events, public.quota_processing_errors,
--              inbox.claim_ledger (deletes p_ledger), inbox.claim_debts (pays them, through
--              inbox.pay_claim_debts), inbox.metric_counters (the batch's counts, through
--              inbox.count_finished), pgmq queue quota_changes (its table pgmq.q_quota_changes, as
--              pgmq.send_batch would)
-- Called by:   query process_batch (inbox/apply/worker.py), in the transaction of inbox.claim_batch;
--              inbox.ingest_typed_events (the apply at ingest: the rows that call stored, no ledger,
--              p_fresh)
-- -------------------------------------------------------------------------------------------------
-- Finish the events with these keys that are still pending, in the caller's transaction, from their
-- typed columns (migration 015: no payload travels to the worker and back), in two statements:
--   events whose spent attempts (with the debts of dead claims that held them, inbox.claim_debts)
--   have reached p_max_attempts -> dead letters ('retries_exhausted'), never applied again: an
--                                event that killed every worker that took it
--   invalid events (errors set when typed) -> dead letters (error_class, or 'invalid'; every reason)
--   p_error given             -> every event a dead letter (p_error_class, p_error): the worker's
--                                verdict on a poison event its bisection isolated
--   deletes of quotas with call-offs, if they would take effect -> dead letters ('delete_blocked')
--   version-less deletes that cannot be placed -> dead letters ('delete_unplaceable', below)
--   per quota, the latest remaining change passes the version gate -> applied
--     (an event of source 'reconcile' passes at the gate's own (version, is_delete) too: it
--     repairs a row changed outside the pipeline, `inbox reconcile --repair`; migration 013)
--   everything else           -> stale (not after the applied change, or superseded in this batch;
--                                a stale delete says in last_error what it lost to)
-- Each event finished here has spent one attempt (attempts + 1). The claim ledger row p_ledger (if
-- given) is deleted in the same transaction: once this commits, the batch is in nobody's hands.
-- The claim. Each event's row is locked here (FOR UPDATE SKIP LOCKED, by primary key); in the
-- worker's transaction inbox.claim_batch already holds them, so this takes nothing new. Events
-- locked by another transaction, no longer pending, or not typed yet are left alone: not_owned.
-- Order (issue 11). Where the event and the gate row both carry Debezium's source LSN (the change's
-- position in Titan's WAL), the LSN decides: one database's changes, in the order they committed,
-- whatever their versions (a redelivered change is never after the gate). Otherwise (version, is_delete)
-- decides. A version-less delete (typed versionless: REPLICA IDENTITY DEFAULT sent only the key, so it
-- is keyed at version 0) is placed by its LSN alone: it applies iff no change of the quota with a
-- higher LSN was applied, takes effect at the version the gate holds (or 0 with no gate row: its LSN
-- then keeps older changes out), and is a 'delete_unplaceable' dead letter naming the fix when it
-- has no LSN or the gate row has none (applied from a feed without LSNs, or before migration 014).
-- Every effective change is published to the pgmq queue quota_changes in the same transaction:
--   {quota_id, version, previous_version, op: upsert|delete, quota: row after | null, applied_at},
-- the message built by to_jsonb of a row of inbox.outbox_message (migration 024) from the gate's and
-- the quota row's known columns.
-- Deletes run in a second statement: its fresh snapshot sees a quota row that another worker
-- inserted and committed while this one waited for the gate lock (the first snapshot predates it).
-- p_fresh (the apply at ingest, migration 023): the rows are the caller's transaction's own, stored
-- a moment ago already as applied (attempts 1, applied_at): the outcome the apply gives most of them.
-- They are read as the pending rows they stand for (status applied, one attempt fewer), and only the
-- rows whose outcome differs are marked (stale, dead, or an attempt count that debts raised); an
-- applied row is left as stored: no second tuple, no index entries, no dead tuple for vacuum.
-- Should the apply fail, the caller rolls the stored rows back with it and stores them pending.
-- Linear in the batch size, whatever the planner's estimates: each event's inbox row is locked by
-- its primary key (LATERAL), and the CTEs are joined on booleans, never filtered on a computed
-- value (the history of inbox.apply_events, migrations 003 and 008). Payloads are read only for the
-- dead letters, by key.
CREATE OR REPLACE FUNCTION inbox.process_batch(
    p_ledger      bigint,
    p_quota_ids   uuid[],
    p_versions    bigint[],
    p_is_delete   boolean[],
    p_error_class  text,
    p_error        text,
    p_max_attempts integer,
    p_fresh        boolean DEFAULT false
) RETURNS TABLE (applied bigint, stale bigint, dead bigint, not_owned bigint, published bigint)
LANGUAGE plpgsql
-- Every table here is reached by key from the batch. The planner takes the batch (a function
-- scan) for 100 rows whatever its size; against tables of a few thousand rows it then found a hash
-- join over a seq scan cheaper than the lookups, and each small batch read the whole inbox to mark
-- its few events (tests/integration/test_query_plans.py). Seq scans are left for the last resort.
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- what passed the gate, ordered by quota_id: the message to publish, its quota, whether a delete
    v_messages  jsonb[];
    v_quota_ids uuid[];
    v_is_delete boolean[];
    v_latencies double precision[];  -- received-to-applied seconds of each applied event
    v_vt        timestamptz;         -- the outbox messages' visibility time: when they were sent
BEGIN
    -- By primary key alone: the lookup must not name status = 'pending' (the predicate of
    -- quota_events_due_idx), or a generic plan made when the statistics saw few pending rows reads
    -- that whole partial index, dead entries and all, once per event (test_query_plans). The LIMIT
    -- (one row per key at most) keeps the planner from pushing the filter below into the lookup. A
    -- row locked that is no longer pending is left out; the lock ends with the transaction.
    WITH locked AS (
        SELECT e.*
        FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
        CROSS JOIN LATERAL (
            SELECT x.quota_id, x.version, x.is_delete, x.source, x.errors,
                   x.error_class AS stored_error_class, x.source_lsn, x.versionless,
                   x.counterparty_id, x.direction, x.period_month, x.qty_t, x.tolerance_pct,
                   x.incoterm_code, x.metal_code, x.source_updated_at, x.status, x.typed, x.received_at,
                   -- a fresh row was stored with this attempt's outcome: one attempt fewer before it
                   x.attempts - CASE WHEN p_fresh THEN 1 ELSE 0 END                         AS attempts,
                   x.applied_at                                                            AS stored_applied_at
            FROM inbox.quota_events x
            WHERE (x.quota_id, x.version, x.is_delete) = (k.quota_id, k.version, k.is_delete)
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ) e
        -- p_fresh: the caller's own rows, stored as applied (above)
        WHERE e.status = CASE WHEN p_fresh THEN 'applied' ELSE 'pending' END AND e.typed
    ),
    -- attempts that dead claims owe (inbox.release_claim): paid now
    paid AS (
        SELECT p.quota_id, p.version, p.is_delete, p.claims
        FROM (SELECT array_agg(l.quota_id) AS quota_ids, array_agg(l.version) AS versions,
                     array_agg(l.is_delete) AS is_delete
              FROM locked l) a
        CROSS JOIN LATERAL inbox.pay_claim_debts(a.quota_ids, a.versions, a.is_delete) p
    ),
    owned AS (
        SELECT e.quota_id, e.version, e.is_delete, e.source, e.errors, e.stored_error_class, e.source_lsn,
               e.versionless, e.counterparty_id, e.direction, e.period_month, e.qty_t, e.tolerance_pct,
               e.incoterm_code, e.metal_code, e.source_updated_at, e.received_at, e.stored_applied_at,
               e.attempts + coalesce(p.claims, 0)                                         AS attempts,
               e.attempts + coalesce(p.claims, 0) >= p_max_attempts                       AS exhausted,
               CASE WHEN e.attempts + coalesce(p.claims, 0) >= p_max_attempts THEN 'retries_exhausted'
                    WHEN p_error IS NOT NULL THEN coalesce(p_error_class, 'apply_error')
                    WHEN e.errors IS NOT NULL THEN coalesce(e.stored_error_class, 'invalid') END AS error_class,
               CASE WHEN e.attempts + coalesce(p.claims, 0) >= p_max_attempts
                        THEN format('gave up after %s attempts: %s', e.attempts + coalesce(p.claims, 0),
                                    CASE WHEN p.claims > 0 THEN 'the worker ended before it finished the batch'
                                         ELSE 'no attempt left' END)
                    WHEN p_error IS NOT NULL THEN p_error
                    WHEN e.errors IS NOT NULL THEN array_to_string(e.errors, '; ') END        AS error
        FROM locked e
        LEFT JOIN paid p ON (p.quota_id, p.version, p.is_delete) = (e.quota_id, e.version, e.is_delete)
    ),
    placed AS (
        SELECT o.*,
               v.source_lsn                                                               AS gate_lsn,
               -- a version-less delete takes effect at the version the gate holds
               CASE WHEN o.versionless THEN coalesce(v.version, 0) ELSE o.version END     AS eff_version,
               -- ... and needs its own LSN and one at the gate to be ordered (no gate row: nothing
               -- applied yet, nothing to order against)
               coalesce(o.versionless, false) AND o.error IS NULL
                   AND (o.source_lsn IS NULL
                        OR (v.quota_id IS NOT NULL AND v.source_lsn IS NULL))             AS unplaceable,
               CASE
                   WHEN v.quota_id IS NULL THEN true
                   -- one database's changes: its WAL position orders them
                   WHEN o.source_lsn IS NOT NULL AND v.source_lsn IS NOT NULL THEN o.source_lsn > v.source_lsn
                   WHEN o.versionless THEN false
                   ELSE (o.version, o.is_delete) > (v.version, v.is_delete)
                        -- a repair of a row changed outside the pipeline, at the version it claims
                        OR (o.source = 'reconcile' AND (o.version, o.is_delete) = (v.version, v.is_delete))
               END                                                                        AS above_gate
        FROM owned o
        -- By primary key, per event (LIMIT 1 keeps the planner from flattening it into a join): it
        -- takes the input for 100 rows whatever its size, and hash-joined a 10-event batch to a seq
        -- scan of the whole gate table, most of the apply's time at a light load.
        LEFT JOIN LATERAL (
            SELECT g.quota_id, g.version, g.is_delete, g.source_lsn
            FROM inbox.quota_versions g
            WHERE g.quota_id = o.quota_id
            LIMIT 1
        ) v ON true
    ),
    checked AS (
        SELECT o.*,
               o.error IS NULL AND NOT o.unplaceable                                      AS valid,
               o.is_delete AND o.error IS NULL AND NOT o.unplaceable
                   AND EXISTS (SELECT 1 FROM public.call_off c WHERE c.quota_id = o.quota_id) AS blocked
        FROM placed o
    ),
    ranked AS (
        SELECT c.*,
               -- One quota's events in this batch are ranked by LSN when they all carry one (one
               -- database's changes, in commit order), else by version (feeds mixed for one quota).
               bool_and(c.source_lsn IS NOT NULL) FILTER (WHERE c.valid) OVER w                AS all_lsn,
               max(ARRAY[c.source_lsn, c.eff_version, c.is_delete::int])
                   FILTER (WHERE c.valid AND NOT c.blocked) OVER w                                AS best_by_lsn,
               max(ARRAY[c.eff_version, c.is_delete::int, coalesce(c.source_lsn, -1)])
                   FILTER (WHERE c.valid AND NOT c.blocked) OVER w                                AS best_by_version
        FROM checked c
        WINDOW w AS (PARTITION BY c.quota_id)
    ),
    -- every owned event, with what became of it: candidate (passes to the gate), dead_blocked, or
    -- neither (stale; or invalid, which outcomes reads from error)
    classified AS (
        SELECT r.*,
               r.valid AND NOT r.blocked AND r.above_gate AND k.mine = k.best                     AS candidate,
               r.valid AND r.blocked AND r.above_gate AND (k.best IS NULL OR k.mine > k.best)     AS dead_blocked
        FROM ranked r
        CROSS JOIN LATERAL (
            SELECT CASE WHEN r.all_lsn THEN ARRAY[r.source_lsn, r.eff_version, r.is_delete::int]
                        ELSE ARRAY[r.eff_version, r.is_delete::int, coalesce(r.source_lsn, -1)] END AS mine,
                   CASE WHEN r.all_lsn THEN r.best_by_lsn ELSE r.best_by_version END              AS best
        ) k
    ),
    gate AS (
        INSERT INTO inbox.quota_versions AS v (quota_id, version, is_delete, source_lsn, applied_at, source)
        SELECT c.quota_id, c.eff_version, c.is_delete, c.source_lsn, now(), c.source
        FROM classified c
        WHERE c.candidate
        ORDER BY c.quota_id  -- one lock order for every worker: no deadlocks between batches
        ON CONFLICT (quota_id) DO UPDATE
            SET version = excluded.version,
                is_delete = excluded.is_delete,
                source_lsn = excluded.source_lsn,
                previous_version = v.version,
                applied_at = excluded.applied_at,
                source = excluded.source
            -- the same order as above_gate, under the row lock
            WHERE CASE
                      WHEN excluded.source_lsn IS NOT NULL AND v.source_lsn IS NOT NULL
                          THEN excluded.source_lsn > v.source_lsn
                      ELSE (excluded.version, excluded.is_delete) > (v.version, v.is_delete)
                           OR (excluded.source = 'reconcile'
                               AND (excluded.version, excluded.is_delete) = (v.version, v.is_delete))
                  END
        RETURNING v.quota_id, v.version, v.is_delete, v.previous_version, v.applied_at
    ),
    upserted AS (
        INSERT INTO public.quota AS q (
            quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct,
            incoterm_code, metal_code, source_version, source_updated_at)
        SELECT c.quota_id, c.counterparty_id, c.direction, c.period_month, c.qty_t, c.tolerance_pct,
               c.incoterm_code, c.metal_code, c.version, c.source_updated_at
        FROM classified c
        JOIN gate g ON (g.quota_id, g.version, g.is_delete) = (c.quota_id, c.eff_version, c.is_delete)
        WHERE NOT c.is_delete AND c.candidate
        ORDER BY c.quota_id
        ON CONFLICT (quota_id) DO UPDATE
            SET counterparty_id = excluded.counterparty_id,
                direction = excluded.direction,
                period_month = excluded.period_month,
                qty_t = excluded.qty_t,
                tolerance_pct = excluded.tolerance_pct,
                incoterm_code = excluded.incoterm_code,
                metal_code = excluded.metal_code,
                source_version = excluded.source_version,
                source_updated_at = excluded.source_updated_at,
                updated_at = now()  -- created_at is deliberately absent: set once
        RETURNING q.*
    ),
    outcomes AS (
        SELECT o.quota_id, o.version, o.is_delete, o.attempts, o.exhausted, o.received_at, o.stored_applied_at,
               CASE
                   WHEN o.error IS NOT NULL OR o.unplaceable THEN 'dead'
                   WHEN o.candidate AND g.quota_id IS NOT NULL THEN 'applied'
                   WHEN o.dead_blocked THEN 'dead'
                   ELSE 'stale'
               END AS status,
               CASE
                   WHEN o.error IS NOT NULL THEN coalesce(o.error_class, 'invalid')
                   WHEN o.unplaceable THEN 'delete_unplaceable'
                   WHEN o.dead_blocked THEN 'delete_blocked'
               END AS error_class,
               CASE
                   WHEN o.error IS NOT NULL THEN o.error
                   WHEN o.unplaceable AND o.source_lsn IS NULL THEN
                       format('cannot place the delete of quota %s: Debezium sent only the key (REPLICA '
                              'IDENTITY DEFAULT), so it has no version, and it carries no source LSN to '
                              'order it by (a JDBC sink record needs lsn in ExtractNewRecordState''s '
                              'add.fields). Fix Titan: ALTER TABLE public.quota REPLICA IDENTITY FULL; then '
                              'check the quota against Titan and resolve or replay this dead letter',
                              o.quota_id)
                   WHEN o.unplaceable THEN
                       format('cannot place the delete of quota %s (source LSN %s): Debezium sent only the '
                              'key (REPLICA IDENTITY DEFAULT), so it has no version, and the version gate '
                              'holds version %s without a source LSN to order it by (applied from a feed '
                              'without one, or before migration 014). Fix Titan: ALTER TABLE public.quota '
                              'REPLICA IDENTITY FULL; then check the quota against Titan and resolve or '
                              'replay this dead letter',
                              o.quota_id, o.source_lsn, o.eff_version)
                   WHEN o.dead_blocked THEN
                       format('cannot delete quota %s at version %s: %s call-off(s) reference it',
                              o.quota_id, o.version,
                              (SELECT count(*) FROM public.call_off x WHERE x.quota_id = o.quota_id))
                   -- stale is an outcome, never a silence for a delete: say what it lost to
                   WHEN o.is_delete AND NOT o.dead_blocked AND NOT (o.candidate AND g.quota_id IS NOT NULL) THEN
                       format('stale: a later change of quota %s %s; this delete is at %s',
                              o.quota_id,
                              CASE WHEN o.above_gate THEN 'in the same batch took effect instead'
                                   ELSE 'was already applied' END,
                              CASE WHEN o.source_lsn IS NOT NULL THEN format('source LSN %s', o.source_lsn)
                                   ELSE format('version %s', o.version) END)
               END AS error
        FROM classified o
        LEFT JOIN gate g
            ON (g.quota_id, g.version, g.is_delete) = (o.quota_id, o.eff_version, o.is_delete) AND o.candidate
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = o.status,
            attempts = o.attempts + CASE WHEN o.exhausted THEN 0 ELSE 1 END,  -- this attempt, if made
            last_error = o.error,
            -- when it was applied, not when the transaction began: the apply at ingest runs in the
            -- transaction that stored the event (received_at, its start), and its latency is this
            applied_at = CASE WHEN o.status = 'applied' THEN clock_timestamp() END
        FROM outcomes o
        WHERE (e.quota_id, e.version, e.is_delete) = (o.quota_id, o.version, o.is_delete)
          -- a fresh row stored as applied at its first attempt already says so
          AND NOT (p_fresh AND o.status = 'applied' AND o.attempts = 0)
        RETURNING CASE WHEN e.status = 'applied'
                       THEN extract(epoch FROM e.applied_at - e.received_at)::float8 END AS latency
    ),
    buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT x.payload, o.error, o.attempts + CASE WHEN o.exhausted THEN 0 ELSE 1 END, o.quota_id, o.version,
               o.is_delete, o.error_class
        FROM outcomes o
        JOIN inbox.quota_events x ON (x.quota_id, x.version, x.is_delete) = (o.quota_id, o.version, o.is_delete)
        WHERE o.status = 'dead'
        RETURNING 1
    ),
    unclaimed AS (
        DELETE FROM inbox.claim_ledger l WHERE l.id = p_ledger RETURNING 1
    )
    -- every owned event has its outcome here, marked or (fresh and applied) left as stored
    SELECT count(*) FILTER (WHERE o.status = 'applied'),
           count(*) FILTER (WHERE o.status = 'stale'),
           count(*) FILTER (WHERE o.status = 'dead'),
           cardinality(p_quota_ids) - count(*),
           -- to_jsonb of the message's own types (migration 024): the same jsonb as jsonb_build_object of
           -- these keys and values at about a third of its CPU (their attributes are in jsonb's key order)
           (SELECT array_agg(to_jsonb(ROW(
                        CASE WHEN g.is_delete THEN 'delete' ELSE 'upsert' END,
                        CASE WHEN g.is_delete THEN NULL ELSE ROW(
                            u.qty_t, u.quota_id, u.direction, u.created_at, u.metal_code, u.updated_at,
                            u.period_month, u.incoterm_code, u.tolerance_pct, u.source_version,
                            u.counterparty_id, u.source_updated_at)::inbox.outbox_quota END,
                        g.version, g.quota_id, g.applied_at, g.previous_version)::inbox.outbox_message)
                    ORDER BY g.quota_id)
            FROM gate g LEFT JOIN upserted u USING (quota_id)),
           (SELECT array_agg(g.quota_id ORDER BY g.quota_id) FROM gate g),
           (SELECT array_agg(g.is_delete ORDER BY g.quota_id) FROM gate g),
           array_agg(extract(epoch FROM o.stored_applied_at - o.received_at)::float8)
               FILTER (WHERE p_fresh AND o.status = 'applied' AND o.attempts = 0)
               || (SELECT array_agg(m.latency) FROM marked m WHERE m.latency IS NOT NULL)
    INTO applied, stale, dead, not_owned, v_messages, v_quota_ids, v_is_delete, v_latencies
    FROM outcomes o;  -- marked, buried and unclaimed run too: a data-modifying CTE always does
    -- the batch's counts, once (migration 016: no counter trigger on the mark)
    PERFORM inbox.count_finished(applied, stale, v_latencies);

    -- The outbox (issue 13): one INSERT into the queue's table writes the rows that
    -- pgmq.send_batch('quota_changes', batch) wrote (msg_id from the table's identity, in this
    -- order; read_ct 0 and enqueued_at now() by default; vt one clock_timestamp() for the batch;
    -- headers NULL), without its four nested calls and the statement it built with format() and
    -- planned again on every call. pgmq's tables and triggers are the contract consumers read.
    v_vt := clock_timestamp();
    WITH deleted AS (
        -- = ANY(array): an index lookup per delete, whatever the planner guesses of unnest's size
        DELETE FROM public.quota q
        WHERE q.quota_id = ANY (ARRAY(SELECT c.quota_id
                                      FROM unnest(v_quota_ids, v_is_delete) AS c(quota_id, is_delete)
                                      WHERE c.is_delete))
        RETURNING q.quota_id
    )
    INSERT INTO pgmq.q_quota_changes (vt, message)
    SELECT v_vt, c.message
    FROM unnest(v_messages, v_quota_ids, v_is_delete) WITH ORDINALITY AS c(message, quota_id, is_delete, n)
    LEFT JOIN deleted d USING (quota_id)
    -- a delete of a quota that is not there changes nothing and publishes nothing
    WHERE NOT c.is_delete OR d.quota_id IS NOT NULL
    ORDER BY c.n;
    GET DIAGNOSTICS published = ROW_COUNT;

    RETURN NEXT;
END;
$$;
