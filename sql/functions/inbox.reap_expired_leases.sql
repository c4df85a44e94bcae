-- -------------------------------------------------------------------------------------------------
-- Function: inbox.reap_expired_leases(p_limit integer, p_max_attempts integer, p_backoff_base interval,
--                                 p_backoff_cap interval) RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.quota_events (leased index)
-- Writes:      through inbox.release_events
-- Called by:   query reap_expired_leases (inbox/apply/worker.py)
-- -------------------------------------------------------------------------------------------------
-- Make rows of dead workers claimable again: expired leases go back through release_events.
CREATE OR REPLACE FUNCTION inbox.reap_expired_leases(
    p_limit        integer,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.retried, r.dead
    FROM (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'quota_id', e.quota_id, 'version', e.version, 'is_delete', e.is_delete)), '[]') AS keys
        FROM (
            SELECT quota_id, version, is_delete
            FROM inbox.quota_events
            WHERE status = 'processing' AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) e
    ) expired,
    LATERAL inbox.release_events(NULL, expired.keys, 'lease expired before the worker finished',
                                 p_max_attempts, p_backoff_base, p_backoff_cap) r;
$$;
