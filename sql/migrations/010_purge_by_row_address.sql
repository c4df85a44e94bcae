-- purge_finished_events, version 2: deletes the rows it picked by their address (ctid).
--
-- Version 1 (006) joined the picked keys back to the inbox, and the planner made that a hash join
-- over a seq scan of the whole inbox: every retention batch of 5,000 rows read the entire table,
-- dead rows included. In the soak (2,000,000 events, retention compressed to 20 s) that was
-- 400-600 ms per batch, half a core, growing with the table (README, Performance). The picked rows
-- are locked (FOR UPDATE) by the same statement, so their addresses cannot change under it; a TID
-- scan reads just those rows.
CREATE OR REPLACE FUNCTION inbox.purge_finished_events(p_older_than interval, p_limit integer)
RETURNS bigint
LANGUAGE sql AS $$
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
