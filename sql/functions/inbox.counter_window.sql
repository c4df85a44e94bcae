-- -------------------------------------------------------------------------------------------------
-- Function: inbox.counter_window(p_metric text, p_window interval) RETURNS double precision
--
-- Reads:       inbox.metric_counters
-- Writes:      -
-- Called by:   inbox.v_lag
-- -------------------------------------------------------------------------------------------------
-- How many of p_metric (all labels) were counted in the last p_window: minute rows weighted by
-- how much of their minute lies inside the window.
CREATE OR REPLACE FUNCTION inbox.counter_window(p_metric text, p_window interval)
RETURNS double precision
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(c.value * extract(epoch FROM
                        least(c.minute + interval '1 minute', now()) - greatest(c.minute, now() - p_window))
                        / extract(epoch FROM least(c.minute + interval '1 minute', now()) - c.minute)), 0)
    FROM inbox.metric_counters c
    WHERE c.metric = p_metric
      AND c.minute > now() - p_window - interval '1 minute'
      AND c.minute < now()
$$;
