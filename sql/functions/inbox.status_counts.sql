-- -------------------------------------------------------------------------------------------------
-- Function: inbox.status_counts(p_count_below bigint DEFAULT 8 MiB)
--     RETURNS TABLE (status, events, exact)
--
-- Reads:       inbox.quota_events (partial indexes; EXPLAIN estimates on a big table), inbox.claim_ledger
-- Writes:      -
-- Called by:   inbox.v_status
-- -------------------------------------------------------------------------------------------------
-- Events by state. pending is counted exactly through its partial index; processing is what the
-- claim ledger says workers hold (migration 015: a claimed event stays 'pending' in the table until
-- its batch commits), and is taken out of pending.
-- The finished states (applied, stale, dead) grow until retention removes them: while the table
-- is small they are counted, beyond that they are the planner's estimate (EXPLAIN's row count:
-- the table's current size times the status frequencies ANALYZE saw), like count_estimate on the
-- PostgreSQL wiki. p_count_below: the table size under which counting is cheap.
CREATE OR REPLACE FUNCTION inbox.status_counts(p_count_below bigint DEFAULT 8 * 1024 * 1024)
RETURNS TABLE (status text, events bigint, exact boolean)
LANGUAGE plpgsql VOLATILE  -- VOLATILE: PostgreSQL runs EXPLAIN only in volatile functions
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status text;
    v_plan   jsonb;
BEGIN
    RETURN QUERY
    WITH held AS (
        SELECT coalesce(sum(cardinality(l.quota_ids)), 0)::bigint AS n FROM inbox.claim_ledger l
    ),
    pending AS (
        SELECT count(*) AS n FROM inbox.quota_events e WHERE e.status = 'pending'
    )
    SELECT 'pending'::text, greatest(p.n - h.n, 0), true FROM pending p, held h
    UNION ALL
    SELECT 'processing'::text, least(h.n, p.n), true FROM pending p, held h;

    IF pg_relation_size('inbox.quota_events') < p_count_below THEN
        RETURN QUERY
        SELECT s.status, count(e.status), true
        FROM unnest(ARRAY['applied', 'stale', 'dead']) WITH ORDINALITY AS s(status, n)
        LEFT JOIN inbox.quota_events e ON e.status = s.status
        GROUP BY s.status, s.n
        ORDER BY s.n;
        RETURN;
    END IF;

    FOREACH v_status IN ARRAY ARRAY['applied', 'stale', 'dead'] LOOP
        EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM inbox.quota_events WHERE status = %L', v_status)
            INTO v_plan;
        status := v_status;
        events := (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::bigint;
        exact := false;
        RETURN NEXT;
    END LOOP;
END;
$$;
