-- -------------------------------------------------------------------------------------------------
-- Function: inbox.count_finished(p_applied bigint, p_stale bigint, p_latencies double precision[])
--     RETURNS void
--
-- Reads:       inbox.apply_latency_buckets()
-- Writes:      inbox.metric_counters (through inbox.add_counters)
-- Called by:   inbox.process_batch (once per batch)
-- Privileges:  internal: EXECUTE revoked from PUBLIC, granted to inbox_worker (process_batch runs as it)
-- -------------------------------------------------------------------------------------------------
-- The counts of one batch, written once (migration 016; before, a statement trigger on every update
-- of inbox.quota_events paired its old and new rows): how many events were applied and how many
-- were stale, and the received-to-applied latency in seconds of each applied event (p_latencies;
-- NULLs are ignored) as the sum and histogram of inbox_apply_latency_seconds.
CREATE OR REPLACE FUNCTION inbox.count_finished(p_applied bigint, p_stale bigint, p_latencies double precision[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT inbox.add_counters(array_agg(d.metric), array_agg(d.label), array_agg(d.value))
    FROM (
        WITH latency AS (
            SELECT greatest(l.seconds, 0) AS seconds
            FROM unnest(p_latencies) AS l(seconds)
            WHERE l.seconds IS NOT NULL
        ),
        bounds AS (
            SELECT b.asc_bounds, array_length(b.asc_bounds, 1) AS k,
                   ARRAY(SELECT -x FROM unnest(b.asc_bounds) x ORDER BY 1) AS neg_desc
            FROM (SELECT inbox.apply_latency_buckets() AS asc_bounds) b
        )
        SELECT 'applied' AS metric, '' AS label, coalesce(p_applied, 0)::float8 AS value
        UNION ALL
        SELECT 'stale', '', coalesce(p_stale, 0)::float8
        UNION ALL
        SELECT 'apply_latency_sum', '', sum(m.seconds) FROM latency m
        UNION ALL
        -- the smallest bound >= latency (Prometheus 'le'): count the bounds >= latency by a binary
        -- search over the negated bounds, then index from the top; past the last: +Inf
        SELECT 'apply_latency_bucket', coalesce((b.asc_bounds[b.k + 1 - w.n])::text, '+Inf'), count(*)
        FROM latency m
        CROSS JOIN bounds b
        CROSS JOIN LATERAL (SELECT width_bucket(-m.seconds, b.neg_desc) AS n) w
        GROUP BY 2
    ) d
    WHERE d.value IS NOT NULL;
$$;

REVOKE EXECUTE ON FUNCTION inbox.count_finished(bigint, bigint, double precision[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.count_finished(bigint, bigint, double precision[]) TO inbox_worker;
