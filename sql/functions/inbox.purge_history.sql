-- -------------------------------------------------------------------------------------------------
-- Function: inbox.purge_history(p_older_than interval, p_gates_older_than interval, p_limit integer)
--     RETURNS TABLE (rejects bigint, dead_letters bigint, gates bigint)
--
-- Reads:       inbox.rejects, public.quota_processing_errors, inbox.quota_versions, public.quota,
--              inbox.quota_events
-- Writes:      the same three (DELETE)
-- Called by:   query purge_history (inbox/jobs.py, retention)
-- Privileges:  SECURITY DEFINER, executable by inbox_worker: the worker may neither delete dead
--              letters nor touch the rejects; this function deletes only what is safe to forget
-- -------------------------------------------------------------------------------------------------
-- Retention of the history beside the inbox, up to p_limit rows of each kind per call (SKIP LOCKED,
-- oldest first):
--   rejects        Kafka messages that could not be keyed, received more than p_older_than ago;
--   dead letters   resolved more than p_older_than ago (an open one is never deleted);
--   gate rows      only when p_gates_older_than is not NULL: the gate of a deleted quota, applied
--                  more than p_gates_older_than ago, while the quota has no row, no event in hand
--                  (pending or processing) and no open dead letter. A gate row of a quota that
--                  exists is never deleted. Forgetting a delete's gate lets an event older than the
--                  delete apply again if it ever arrives: set p_gates_older_than well beyond the
--                  longest a source may redeliver (Kafka topic retention, a replayed backup) plus
--                  INBOX_RETENTION (README, Retention).
CREATE OR REPLACE FUNCTION inbox.purge_history(p_older_than interval, p_gates_older_than interval,
                                               p_limit integer)
RETURNS TABLE (rejects bigint, dead_letters bigint, gates bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH old_rejects AS (
        SELECT r.ctid AS address
        FROM inbox.rejects r
        WHERE r.received_at < now() - p_older_than
        ORDER BY r.received_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    gone_rejects AS (
        DELETE FROM inbox.rejects r
        WHERE r.ctid = ANY (ARRAY(SELECT o.address FROM old_rejects o))
        RETURNING 1
    ),
    old_letters AS (
        SELECT d.id
        FROM public.quota_processing_errors d
        WHERE d.resolved_at IS NOT NULL AND d.resolved_at < now() - p_older_than
        ORDER BY d.resolved_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    gone_letters AS (
        DELETE FROM public.quota_processing_errors d
        WHERE d.id = ANY (ARRAY(SELECT o.id FROM old_letters o))
        RETURNING 1
    ),
    old_gates AS (
        SELECT g.quota_id
        FROM inbox.quota_versions g
        WHERE p_gates_older_than IS NOT NULL
          AND g.is_delete AND g.applied_at < now() - p_gates_older_than
          AND NOT EXISTS (SELECT 1 FROM public.quota q WHERE q.quota_id = g.quota_id)
          AND NOT EXISTS (SELECT 1 FROM inbox.quota_events e
                          WHERE e.quota_id = g.quota_id AND e.status IN ('pending', 'processing'))
          AND NOT EXISTS (SELECT 1 FROM public.quota_processing_errors d
                          WHERE d.quota_id = g.quota_id AND d.resolved_at IS NULL)
        ORDER BY g.applied_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    gone_gates AS (
        DELETE FROM inbox.quota_versions g
        WHERE g.quota_id = ANY (ARRAY(SELECT o.quota_id FROM old_gates o)) AND g.is_delete
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone_rejects), (SELECT count(*) FROM gone_letters),
           (SELECT count(*) FROM gone_gates)
$$;

REVOKE EXECUTE ON FUNCTION inbox.purge_history(interval, interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.purge_history(interval, interval, integer) TO inbox_worker;
