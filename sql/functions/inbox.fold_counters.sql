-- -------------------------------------------------------------------------------------------------
-- Function: inbox.fold_counters(p_keep interval DEFAULT '1 day') RETURNS bigint
--
-- Reads:       inbox.metric_counters
-- Writes:      inbox.metric_counters
-- Called by:   query fold_counters (inbox/jobs.py, scheduled)
-- -------------------------------------------------------------------------------------------------
-- Merge per-backend rows of finished minutes into backend 0, and minutes older than p_keep into
-- '-infinity'. Totals never change; the table stays about (metrics x minutes kept) rows.
-- One folder at a time (advisory transaction lock); the others return at once.
CREATE OR REPLACE FUNCTION inbox.fold_counters(p_keep interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7215830113390202) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM inbox.metric_counters c
        WHERE c.minute > '-infinity'
          AND (c.minute < now() - p_keep
               -- two minutes back: no live transaction still writes there (statement timeouts)
               OR (c.backend <> 0 AND c.minute < date_trunc('minute', now()) - interval '2 minutes'))
        RETURNING c.*
    ),
    merged AS (
        INSERT INTO inbox.metric_counters AS c (metric, label, minute, backend, value)
        SELECT g.metric, g.label,
               CASE WHEN g.minute < now() - p_keep THEN '-infinity'::timestamptz ELSE g.minute END,
               0, sum(g.value)
        FROM gone g
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (metric, label, minute, backend) DO UPDATE SET value = c.value + excluded.value
        RETURNING 1
    )
    SELECT count(*) INTO v_folded FROM gone;
    RETURN v_folded;
END;
$$;
