-- -------------------------------------------------------------------------------------------------
-- Function: inbox.replay_dead_letters(p_ids uuid[], p_note text DEFAULT 'replayed')
--     RETURNS TABLE (id, quota_id, version, is_delete, outcome)
--
-- Reads:       public.quota_processing_errors
-- Writes:      inbox.quota_events, public.quota_processing_errors, inbox.metric_counters (requeued and
--              reinserted: ingested from 'replay', through inbox.add_counters); NOTIFY inbox_quota_events
--              (payload 'untyped': replayed rows are typed again by a worker)
-- Called by:   queries dlq_replay, dlq_replay_matching (`inbox dlq replay`, inbox/ops.py)
-- -------------------------------------------------------------------------------------------------
-- Put dead letters back through the inbox, in one transaction with marking them resolved:
--   inbox row dead         -> pending again: attempts 0, source 'replay', received now  (requeued)
--   inbox row gone          -> inserted again from the dead letter's event_data          (reinserted)
--   inbox row in any other state (already redelivered and in hand, or applied): left alone,
--   the dead letter is only resolved                                                     (in_inbox)
-- The event then goes through claim and apply like any other, so the version gate still decides:
-- if a newer version was applied meanwhile, the replayed event ends as stale.
-- A dead letter already resolved (also by a concurrent replay: FOR UPDATE, then re-checked) is skipped.
CREATE OR REPLACE FUNCTION inbox.replay_dead_letters(p_ids uuid[], p_note text DEFAULT 'replayed')
RETURNS TABLE (id uuid, quota_id uuid, version bigint, is_delete boolean, outcome text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT d.id, d.quota_id, d.version, d.is_delete, d.event_data
        FROM public.quota_processing_errors d
        WHERE d.id = ANY (p_ids) AND d.resolved_at IS NULL
        ORDER BY d.quota_id, d.version, d.is_delete
        FOR UPDATE
    ),
    queued AS (
        INSERT INTO inbox.quota_events AS e (quota_id, version, is_delete, payload, source)
        SELECT p.quota_id, p.version, p.is_delete, p.event_data, 'replay'
        FROM picked p
        ORDER BY p.quota_id, p.version, p.is_delete
        ON CONFLICT (quota_id, version, is_delete) DO UPDATE
            SET status = 'pending', attempts = 0, source = 'replay', received_at = now(),
                next_attempt_at = now(), last_error = NULL, applied_at = NULL,
                typed = false  -- typed again from the payload by the worker (migration 015)
            WHERE e.status = 'dead'
        -- xmax = 0: the row was inserted by this statement, not updated
        RETURNING e.quota_id, e.version, e.is_delete, (e.xmax = 0) AS inserted
    ),
    resolved AS (
        UPDATE public.quota_processing_errors d
        SET resolved_at = now(), resolution_note = p_note
        FROM picked p
        WHERE d.id = p.id
        RETURNING d.id
    ),
    -- requeued (dead -> pending) and reinserted: ingested, from 'replay' (no trigger counts the
    -- inbox's inserts since migration 018)
    counted AS (
        SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['replay'], ARRAY[count(*)::float8])
        FROM queued q
    )
    SELECT p.id, p.quota_id, p.version, p.is_delete,
           CASE WHEN q.inserted THEN 'reinserted' WHEN q.quota_id IS NOT NULL THEN 'requeued'
                ELSE 'in_inbox' END
    FROM picked p
    JOIN resolved r USING (id)
    CROSS JOIN counted
    LEFT JOIN queued q USING (quota_id, version, is_delete)
    ORDER BY p.quota_id, p.version;

    IF FOUND THEN
        PERFORM pg_notify('inbox_quota_events', 'untyped');  -- wake idle workers to type them
    END IF;
END;
$$;
