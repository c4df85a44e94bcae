-- -------------------------------------------------------------------------------------------------
-- Function: inbox.release_claim(p_ledger bigint, p_quota_ids uuid[], p_versions bigint[],
--                               p_is_delete boolean[], p_error text, p_max_attempts integer,
--                               p_backoff_base interval, p_backoff_cap interval)
--     RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.claim_ledger, inbox.quota_events
-- Writes:      inbox.claim_ledger (deletes p_ledger), inbox.quota_events, public.quota_processing_errors,
--              inbox.metric_counters ('retried', through inbox.add_counters)
-- Called by:   query release_claim (inbox/apply/worker.py); inbox.reap_abandoned_claims
-- -------------------------------------------------------------------------------------------------
-- Spend one attempt on each of these events, after a transient failure or for a worker that died
-- with them. One still pending is pending again after an exponential backoff with jitter, or dead
-- ('retries_exhausted') once p_max_attempts attempts have been spent.
-- With p_ledger: a claim that failed (its apply rolled back, or its worker died). Only if that claim
-- ledger row is still there (it is deleted here: a worker and the reaper racing for the same claim
-- spend its attempt once), and then on every event of it: one a living worker has taken meanwhile
-- is waited for (it holds it for one batch at most), and one another worker has finished keeps its
-- outcome with the attempt counted. So every claim that failed holding an event has cost it exactly
-- one attempt, whoever took the event next: an event that kills every worker that takes it ends as
-- a dead letter.
-- Without p_ledger (a part of a bisected batch, claimed by its own statement): the events still
-- pending that no other transaction holds.
CREATE OR REPLACE FUNCTION inbox.release_claim(
    p_ledger       bigint,
    p_quota_ids    uuid[],
    p_versions     bigint[],
    p_is_delete    boolean[],
    p_error        text,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_ledger IS NOT NULL THEN
        DELETE FROM inbox.claim_ledger l WHERE l.id = p_ledger;
        IF NOT FOUND THEN  -- released or reaped already: its attempt is spent
            retried := 0;
            dead := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        -- every event of the claim, waiting for a living worker that holds one
        PERFORM 1
        FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
        CROSS JOIN LATERAL (
            SELECT 1
            FROM inbox.quota_events e
            WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
            ORDER BY e.quota_id, e.version, e.is_delete
            FOR UPDATE
        ) x;
    END IF;

    RETURN QUERY
    WITH held AS (
        SELECT x.*, x.status = 'pending' AND x.attempts + 1 >= p_max_attempts AS exhausted
        FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
        CROSS JOIN LATERAL (
            SELECT e.quota_id, e.version, e.is_delete, e.status, e.attempts
            FROM inbox.quota_events e
            WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
              AND (e.status = 'pending' OR p_ledger IS NOT NULL)
            FOR UPDATE SKIP LOCKED  -- with p_ledger, this transaction holds them all already
        ) x
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
END;
$$;
