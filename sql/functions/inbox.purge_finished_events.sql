-- -------------------------------------------------------------------------------------------------
-- Function: inbox.purge_finished_events(p_older_than interval, p_limit integer) RETURNS bigint
--
-- Reads:       inbox.quota_events, public.quota_processing_errors
-- Writes:      inbox.quota_events (DELETE)
-- Called by:   query purge_finished_events (inbox/jobs.py, retention)
-- Privileges:  SECURITY DEFINER, executable by inbox_worker: the worker may not DELETE from the inbox
--              itself (migration 012), so that it cannot delete a pending row; this function deletes
--              only finished ones
-- -------------------------------------------------------------------------------------------------
-- Delete up to p_limit finished inbox rows received more than p_older_than ago. SKIP LOCKED:
-- concurrent purgers take disjoint rows and never wait; each call is one short transaction.
-- A dead row stays while its dead letter is open: redelivered, it would die again and collide
-- with the open dead letter (one open dead letter per event). Deleting finished rows is safe for
-- correctness: the version gate (inbox.quota_versions) turns a redelivery of a purged event into
-- a stale no-op.
--
-- The rows it picked are deleted by their address (ctid), since migration 010: they are locked
-- (FOR UPDATE) by the same statement, so their addresses cannot change under it, and a TID scan
-- reads just those rows. The first version (006) joined the picked keys back to the inbox, and the
-- planner made that a hash join over a seq scan of the whole inbox: in the soak (2,000,000 events,
-- retention compressed to 20 s) 400-600 ms per batch of 5,000, half a core, growing with the table
-- (README, Performance).
CREATE OR REPLACE FUNCTION inbox.purge_finished_events(p_older_than interval, p_limit integer)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH doomed AS (
        SELECT e.ctid AS address
        FROM inbox.quota_events e
        WHERE e.received_at < now() - p_older_than
          AND e.status IN ('applied', 'stale', 'dead')
          AND NOT (e.status = 'dead' AND EXISTS (
                  SELECT 1 FROM public.quota_processing_errors d
                  WHERE d.resolved_at IS NULL
                    AND (d.quota_id, d.version, d.is_delete) = (e.quota_id, e.version, e.is_delete)))
        ORDER BY e.received_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    gone AS (
        DELETE FROM inbox.quota_events e
        WHERE e.ctid = ANY (ARRAY(SELECT d.address FROM doomed d))
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

REVOKE EXECUTE ON FUNCTION inbox.purge_finished_events(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.purge_finished_events(interval, integer) TO inbox_worker;
