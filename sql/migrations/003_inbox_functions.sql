-- Ingest, claim, apply, retry and lease reaping as SQL functions: one round trip per batch.

-- Store a batch of raw events. p_events is a JSON array; the key arrays are parallel to it.
-- A redelivered event (same key) is a no-op. Returns how many rows were new.
CREATE FUNCTION inbox.ingest_events(
    p_events    jsonb,
    p_quota_ids uuid[],
    p_versions  bigint[],
    p_is_delete boolean[],
    p_source    text
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted integer;
BEGIN
    IF jsonb_array_length(p_events) <> cardinality(p_quota_ids)
       OR cardinality(p_quota_ids) <> cardinality(p_versions)
       OR cardinality(p_quota_ids) <> cardinality(p_is_delete) THEN
        RAISE EXCEPTION 'inbox.ingest_events: % events but % / % / % keys',
            jsonb_array_length(p_events), cardinality(p_quota_ids),
            cardinality(p_versions), cardinality(p_is_delete);
    END IF;

    INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source)
    SELECT k.quota_id, k.version, k.is_delete, e.payload, p_source
    FROM unnest(p_quota_ids, p_versions, p_is_delete) WITH ORDINALITY AS k(quota_id, version, is_delete, n)
    JOIN jsonb_array_elements(p_events) WITH ORDINALITY AS e(payload, n) USING (n)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;

    -- A wake-up hint for idle workers; delivered at commit, once per transaction.
    IF v_inserted > 0 THEN
        PERFORM pg_notify('inbox_quota_events', '');
    END IF;
    RETURN v_inserted;
END;
$$;

