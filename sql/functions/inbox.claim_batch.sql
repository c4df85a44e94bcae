-- -------------------------------------------------------------------------------------------------
-- Function: inbox.claim_batch(p_limit integer)
--     RETURNS TABLE (quota_ids uuid[], versions bigint[], is_delete boolean[])
--
-- Reads:       inbox.quota_events (due index)
-- Writes:      - (row locks only)
-- Called by:   query claim_batch (inbox/apply/worker.py), inside the apply transaction
-- -------------------------------------------------------------------------------------------------
-- Lock up to p_limit due, typed events for the calling transaction and return their keys as three
-- parallel arrays. Nothing is written: the claim lasts as long as the transaction, and SKIP LOCKED
-- gives concurrent claimers disjoint rows. The worker records the keys in inbox.claim_ledger from a
-- second session before it calls inbox.process_batch: the attempt a dying worker spends
-- (inbox.reap_abandoned_claims). Untyped rows are typed by the worker first (query untyped_events).
-- The oldest due rows come from an ordered scan of the partial index quota_events_due_idx that stops
-- after p_limit rows. Without bitmap scans: when the statistics lag behind a growing backlog (they
-- do, right after a burst) the planner would otherwise read every pending row into a bitmap and
-- sort them all to keep p_limit (tests/integration/test_query_plans.py).
CREATE OR REPLACE FUNCTION inbox.claim_batch(p_limit integer)
RETURNS TABLE (quota_ids uuid[], versions bigint[], is_delete boolean[])
LANGUAGE sql
SET enable_bitmapscan = off
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT e.quota_id, e.version, e.is_delete
        FROM inbox.quota_events e
        WHERE e.status = 'pending' AND e.next_attempt_at <= now() AND e.typed
        ORDER BY e.next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT coalesce(array_agg(d.quota_id), '{}'), coalesce(array_agg(d.version), '{}'),
           coalesce(array_agg(d.is_delete), '{}')
    FROM due d;
$$;
