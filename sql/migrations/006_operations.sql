-- Operations: counters for Prometheus, views for DBAs, dead-letter replay and resolve, retention,
-- alerts. Everything here reads the hot table through its small partial indexes or through
-- catalog statistics; nothing counts the finished rows on a hot path.

-- ---------------------------------------------------------------------------------------------
-- Counters kept by the database itself
--
-- Every process that exposes /metrics reads the same rows, so all of them report the same truth,
-- whichever process (or a JDBC sink writing straight into the inbox) did the work. Statement-level
-- triggers with transition tables count each statement once, set-based, in its own transaction:
-- a rolled-back apply counts nothing.
--
-- Contention: each backend writes only rows keyed by its own pg_backend_pid(), and only for the
-- current minute, so two transactions never wait on the same counter row. inbox.fold_counters()
-- later merges old minutes into backend 0 and, past the history window, into minute '-infinity'.
-- Totals are the sum of all rows; rates come from the per-minute rows.

CREATE TABLE inbox.metric_counters (
    metric  text             NOT NULL,
    label   text             NOT NULL DEFAULT '',
    minute  timestamptz      NOT NULL,  -- '-infinity': history folded past the window
    backend integer          NOT NULL,  -- the writer's pg_backend_pid(); 0 once folded
    value   double precision NOT NULL,
    PRIMARY KEY (metric, label, minute, backend)
);
-- Updated in place many times a minute: room for HOT updates, vacuumed early.
ALTER TABLE inbox.metric_counters SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000
);

-- Upper bounds (seconds) of inbox_apply_latency_seconds; the Python exposition reads them here.
CREATE FUNCTION inbox.apply_latency_buckets() RETURNS double precision[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600]::float8[]
$$;

-- Add (metric, label, value) deltas to this backend's rows of the current minute.
CREATE FUNCTION inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO inbox.metric_counters AS c (metric, label, minute, backend, value)
    SELECT d.metric, d.label, date_trunc('minute', now()), pg_backend_pid(), sum(d.value)
    FROM unnest(p_metrics, p_labels, p_values) AS d(metric, label, value)
    WHERE d.value <> 0
    GROUP BY d.metric, d.label
    ORDER BY d.metric, d.label
    ON CONFLICT (metric, label, minute, backend) DO UPDATE SET value = c.value + excluded.value;
$$;

CREATE FUNCTION inbox.count_inserted_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg('ingested'::text), array_agg(s.source), array_agg(s.n))
    FROM (SELECT n.source, count(*)::float8 AS n FROM new_rows n GROUP BY n.source) s;
    RETURN NULL;
END;
$$;

-- Status changes, paired old with new: applied, stale, retried (processing -> pending: a transient
-- failure or an expired lease), replayed (dead -> pending, counted as ingested from 'replay'),
-- and the received-to-applied latency of each applied event. Aggregated before anything per row
-- gets expensive: a 500-row apply costs well under a millisecond here.
CREATE FUNCTION inbox.count_status_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION inbox.count_dead_letters() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM inbox.add_counters(array_agg('dead'::text), array_agg(s.error_class), array_agg(s.n))
    FROM (SELECT n.error_class, count(*)::float8 AS n FROM new_rows n GROUP BY n.error_class) s;
    RETURN NULL;
END;
$$;

CREATE TRIGGER quota_events_count_inserted
    AFTER INSERT ON inbox.quota_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_inserted_events();

-- No column list: PostgreSQL allows none with transition tables; the function pairs the rows.
CREATE TRIGGER quota_events_count_status_changes
    AFTER UPDATE ON inbox.quota_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_status_changes();

CREATE TRIGGER quota_processing_errors_count
    AFTER INSERT ON public.quota_processing_errors
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION inbox.count_dead_letters();

-- Merge per-backend rows of finished minutes into backend 0, and minutes older than p_keep into
-- '-infinity'. Totals never change; the table stays about (metrics x minutes kept) rows.
-- One folder at a time (advisory transaction lock); the others return at once.
CREATE FUNCTION inbox.fold_counters(p_keep interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql AS $$
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

-- How many of p_metric (all labels) were counted in the last p_window: minute rows weighted by
-- how much of their minute lies inside the window.
CREATE FUNCTION inbox.counter_window(p_metric text, p_window interval)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(c.value * extract(epoch FROM
                        least(c.minute + interval '1 minute', now()) - greatest(c.minute, now() - p_window))
                        / extract(epoch FROM least(c.minute + interval '1 minute', now()) - c.minute)), 0)
    FROM inbox.metric_counters c
    WHERE c.metric = p_metric
      AND c.minute > now() - p_window - interval '1 minute'
      AND c.minute < now()
$$;

-- ---------------------------------------------------------------------------------------------
-- Views for DBAs