-- Claim up to p_limit due events for p_worker. SKIP LOCKED: concurrent claimers get disjoint rows.
-- The oldest due rows come from an ordered scan of the partial index quota_events_due_idx that stops
-- after p_limit rows. Without bitmap scans: when the statistics lag behind a growing backlog (they
-- do, right after a burst) the planner would otherwise read every pending row into a bitmap and
-- sort them all to keep p_limit (tests/integration/test_query_plans.py).
CREATE FUNCTION inbox.claim_events(p_worker text, p_limit integer, p_lease interval)
RETURNS TABLE (quota_id uuid, version bigint, is_delete boolean, payload jsonb, attempts integer)
LANGUAGE sql
SET enable_bitmapscan = off
AS $$
    WITH due AS (
        SELECT e.quota_id, e.version, e.is_delete
        FROM inbox.quota_events e
        WHERE e.status = 'pending' AND e.next_attempt_at <= now()
        ORDER BY e.next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE inbox.quota_events e
    SET status = 'processing',
        attempts = e.attempts + 1,
        lease_owner = p_worker,
        lease_expires_at = now() + p_lease
    FROM due
    WHERE (e.quota_id, e.version, e.is_delete) = (due.quota_id, due.version, due.is_delete)
    RETURNING e.quota_id, e.version, e.is_delete, e.payload, e.attempts;
$$;

-- Apply a validated batch that p_worker holds, in one transaction of two statements:
--   invalid events            -> dead letters (error_class from the worker, usually 'invalid')
--   deletes of quotas with call-offs, if they would take effect -> dead letters ('delete_blocked')
--   per quota, the highest remaining (version, is_delete) passes the version gate -> applied
--   everything else           -> stale (not above the applied version, or superseded in this batch)
-- Every effective change is published to the pgmq queue quota_changes in the same transaction:
--   {quota_id, version, previous_version, op: upsert|delete, quota: row after | null, applied_at}
-- Deletes run in a second statement: its fresh snapshot sees a quota row that another worker
-- inserted and committed while this one waited for the gate lock (the first snapshot predates it).
-- p_events: JSON array of {quota_id, version, is_delete, error_class, error, <normalised quota columns>}.
-- Rows whose lease this worker no longer holds are left alone and counted as not_owned.
-- Linear in the batch size, whatever the planner's estimates: each event's inbox row is locked by
-- its primary key (LATERAL), and the CTEs are joined on booleans, never filtered on a computed
-- value. The planner estimates a filter like "outcome = 'candidate'" on a CTE at one row; it then
-- joined the CTEs in nested loops (500 x 500 comparisons per join, 80% of the apply time).
CREATE FUNCTION inbox.apply_events(p_worker text, p_events jsonb)
RETURNS TABLE (applied bigint, stale bigint, dead bigint, not_owned bigint, published bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- what passed the gate: {quota_id, version, is_delete, previous_version, applied_at, quota}
    v_changes jsonb;
BEGIN
    WITH input AS (
        SELECT *
        FROM jsonb_to_recordset(p_events) AS x(
            quota_id uuid, version bigint, is_delete boolean, error_class text, error text,
            counterparty_id text, direction text, period_month date, qty_t numeric,
            tolerance_pct numeric, incoterm_code text, metal_code text, source_updated_at timestamptz)
    ),
    owned AS (
        SELECT i.*, e.payload, e.attempts
        FROM input i
        CROSS JOIN LATERAL (
            SELECT x.payload, x.attempts
            FROM inbox.quota_events x
            WHERE (x.quota_id, x.version, x.is_delete) = (i.quota_id, i.version, i.is_delete)
              AND x.status = 'processing' AND x.lease_owner = p_worker
            FOR UPDATE
        ) e
    ),
    checked AS (
        SELECT o.*,
               o.error IS NULL                                                            AS valid,
               v.quota_id IS NULL
                   OR (o.version, o.is_delete) > (v.version, v.is_delete)                 AS above_gate,
               o.is_delete AND o.error IS NULL
                   AND EXISTS (SELECT 1 FROM public.call_off c WHERE c.quota_id = o.quota_id) AS blocked
        FROM owned o
        LEFT JOIN inbox.quota_versions v USING (quota_id)
    ),
    ranked AS (
        SELECT c.*,
               max(ARRAY[c.version, c.is_delete::int]) FILTER (WHERE c.valid AND NOT c.blocked)
                   OVER (PARTITION BY c.quota_id)                                         AS best
        FROM checked c
    ),
    -- every owned event, with what became of it: candidate (passes to the gate), dead_blocked, or
    -- neither (stale; or invalid, which outcomes reads from error)
    classified AS (
        SELECT r.*,
               r.valid AND NOT r.blocked AND r.above_gate
                   AND ARRAY[r.version, r.is_delete::int] = r.best                        AS candidate,
               r.valid AND r.blocked AND r.above_gate
                   AND (r.best IS NULL OR ARRAY[r.version, r.is_delete::int] > r.best)    AS dead_blocked
        FROM ranked r
    ),
    gate AS (
        INSERT INTO inbox.quota_versions AS v (quota_id, version, is_delete, applied_at)
        SELECT c.quota_id, c.version, c.is_delete, now()
        FROM classified c
        WHERE c.candidate
        ORDER BY c.quota_id  -- one lock order for every worker: no deadlocks between batches
        ON CONFLICT (quota_id) DO UPDATE
            SET version = excluded.version,
                is_delete = excluded.is_delete,
                previous_version = v.version,
                applied_at = excluded.applied_at
            WHERE (excluded.version, excluded.is_delete) > (v.version, v.is_delete)
        RETURNING v.quota_id, v.version, v.is_delete, v.previous_version, v.applied_at
    ),
    upserted AS (
        INSERT INTO public.quota AS q (
            quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct,
            incoterm_code, metal_code, source_version, source_updated_at)
        SELECT c.quota_id, c.counterparty_id, c.direction, c.period_month, c.qty_t, c.tolerance_pct,
               c.incoterm_code, c.metal_code, c.version, c.source_updated_at
        FROM classified c
        JOIN gate g USING (quota_id, version, is_delete)
        WHERE NOT c.is_delete
        ORDER BY c.quota_id
        ON CONFLICT (quota_id) DO UPDATE
            SET counterparty_id = excluded.counterparty_id,
                direction = excluded.direction,
                period_month = excluded.period_month,
                qty_t = excluded.qty_t,
                tolerance_pct = excluded.tolerance_pct,
                incoterm_code = excluded.incoterm_code,
                metal_code = excluded.metal_code,
                source_version = excluded.source_version,
                source_updated_at = excluded.source_updated_at,
                updated_at = now()  -- created_at is deliberately absent: set once
        RETURNING q.*
    ),
    outcomes AS (
        SELECT o.quota_id, o.version, o.is_delete, o.payload, o.attempts,
               CASE
                   WHEN o.error IS NOT NULL THEN 'dead'
                   WHEN o.candidate AND g.quota_id IS NOT NULL THEN 'applied'
                   WHEN o.dead_blocked THEN 'dead'
                   ELSE 'stale'
               END AS status,
               CASE
                   WHEN o.error IS NOT NULL THEN coalesce(o.error_class, 'invalid')
                   WHEN o.dead_blocked THEN 'delete_blocked'
               END AS error_class,
               CASE
                   WHEN o.error IS NOT NULL THEN o.error
                   WHEN o.dead_blocked THEN
                       format('cannot delete quota %s at version %s: %s call-off(s) reference it',
                              o.quota_id, o.version,
                              (SELECT count(*) FROM public.call_off x WHERE x.quota_id = o.quota_id))
               END AS error
        FROM classified o
        LEFT JOIN gate g USING (quota_id, version, is_delete)
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = o.status,
            lease_owner = NULL,
            lease_expires_at = NULL,
            last_error = o.error,
            applied_at = CASE WHEN o.status = 'applied' THEN now() END
        FROM outcomes o
        WHERE (e.quota_id, e.version, e.is_delete) = (o.quota_id, o.version, o.is_delete)
        RETURNING e.status
    ),
    buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT o.payload, o.error, o.attempts, o.quota_id, o.version, o.is_delete, o.error_class
        FROM outcomes o
        WHERE o.status = 'dead'
        RETURNING 1
    )
    SELECT count(*) FILTER (WHERE m.status = 'applied'),
           count(*) FILTER (WHERE m.status = 'stale'),
           count(*) FILTER (WHERE m.status = 'dead'),
           (SELECT count(*) FROM input) - count(*),
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'quota_id', g.quota_id, 'version', g.version, 'is_delete', g.is_delete,
                        'previous_version', g.previous_version, 'applied_at', g.applied_at,
                        'quota', CASE WHEN g.is_delete THEN NULL ELSE to_jsonb(u) END)), '[]')
            FROM gate g LEFT JOIN upserted u USING (quota_id))
    INTO applied, stale, dead, not_owned, v_changes
    FROM marked m;

    WITH changes AS (
        SELECT *
        FROM jsonb_to_recordset(v_changes) AS c(
            quota_id uuid, version bigint, is_delete boolean, previous_version bigint,
            applied_at timestamptz, quota jsonb)
    ),
    deleted AS (
        DELETE FROM public.quota q
        USING changes c
        WHERE c.is_delete AND q.quota_id = c.quota_id
        RETURNING q.quota_id
    ),
    messages AS (
        SELECT array_agg(jsonb_build_object(
                   'quota_id', c.quota_id,
                   'version', c.version,
                   'previous_version', c.previous_version,
                   'op', CASE WHEN c.is_delete THEN 'delete' ELSE 'upsert' END,
                   'quota', c.quota,
                   'applied_at', c.applied_at)
               ORDER BY c.quota_id) AS batch
        FROM changes c
        LEFT JOIN deleted d USING (quota_id)
        -- a delete of a quota that is not there changes nothing and publishes nothing
        WHERE NOT c.is_delete OR d.quota_id IS NOT NULL
    )
    SELECT count(*) INTO published
    FROM messages m, LATERAL pgmq.send_batch('quota_changes', m.batch) AS sent
    WHERE m.batch IS NOT NULL;

    RETURN NEXT;
