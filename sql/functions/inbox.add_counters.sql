-- -------------------------------------------------------------------------------------------------
-- Function: inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
--     RETURNS void
--
-- Reads:       -
-- Writes:      inbox.metric_counters
-- Called by:   inbox.ingest_typed_events (ingested, duplicates), inbox.replay_dead_letters, query
--              reconcile_file_repairs (ingested), inbox.count_finished, inbox.release_claim, the
--              dead-letter trigger (inbox.count_dead_letters)
-- Privileges:  SECURITY DEFINER: the dead-letter trigger runs as whoever filed the dead letter
--              (inbox_worker among others); not callable by inbox_ingest (migration 012), whose counts
--              come from inbox.ingest_typed_events (the store of inbox.ingest_events too, since 019)
-- -------------------------------------------------------------------------------------------------
-- Add (metric, label, value) deltas to this backend's rows of the current minute. A counter only
-- grows: a delta that is negative, NaN or infinite is refused (it would make /metrics and v_lag
-- lie or fail), as are arrays of different lengths.
CREATE OR REPLACE FUNCTION inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF cardinality(p_metrics) <> cardinality(p_labels) OR cardinality(p_metrics) <> cardinality(p_values)
       OR EXISTS (SELECT 1 FROM unnest(p_values) AS v(value)
                  WHERE v.value IS NULL OR NOT (v.value >= 0 AND v.value < 'Infinity'::float8)) THEN
        RAISE EXCEPTION 'inbox.add_counters: a counter delta must be a finite number >= 0, one per metric and label'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO inbox.metric_counters AS c (metric, label, minute, backend, value)
    SELECT d.metric, d.label, date_trunc('minute', now()), pg_backend_pid(), sum(d.value)
    FROM unnest(p_metrics, p_labels, p_values) AS d(metric, label, value)
    WHERE d.value <> 0
    GROUP BY d.metric, d.label
    ORDER BY d.metric, d.label
    ON CONFLICT (metric, label, minute, backend) DO UPDATE SET value = c.value + excluded.value;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[]) TO inbox_worker;