-- Events by state. pending and processing are counted exactly through their partial indexes.
-- The finished states (applied, stale, dead) grow until retention removes them: while the table
-- is small they are counted, beyond that they are the planner's estimate (EXPLAIN's row count:
-- the table's current size times the status frequencies ANALYZE saw), like count_estimate on the
-- PostgreSQL wiki. p_count_below: the table size under which counting is cheap.
CREATE FUNCTION inbox.status_counts(p_count_below bigint DEFAULT 8 * 1024 * 1024)
RETURNS TABLE (status text, events bigint, exact boolean)
LANGUAGE plpgsql VOLATILE AS $$  -- VOLATILE: PostgreSQL runs EXPLAIN only in volatile functions
#variable_conflict use_column
DECLARE
    v_status text;
    v_plan   jsonb;
BEGIN
    RETURN QUERY
    SELECT 'pending'::text, count(*), true FROM inbox.quota_events e WHERE e.status = 'pending'
    UNION ALL
    SELECT 'processing'::text, count(*), true FROM inbox.quota_events e WHERE e.status = 'processing';

    IF pg_relation_size('inbox.quota_events') < p_count_below THEN
        RETURN QUERY
        SELECT s.status, count(e.status), true
        FROM unnest(ARRAY['applied', 'stale', 'dead']) WITH ORDINALITY AS s(status, n)
        LEFT JOIN inbox.quota_events e ON e.status = s.status
        GROUP BY s.status, s.n
        ORDER BY s.n;
        RETURN;
    END IF;

    FOREACH v_status IN ARRAY ARRAY['applied', 'stale', 'dead'] LOOP
        EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM inbox.quota_events WHERE status = %L', v_status)
            INTO v_plan;
        status := v_status;
        events := (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::bigint;
        exact := false;
        RETURN NEXT;
    END LOOP;
END;
$$;

CREATE VIEW inbox.v_status AS
SELECT s.status, s.events, s.exact
FROM inbox.status_counts() s;

-- How far behind, and the usual reasons why: one row.
--   backlog:  pending (due now / waiting for a retry), processing (and leases already expired)
--   age:      oldest pending event since received; how long the oldest due event has waited
--   flow:     received and processed in the last 1 and 5 minutes (from the counters), and the
--             time to drain what is due at the last 5 minutes' pace
--   why:      worker sessions connected, distinct lease holders, the oldest open transaction in
--             this database (it pins the xmin horizon: dead rows pile up, SKIP LOCKED slows),
--             dead tuples in the inbox and when autovacuum last got to it
CREATE VIEW inbox.v_lag AS
WITH pending AS (
    SELECT count(*)                                                           AS pending,
           count(*) FILTER (WHERE e.next_attempt_at <= now())                 AS due,
           count(*) FILTER (WHERE e.next_attempt_at > now() AND e.attempts > 0) AS waiting_retry,
           min(e.received_at)                                                 AS oldest_received_at,
           min(e.next_attempt_at) FILTER (WHERE e.next_attempt_at <= now())   AS oldest_due_at
    FROM inbox.quota_events e
    WHERE e.status = 'pending'
),
processing AS (
    SELECT count(*)                                              AS processing,
           count(*) FILTER (WHERE e.lease_expires_at < now())    AS expired_leases,
           count(DISTINCT e.lease_owner)                         AS lease_holders
    FROM inbox.quota_events e
    WHERE e.status = 'processing'
),
flow AS (
    SELECT inbox.counter_window('ingested', '1 minute')  AS received_1m,
           inbox.counter_window('ingested', '5 minutes') AS received_5m,
           inbox.counter_window('applied', '1 minute')   AS applied_1m,
           inbox.counter_window('applied', '5 minutes')  AS applied_5m,
           inbox.counter_window('stale', '5 minutes')    AS stale_5m,
           inbox.counter_window('dead', '5 minutes')     AS dead_5m
),
sessions AS (
    SELECT count(*) FILTER (WHERE a.application_name LIKE 'quota-inbox %:%:%') AS worker_sessions,
           max(now() - a.xact_start) FILTER (WHERE a.backend_xmin IS NOT NULL
                                             AND a.pid <> pg_backend_pid())  AS oldest_xact_age
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
),
vacuum AS (
    SELECT t.n_dead_tup                                  AS dead_tuples,
           greatest(t.last_vacuum, t.last_autovacuum)    AS last_vacuum_at
    FROM pg_stat_user_tables t
    WHERE t.relid = 'inbox.quota_events'::regclass
)
SELECT p.pending, p.due, p.waiting_retry, r.processing, r.expired_leases,
       p.oldest_received_at,
       now() - p.oldest_received_at                                          AS oldest_pending_age,
       now() - p.oldest_due_at                                               AS oldest_due_wait,
       round(f.received_1m)::bigint AS received_1m, round(f.received_5m)::bigint AS received_5m,
       round(f.applied_1m)::bigint  AS applied_1m,  round(f.applied_5m)::bigint  AS applied_5m,
       round(f.stale_5m)::bigint    AS stale_5m,    round(f.dead_5m)::bigint     AS dead_5m,
       CASE WHEN f.applied_5m + f.stale_5m + f.dead_5m > 0
            THEN round(p.due / ((f.applied_5m + f.stale_5m + f.dead_5m) / 300.0))::bigint
       END                                                                   AS drain_eta_seconds,
       s.worker_sessions, r.lease_holders, s.oldest_xact_age,
       v.dead_tuples, v.last_vacuum_at
FROM pending p, processing r, flow f, sessions s
LEFT JOIN vacuum v ON true;

-- Every dead letter with what an operator needs to decide: the event's type, whether its inbox
-- row still exists (and in which state), and whether a newer version has been applied since
-- (superseded: a replay would end as stale).
CREATE VIEW inbox.v_dead_letters AS
SELECT d.id, d.quota_id, d.version, d.is_delete,
       coalesce(d.event_data ->> 'eventType', d.event_data -> 'payload' ->> 'op',
                d.event_data ->> 'op', d.event_data ->> '__op')      AS event_type,
       d.error_class, d.error_message, d.retry_count, d.created_at,
       d.resolved_at, d.resolution_note,
       e.status                                                      AS inbox_status,
       g.version                                                     AS applied_version,
       coalesce((g.version, g.is_delete) >= (d.version, d.is_delete), false) AS superseded,
       d.event_data
FROM public.quota_processing_errors d
LEFT JOIN inbox.quota_events e USING (quota_id, version, is_delete)
LEFT JOIN inbox.quota_versions g ON g.quota_id = d.quota_id;

-- The dead-letter queries: by time (rate alerts, --since), by quota, by class among the open ones.
CREATE INDEX quota_processing_errors_created_idx ON public.quota_processing_errors (created_at);
CREATE INDEX quota_processing_errors_quota_idx ON public.quota_processing_errors (quota_id, version);
CREATE INDEX quota_processing_errors_open_class_idx
    ON public.quota_processing_errors (error_class, created_at) WHERE resolved_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Dead letters: replay and resolve

-- Put dead letters back through the inbox, in one transaction with marking them resolved:
--   inbox row dead         -> pending again: attempts 0, source 'replay', received now  (requeued)
--   inbox row gone          -> inserted again from the dead letter's event_data          (reinserted)
--   inbox row in any other state (already redelivered and in hand, or applied): left alone,
--   the dead letter is only resolved                                                     (in_inbox)
-- The event then goes through claim and apply like any other, so the version gate still decides:
-- if a newer version was applied meanwhile, the replayed event ends as stale.
-- A dead letter already resolved (also by a concurrent replay: FOR UPDATE, then re-checked) is skipped.
CREATE FUNCTION inbox.replay_dead_letters(p_ids uuid[], p_note text DEFAULT 'replayed')
RETURNS TABLE (id uuid, quota_id uuid, version bigint, is_delete boolean, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT d.id, d.quota_id, d.version, d.is_delete, d.event_data
        FROM public.quota_processing_errors d
        WHERE d.id = ANY (p_ids) AND d.resolved_at IS NULL
        ORDER BY d.quota_id, d.version, d.is_delete
        FOR UPDATE
    ),
    queued AS (
        INSERT INTO inbox.quota_events AS e (quota_id, version, is_delete, payload, source)
        SELECT p.quota_id, p.version, p.is_delete, p.event_data, 'replay'
        FROM picked p
        ORDER BY p.quota_id, p.version, p.is_delete
        ON CONFLICT (quota_id, version, is_delete) DO UPDATE
            SET status = 'pending', attempts = 0, source = 'replay', received_at = now(),
                next_attempt_at = now(), last_error = NULL, applied_at = NULL
            WHERE e.status = 'dead'
        -- xmax = 0: the row was inserted by this statement, not updated
        RETURNING e.quota_id, e.version, e.is_delete, (e.xmax = 0) AS inserted
    ),
    resolved AS (
        UPDATE public.quota_processing_errors d
        SET resolved_at = now(), resolution_note = p_note
        FROM picked p
        WHERE d.id = p.id
        RETURNING d.id
    )
    SELECT p.id, p.quota_id, p.version, p.is_delete,
           CASE WHEN q.inserted THEN 'reinserted' WHEN q.quota_id IS NOT NULL THEN 'requeued'
                ELSE 'in_inbox' END
    FROM picked p
    JOIN resolved r USING (id)
    LEFT JOIN queued q USING (quota_id, version, is_delete)
    ORDER BY p.quota_id, p.version;

    IF FOUND THEN
        PERFORM pg_notify('inbox_quota_events', '');  -- wake idle workers, as ingest does
    END IF;
END;
$$;

-- Close a dead letter without replaying it. Returns NULL when the id is unknown or already resolved.
CREATE FUNCTION inbox.resolve_dead_letter(p_id uuid, p_note text)
RETURNS timestamptz
LANGUAGE sql AS $$
    UPDATE public.quota_processing_errors
    SET resolved_at = now(), resolution_note = p_note
    WHERE id = p_id AND resolved_at IS NULL
    RETURNING resolved_at
$$;

-- ---------------------------------------------------------------------------------------------
-- Retention

-- Delete up to p_limit finished inbox rows received more than p_older_than ago. SKIP LOCKED:
-- concurrent purgers take disjoint rows and never wait; each call is one short transaction.
-- A dead row stays while its dead letter is open: redelivered, it would die again and collide
-- with the open dead letter (one open dead letter per event). Deleting finished rows is safe for
-- correctness: the version gate (inbox.quota_versions) turns a redelivery of a purged event into
-- a stale no-op.
CREATE FUNCTION inbox.purge_finished_events(p_older_than interval, p_limit integer)
RETURNS bigint
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT e.quota_id, e.version, e.is_delete
        FROM inbox.quota_events e
        WHERE e.received_at < now() - p_older_than
          AND e.status IN ('applied', 'stale', 'dead')
          AND NOT (e.status = 'dead' AND EXISTS (
                  SELECT 1 FROM public.quota_processing_errors d
                  WHERE d.resolved_at IS NULL
                    AND (d.quota_id, d.version, d.is_delete) = (e.quota_id, e.version, e.is_delete)))
        ORDER BY e.received_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    gone AS (
        DELETE FROM inbox.quota_events e
        USING doomed d
        WHERE (e.quota_id, e.version, e.is_delete) = (d.quota_id, d.version, d.is_delete)
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

-- ---------------------------------------------------------------------------------------------
-- Alerts, for an alerting system to consume from pgmq

SELECT pgmq.create('inbox_alerts');

-- When each alert last fired: many processes check, one message per alert per p_renotify.
CREATE TABLE inbox.alert_state (
    alert         text        PRIMARY KEY,
    last_sent_at  timestamptz NOT NULL,
    last_msg_id   bigint      NOT NULL
);

-- Publish an alert unless the same alert was published less than p_renotify ago.
-- Returns the pgmq msg_id, or NULL when suppressed. The alert row lock serialises publishers.
CREATE FUNCTION inbox.publish_alert(p_alert text, p_message jsonb, p_renotify interval)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_msg_id bigint;
BEGIN
    INSERT INTO inbox.alert_state (alert, last_sent_at, last_msg_id)
    VALUES (p_alert, '-infinity', 0)
    ON CONFLICT (alert) DO NOTHING;
    PERFORM 1 FROM inbox.alert_state
    WHERE alert = p_alert AND last_sent_at <= now() - p_renotify
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_msg_id := pgmq.send('inbox_alerts',
                          p_message || jsonb_build_object('alert', p_alert, 'sent_at', now()));
    UPDATE inbox.alert_state SET last_sent_at = now(), last_msg_id = v_msg_id WHERE alert = p_alert;
    RETURN v_msg_id;
END;
$$;

-- Dead letters created in the last p_window, by class; publishes 'dead_letter_rate' when there
-- are at least p_threshold of them (at most once per p_window).
CREATE FUNCTION inbox.check_dead_letter_rate(p_window interval, p_threshold integer)
RETURNS TABLE (dead_letters bigint, by_class jsonb, msg_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_total bigint;
    v_by_class jsonb;
BEGIN
    SELECT coalesce(sum(c.n), 0), coalesce(jsonb_object_agg(c.error_class, c.n), '{}')
    INTO v_total, v_by_class
    FROM (SELECT d.error_class, count(*) AS n
          FROM public.quota_processing_errors d
          WHERE d.created_at > now() - p_window
          GROUP BY d.error_class) c;
    dead_letters := v_total;
    by_class := v_by_class;
    msg_id := NULL;
    IF v_total >= p_threshold THEN
        msg_id := inbox.publish_alert(
            'dead_letter_rate',
            jsonb_build_object('severity', 'error',
                               'summary', format('%s dead letters in the last %s (threshold %s)',
                                                 v_total, p_window, p_threshold),
                               'dead_letters', v_total, 'by_class', v_by_class,
                               'window_seconds', extract(epoch FROM p_window),
                               'threshold', p_threshold),
            p_window);
    END IF;
    RETURN NEXT;
END;
$$;