END;
$$;

-- Give events back after a transient failure: pending again after an exponential backoff with
-- jitter, or dead ('retries_exhausted') once p_max_attempts claims have been spent.
-- p_owner NULL releases expired leases, whoever held them (the lease reaper).
CREATE FUNCTION inbox.release_events(
    p_owner        text,
    p_keys         jsonb,
    p_error        text,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql AS $$
    WITH keys AS (
        SELECT * FROM jsonb_to_recordset(p_keys) AS k(quota_id uuid, version bigint, is_delete boolean)
    ),
    held AS (
        SELECT e.quota_id, e.version, e.is_delete, e.payload, e.attempts,
               e.attempts >= p_max_attempts AS exhausted
        FROM keys k
        JOIN inbox.quota_events e USING (quota_id, version, is_delete)
        WHERE e.status = 'processing'
          AND (e.lease_owner = p_owner OR (p_owner IS NULL AND e.lease_expires_at < now()))
        FOR UPDATE OF e
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = CASE WHEN h.exhausted THEN 'dead' ELSE 'pending' END,
            lease_owner = NULL,
            lease_expires_at = NULL,
            last_error = p_error,
            -- equal jitter: half the exponential delay fixed, half random
            next_attempt_at = now() + least(p_backoff_cap, p_backoff_base * power(2, e.attempts - 1))
                                      * (0.5 + random() / 2)
        FROM held h
        WHERE (e.quota_id, e.version, e.is_delete) = (h.quota_id, h.version, h.is_delete)
        RETURNING e.status
    ),
    buried AS (
        INSERT INTO public.quota_processing_errors (
            event_data, error_message, retry_count, quota_id, version, is_delete, error_class)
        SELECT h.payload, format('gave up after %s attempts: %s', h.attempts, p_error), h.attempts,
               h.quota_id, h.version, h.is_delete, 'retries_exhausted'
        FROM held h
        WHERE h.exhausted
        RETURNING 1
    )
    SELECT count(*) FILTER (WHERE m.status = 'pending'), count(*) FILTER (WHERE m.status = 'dead')
    FROM marked m;
$$;

-- Make rows of dead workers claimable again: expired leases go back through release_events.
CREATE FUNCTION inbox.reap_expired_leases(
    p_limit        integer,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql AS $$
    SELECT r.retried, r.dead
    FROM (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'quota_id', e.quota_id, 'version', e.version, 'is_delete', e.is_delete)), '[]') AS keys
        FROM (
            SELECT quota_id, version, is_delete
            FROM inbox.quota_events
            WHERE status = 'processing' AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) e
    ) expired,
    LATERAL inbox.release_events(NULL, expired.keys, 'lease expired before the worker finished',
                                 p_max_attempts, p_backoff_base, p_backoff_cap) r;
$$;
