-- count_status_changes, version 2: counts from the new rows alone.
--
-- Version 1 (006) paired each new row with its old row by joining the two transition tables. In a
-- PL/pgSQL trigger that statement is planned once per session, for the size of the first batch it
-- sees: a worker whose first batch held a few rows kept a nested loop, 250,000 comparisons for
-- every 500-row batch after it; the trigger then cost 19 ms per batch instead of 1.2, and the
-- apply a third of its throughput (README, Performance). No join, no such plan.
--
-- The old status is not needed: every UPDATE of inbox.quota_events changes the status, and a
-- row that becomes pending again came either from a worker (release or reaper: it was claimed, so
-- attempts > 0) or from a dead-letter replay (attempts reset to 0, source 'replay').

CREATE OR REPLACE FUNCTION inbox.count_status_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg(d.metric), array_agg(d.label), array_agg(d.value))
    FROM (
        WITH moved AS (
            SELECT n.status, n.source, n.attempts,
                   CASE WHEN n.status = 'applied'
                        THEN greatest(extract(epoch FROM n.applied_at - n.received_at)::float8, 0)
                   END AS latency
            FROM new_rows n
            WHERE n.status IN ('applied', 'stale', 'pending')  -- a claim counts nothing
        ),
        bounds AS (
            SELECT b.asc_bounds, array_length(b.asc_bounds, 1) AS k,
                   ARRAY(SELECT -x FROM unnest(b.asc_bounds) x ORDER BY 1) AS neg_desc
            FROM (SELECT inbox.apply_latency_buckets() AS asc_bounds) b
        ),
        deltas AS (
            SELECT CASE WHEN m.status IN ('applied', 'stale') THEN m.status
                        WHEN m.attempts > 0 THEN 'retried'
                        ELSE 'ingested' END                                        AS metric,
                   CASE WHEN m.status = 'pending' AND m.attempts = 0 THEN m.source
                        ELSE '' END                                                AS label,
                   count(*)::float8                                                AS value
            FROM moved m
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

-- Without the old rows: PostgreSQL no longer keeps a copy of every updated row for the trigger.
DROP TRIGGER quota_events_count_status_changes ON inbox.quota_events;
CREATE TRIGGER quota_events_count_status_changes
    AFTER UPDATE ON inbox.quota_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_status_changes();
