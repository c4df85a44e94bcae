-- -------------------------------------------------------------------------------------------------
-- Trigger function: inbox.count_status_changes() RETURNS trigger
-- Trigger: quota_events_count_status_changes, AFTER UPDATE ON inbox.quota_events, FOR EACH STATEMENT
--
-- Reads:       the transition tables old_rows and new_rows; inbox.apply_latency_buckets()
-- Writes:      inbox.metric_counters (through inbox.add_counters)
-- Called by:   every UPDATE of inbox.quota_events
-- -------------------------------------------------------------------------------------------------
-- Status changes, paired old with new: applied, stale, retried (processing -> pending: a transient
-- failure or an expired lease), replayed (dead -> pending, counted as ingested from 'replay'),
-- and the received-to-applied latency of each applied event. Aggregated before anything per row
-- gets expensive: a 500-row apply costs well under a millisecond here.
CREATE OR REPLACE FUNCTION inbox.count_status_changes() RETURNS trigger
LANGUAGE plpgsql
-- The join of the transition tables is planned once per session, for the size of the first batch:
-- a nested loop kept from a small first batch cost 250,000 comparisons per 500-row batch after it
-- (migration 009, tests/integration/test_query_plans.py). The join stays: only the old row tells a
-- status change from an update that changed something else, which must count nothing.
SET enable_nestloop = off
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg(d.metric), array_agg(d.label), array_agg(d.value))
    FROM (
        WITH moved AS (
            SELECT n.status, o.status AS was, n.source,
                   CASE WHEN n.status = 'applied'
                        THEN greatest(extract(epoch FROM n.applied_at - n.received_at)::float8, 0)
                   END AS latency
            FROM new_rows n
            JOIN old_rows o USING (quota_id, version, is_delete)
            WHERE n.status <> 'processing'  -- a claim counts nothing
              AND n.status IS DISTINCT FROM o.status
        ),
        bounds AS (
            SELECT b.asc_bounds, array_length(b.asc_bounds, 1) AS k,
                   ARRAY(SELECT -x FROM unnest(b.asc_bounds) x ORDER BY 1) AS neg_desc
            FROM (SELECT inbox.apply_latency_buckets() AS asc_bounds) b
        ),
        deltas AS (
            SELECT CASE WHEN m.status IN ('applied', 'stale') THEN m.status
                        WHEN m.was = 'processing' THEN 'retried'
                        ELSE 'ingested' END                                        AS metric,
                   CASE WHEN m.status = 'pending' AND m.was <> 'processing' THEN m.source
                        ELSE '' END                                                AS label,
                   count(*)::float8                                                AS value
            FROM moved m
            WHERE m.status IN ('applied', 'stale', 'pending')
            GROUP BY 1, 2
            UNION ALL
            SELECT 'apply_latency_sum', '', sum(m.latency)
            FROM moved m
            WHERE m.latency IS NOT NULL
            UNION ALL
            -- the smallest bound >= latency (Prometheus 'le'): count the bounds >= latency by a
            -- binary search over the negated bounds, then index from the top; past the last: +Inf
            SELECT 'apply_latency_bucket', coalesce((b.asc_bounds[b.k + 1 - w.n])::text, '+Inf'), count(*)
            FROM moved m
            CROSS JOIN bounds b
            CROSS JOIN LATERAL (SELECT width_bucket(-m.latency, b.neg_desc) AS n) w
            WHERE m.latency IS NOT NULL
            GROUP BY 2
        )
        SELECT * FROM deltas
    ) d
    WHERE d.value IS NOT NULL;
    RETURN NULL;
END;
$$;

-- No column list: PostgreSQL allows none with transition tables; the function pairs the rows.
CREATE OR REPLACE TRIGGER quota_events_count_status_changes
    AFTER UPDATE ON inbox.quota_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_status_changes();
