-- -------------------------------------------------------------------------------------------------
-- Function: inbox.release_claim(p_ledger bigint, p_quota_ids uuid[], p_versions bigint[],
--                               p_is_delete boolean[], p_error text, p_max_attempts integer,
--                               p_backoff_base interval, p_backoff_cap interval,
--                               p_spend_finished boolean DEFAULT false)
--     RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.claim_ledger, inbox.quota_events
-- Writes:      inbox.claim_ledger (deletes p_ledger), inbox.quota_events, public.quota_processing_errors,
--              inbox.metric_counters ('retried', through inbox.add_counters)
-- Called by:   query release_claim (inbox/apply/worker.py); inbox.reap_abandoned_claims
-- -------------------------------------------------------------------------------------------------
-- Spend one attempt on each of these events, after a transient failure or for a worker that died
-- with them. One still pending is pending again after an exponential backoff with jitter, or dead
-- ('retries_exhausted') once p_max_attempts attempts have been spent. With p_spend_finished (the
-- reaper), one that another worker has finished meanwhile keeps its outcome and has the dead
-- worker's attempt counted too: every claim that died holding an event has cost it one attempt.
-- With p_ledger, only if that claim ledger row is still there (it is deleted here): a worker and the
-- reaper racing for the same failed batch spend its attempt once.
-- Events locked by another transaction (a worker applying them) are left to it; the reaper calls
-- this only once none of a claim's events is locked.
CREATE OR REPLACE FUNCTION inbox.release_claim(
    p_ledger         bigint,
    p_quota_ids      uuid[],
    p_versions       bigint[],
    p_is_delete      boolean[],
    p_error          text,
    p_max_attempts   integer,
    p_backoff_base   interval,
    p_backoff_cap    interval,
    p_spend_finished boolean DEFAULT false
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH unclaimed AS (
        DELETE FROM inbox.claim_ledger l WHERE l.id = p_ledger RETURNING l.id
    ),
    held AS (
        SELECT x.*, x.status = 'pending' AND x.attempts + 1 >= p_max_attempts AS exhausted
        FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
        CROSS JOIN LATERAL (
            SELECT e.quota_id, e.version, e.is_delete, e.status, e.attempts
            FROM inbox.quota_events e
            WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
              AND (e.status = 'pending' OR p_spend_finished)
            FOR UPDATE SKIP LOCKED
        ) x
        WHERE p_ledger IS NULL OR EXISTS (SELECT 1 FROM unclaimed)
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = CASE WHEN h.exhausted THEN 'dead' ELSE e.status END,
            attempts = e.attempts + 1,
            last_error = CASE WHEN h.status = 'pending' THEN p_error ELSE e.last_error END,
            -- equal jitter: half the exponential delay fixed, half random
            next_attempt_at = CASE WHEN h.status = 'pending'
                                   THEN now() + least(p_backoff_cap, p_backoff_base * power(2, e.attempts))
                                                * (0.5 + random() / 2)
                                   ELSE e.next_attempt_at END
        FROM held h
        WHERE (e.quota_id, e.version, e.is_delete) = (h.quota_id, h.version, h.is_delete)
        RETURNING e.status, h.exhausted
    ),
    buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT e.payload, format('gave up after %s attempts: %s', h.attempts + 1, p_error), h.attempts + 1,
               h.quota_id, h.version, h.is_delete, 'retries_exhausted'
        FROM held h
        JOIN inbox.quota_events e ON (e.quota_id, e.version, e.is_delete) = (h.quota_id, h.version, h.is_delete)
        WHERE h.exhausted
        RETURNING 1
    )
    -- A retry leaves the status as it was: the status counter trigger cannot see it, so it is counted here.
    SELECT r.retried, r.dead
    FROM (SELECT count(*) FILTER (WHERE NOT m.exhausted) AS retried,
                 count(*) FILTER (WHERE m.exhausted)     AS dead
          FROM marked m) r,
         LATERAL inbox.add_counters(ARRAY['retried'], ARRAY[''], ARRAY[r.retried::float8]) c;
$$;
