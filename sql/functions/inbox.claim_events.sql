-- -------------------------------------------------------------------------------------------------
-- Function: inbox.claim_events(p_worker text, p_limit integer, p_lease interval)
--     RETURNS TABLE (quota_id, version, is_delete, attempts)
--
-- Reads:       inbox.quota_events (due index)
-- Writes:      inbox.quota_events (status, attempts, lease)
-- Called by:   query claim_events (inbox/apply/worker.py)
-- -------------------------------------------------------------------------------------------------
-- Claim up to p_limit due events for p_worker. SKIP LOCKED: concurrent claimers get disjoint rows.
-- Keys only, never payloads (since migration 012): printing a payload can cost far more than it
-- stores (1e131071 is 8 bytes in jsonb and 131,072 digits as text), and a claim that failed while
-- printing rolled back, so attempts never rose and every worker retried the same rows forever. This
-- statement cannot fail for what an event holds; once it commits, each claimed row has spent an
-- attempt, and the worker reads the payloads with the query claimed_payloads (sql/queries.sql).
-- The oldest due rows come from an ordered scan of the partial index quota_events_due_idx that stops
-- after p_limit rows. Without bitmap scans: when the statistics lag behind a growing backlog (they
-- do, right after a burst) the planner would otherwise read every pending row into a bitmap and
-- sort them all to keep p_limit (tests/integration/test_query_plans.py).
CREATE OR REPLACE FUNCTION inbox.claim_events(p_worker text, p_limit integer, p_lease interval)
RETURNS TABLE (quota_id uuid, version bigint, is_delete boolean, attempts integer)
LANGUAGE sql
SET enable_bitmapscan = off
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT e.quota_id, e.version, e.is_delete
        FROM inbox.quota_events e
        WHERE e.status = 'pending' AND e.next_attempt_at <= now()
        ORDER BY e.next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE inbox.quota_events e
    SET status = 'processing',
        attempts = e.attempts + 1,
        lease_owner = p_worker,
        lease_expires_at = now() + p_lease
    FROM due
    WHERE (e.quota_id, e.version, e.is_delete) = (due.quota_id, due.version, due.is_delete)
    RETURNING e.quota_id, e.version, e.is_delete, e.attempts;
$$;
