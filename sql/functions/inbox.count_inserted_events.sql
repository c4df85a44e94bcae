-- -------------------------------------------------------------------------------------------------
-- Trigger function: inbox.count_inserted_events() RETURNS trigger
-- Trigger: quota_events_count_inserted, AFTER INSERT ON inbox.quota_events, FOR EACH STATEMENT
--
-- Reads:       the transition table new_rows
-- Writes:      inbox.metric_counters (through inbox.add_counters)
-- Called by:   every INSERT into inbox.quota_events
-- -------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION inbox.count_inserted_events() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg('ingested'::text), array_agg(s.source), array_agg(s.n))
    FROM (SELECT n.source, count(*)::float8 AS n FROM new_rows n GROUP BY n.source) s;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER quota_events_count_inserted
    AFTER INSERT ON inbox.quota_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_inserted_events();
