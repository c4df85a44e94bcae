-- -------------------------------------------------------------------------------------------------
-- Function: inbox.release_events(p_owner text, p_keys jsonb, p_error text, p_max_attempts integer,
--                            p_backoff_base interval, p_backoff_cap interval) RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.quota_events
-- Writes:      inbox.quota_events, public.quota_processing_errors
-- Called by:   query release_events (inbox/apply/worker.py); inbox.reap_expired_leases
-- -------------------------------------------------------------------------------------------------
-- Give events back after a transient failure: pending again after an exponential backoff with
-- jitter, or dead ('retries_exhausted') once p_max_attempts claims have been spent.
-- p_owner NULL releases expired leases, whoever held them (the lease reaper).
CREATE OR REPLACE FUNCTION inbox.release_events(
    p_owner        text,
    p_keys         jsonb,
    p_error        text,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH keys AS (
        SELECT * FROM jsonb_to_recordset(p_keys) AS k(quota_id uuid, version bigint, is_delete boolean)
    ),
    held AS (
        SELECT e.quota_id, e.version, e.is_delete, e.payload, e.attempts,
               e.attempts >= p_max_attempts AS exhausted
        FROM keys k
        JOIN inbox.quota_events e USING (quota_id, version, is_delete)
        WHERE e.status = 'processing'
          AND (e.lease_owner = p_owner OR (p_owner IS NULL AND e.lease_expires_at < now()))
        FOR UPDATE OF e
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = CASE WHEN h.exhausted THEN 'dead' ELSE 'pending' END,
            lease_owner = NULL,
            lease_expires_at = NULL,
            last_error = p_error,
            -- equal jitter: half the exponential delay fixed, half random
            next_attempt_at = now() + least(p_backoff_cap, p_backoff_base * power(2, e.attempts - 1))
                                      * (0.5 + random() / 2)
        FROM held h
        WHERE (e.quota_id, e.version, e.is_delete) = (h.quota_id, h.version, h.is_delete)
        RETURNING e.status
    ),
    buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT h.payload, format('gave up after %s attempts: %s', h.attempts, p_error), h.attempts,
               h.quota_id, h.version, h.is_delete, 'retries_exhausted'
        FROM held h
        WHERE h.exhausted
        RETURNING 1
    )
    SELECT count(*) FILTER (WHERE m.status = 'pending'), count(*) FILTER (WHERE m.status = 'dead')
    FROM marked m;
$$;
