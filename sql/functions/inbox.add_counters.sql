-- -------------------------------------------------------------------------------------------------
-- Function: inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
--     RETURNS void
--
-- Reads:       -
-- Writes:      inbox.metric_counters
-- Called by:   the counter triggers; query ingest_events (duplicates)
-- Privileges:  SECURITY DEFINER: callable by inbox_ingest and inbox_worker, who cannot write the table (007)
-- -------------------------------------------------------------------------------------------------
-- Add (metric, label, value) deltas to this backend's rows of the current minute.
CREATE OR REPLACE FUNCTION inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO inbox.metric_counters AS c (metric, label, minute, backend, value)
    SELECT d.metric, d.label, date_trunc('minute', now()), pg_backend_pid(), sum(d.value)
    FROM unnest(p_metrics, p_labels, p_values) AS d(metric, label, value)
    WHERE d.value <> 0
    GROUP BY d.metric, d.label
    ORDER BY d.metric, d.label
    ON CONFLICT (metric, label, minute, backend) DO UPDATE SET value = c.value + excluded.value;
$$;

REVOKE EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[])
    TO inbox_ingest, inbox_worker;
