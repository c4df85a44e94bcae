-- -------------------------------------------------------------------------------------------------
-- Function: inbox.bury_retries_exhausted(p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[],
--                                        p_attempts integer[], p_error text) RETURNS bigint
--
-- Reads:       inbox.quota_events (the payloads of these events)
-- Writes:      public.quota_processing_errors (one 'retries_exhausted' dead letter per event)
-- Called by:   inbox.release_claim, inbox.reap_abandoned_claims (after they marked the events dead)
-- Privileges:  the caller's own (as inbox.release_claim's): a role that may insert dead letters
-- -------------------------------------------------------------------------------------------------
-- The dead letter of an event whose attempts are used up, in one place: 'gave up after N attempts:
-- <the last failure>', its retry count N (p_attempts, parallel to the keys). Returns how many dead
-- letters were written. process_batch writes its own (the hot path: one statement, no call).
CREATE OR REPLACE FUNCTION inbox.bury_retries_exhausted(
    p_quota_ids uuid[],
    p_versions  bigint[],
    p_is_delete boolean[],
    p_attempts  integer[],
    p_error     text
) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT e.payload, format('gave up after %s attempts: %s', k.attempts, p_error), k.attempts,
               k.quota_id, k.version, k.is_delete, 'retries_exhausted'
        FROM unnest(p_quota_ids, p_versions, p_is_delete, p_attempts) AS k(quota_id, version, is_delete, attempts)
        JOIN inbox.quota_events e ON (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
        RETURNING 1
    )
    SELECT count(*) FROM buried;
$$;

