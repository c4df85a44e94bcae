-- -------------------------------------------------------------------------------------------------
-- Function: inbox.apply_latency_buckets() RETURNS double precision[]
--
-- Reads:       -
-- Writes:      -
-- Called by:   inbox.count_finished; query metrics_counters (inbox/metrics.py)
-- -------------------------------------------------------------------------------------------------
-- Upper bounds (seconds) of inbox_apply_latency_seconds; the Python exposition reads them here.
CREATE OR REPLACE FUNCTION inbox.apply_latency_buckets() RETURNS double precision[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600]::float8[]
$$;
