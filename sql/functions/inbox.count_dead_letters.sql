-- -------------------------------------------------------------------------------------------------
-- Trigger function: inbox.count_dead_letters() RETURNS trigger
-- Trigger: quota_processing_errors_count, AFTER INSERT ON public.quota_processing_errors, FOR EACH STATEMENT
--
-- Reads:       the transition table new_rows
-- Writes:      inbox.metric_counters (through inbox.add_counters)
-- Called by:   every INSERT into public.quota_processing_errors
-- -------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION inbox.count_dead_letters() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg('dead'::text), array_agg(s.error_class), array_agg(s.n))
    FROM (SELECT n.error_class, count(*)::float8 AS n FROM new_rows n GROUP BY n.error_class) s;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER quota_processing_errors_count
    AFTER INSERT ON public.quota_processing_errors
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_dead_letters();
