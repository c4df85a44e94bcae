-- The apply as shipped before issue 13 (main before migration 015: sql/functions/inbox.claim_events.sql
-- and inbox.apply_events.sql), in a schema of its own, so that `inbox-bench --only apply` measures it
-- beside today's apply in the same run. A benchmark reference only: nothing of the product calls it.
-- One simplification: the claim returns the payloads with the keys (the shipped worker read them
-- with a second, streamed statement).
CREATE SCHEMA IF NOT EXISTS bench_shipped;

CREATE OR REPLACE FUNCTION bench_shipped.claim_events(p_worker text, p_limit integer, p_lease interval)
RETURNS TABLE (quota_id uuid, version bigint, is_delete boolean, payload jsonb, attempts integer)
LANGUAGE sql
SET enable_bitmapscan = off
SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION bench_shipped.apply_events(p_worker text, p_events jsonb)
RETURNS TABLE (applied bigint, stale bigint, dead bigint, not_owned bigint, published bigint)
LANGUAGE plpgsql
-- Every table here is reached by key from the batch. The planner takes the batch (a function
-- scan) for 100 rows whatever its size; against tables of a few thousand rows it then found a hash
-- join over a seq scan cheaper than the lookups, and each small batch read the whole inbox to mark
-- its few events (tests/integration/test_query_plans.py). Seq scans are left for the last resort.
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- what passed the gate, ordered by quota_id: the message to publish, its quota, whether a delete
    v_messages  jsonb[];
    v_quota_ids uuid[];
    v_is_delete boolean[];
BEGIN
    WITH input AS (
        SELECT *
        FROM jsonb_to_recordset(p_events) AS x(
            quota_id uuid, version bigint, is_delete boolean, error_class text, error text,
            counterparty_id text, direction text, period_month date, qty_t numeric,
            tolerance_pct numeric, incoterm_code text, metal_code text, source_updated_at timestamptz,
            source_lsn bigint, versionless boolean)
    ),
    owned AS (
        SELECT i.*, e.payload, e.attempts, e.source
        FROM input i
        CROSS JOIN LATERAL (
            SELECT x.payload, x.attempts, x.source
            FROM inbox.quota_events x
            WHERE (x.quota_id, x.version, x.is_delete) = (i.quota_id, i.version, i.is_delete)
              AND x.status = 'processing' AND x.lease_owner = p_worker
            FOR UPDATE
        ) e
    ),
    placed AS (
        SELECT o.*,
               v.source_lsn                                                               AS gate_lsn,
               -- a version-less delete takes effect at the version the gate holds
               CASE WHEN o.versionless THEN coalesce(v.version, 0) ELSE o.version END     AS eff_version,
               -- ... and needs its own LSN and one at the gate to be ordered (no gate row: nothing
               -- applied yet, nothing to order against)
               coalesce(o.versionless, false) AND o.error IS NULL
                   AND (o.source_lsn IS NULL
                        OR (v.quota_id IS NOT NULL AND v.source_lsn IS NULL))             AS unplaceable,
               CASE
                   WHEN v.quota_id IS NULL THEN true
                   -- one database's changes: its WAL position orders them
                   WHEN o.source_lsn IS NOT NULL AND v.source_lsn IS NOT NULL THEN o.source_lsn > v.source_lsn
                   WHEN o.versionless THEN false
                   ELSE (o.version, o.is_delete) > (v.version, v.is_delete)
                        -- a repair of a row changed outside the pipeline, at the version it claims
                        OR (o.source = 'reconcile' AND (o.version, o.is_delete) = (v.version, v.is_delete))
               END                                                                        AS above_gate
        FROM owned o
        -- By primary key, per event (LIMIT 1 keeps the planner from flattening it into a join): it
        -- takes the input for 100 rows whatever its size, and hash-joined a 10-event batch to a seq
        -- scan of the whole gate table, most of the apply's time at a light load.
        LEFT JOIN LATERAL (
            SELECT g.quota_id, g.version, g.is_delete, g.source_lsn
            FROM inbox.quota_versions g
            WHERE g.quota_id = o.quota_id
            LIMIT 1
        ) v ON true
    ),
    checked AS (
        SELECT o.*,
               o.error IS NULL AND NOT o.unplaceable                                      AS valid,
               o.is_delete AND o.error IS NULL AND NOT o.unplaceable
                   AND EXISTS (SELECT 1 FROM public.call_off c WHERE c.quota_id = o.quota_id) AS blocked
        FROM placed o
    ),
    ranked AS (
        SELECT c.*,
               -- One quota's events in this batch are ranked by LSN when they all carry one (one
               -- database's changes, in commit order), else by version (feeds mixed for one quota).
               bool_and(c.source_lsn IS NOT NULL) FILTER (WHERE c.valid) OVER w                AS all_lsn,
               max(ARRAY[c.source_lsn, c.eff_version, c.is_delete::int])
                   FILTER (WHERE c.valid AND NOT c.blocked) OVER w                                AS best_by_lsn,
               max(ARRAY[c.eff_version, c.is_delete::int, coalesce(c.source_lsn, -1)])
                   FILTER (WHERE c.valid AND NOT c.blocked) OVER w                                AS best_by_version
        FROM checked c
        WINDOW w AS (PARTITION BY c.quota_id)
    ),
    -- every owned event, with what became of it: candidate (passes to the gate), dead_blocked, or
    -- neither (stale; or invalid, which outcomes reads from error)
    classified AS (
        SELECT r.*,
               r.valid AND NOT r.blocked AND r.above_gate AND k.mine = k.best                     AS candidate,
               r.valid AND r.blocked AND r.above_gate AND (k.best IS NULL OR k.mine > k.best)     AS dead_blocked
        FROM ranked r
        CROSS JOIN LATERAL (
            SELECT CASE WHEN r.all_lsn THEN ARRAY[r.source_lsn, r.eff_version, r.is_delete::int]
                        ELSE ARRAY[r.eff_version, r.is_delete::int, coalesce(r.source_lsn, -1)] END AS mine,
                   CASE WHEN r.all_lsn THEN r.best_by_lsn ELSE r.best_by_version END              AS best
        ) k
    ),
    gate AS (
        INSERT INTO inbox.quota_versions AS v (quota_id, version, is_delete, source_lsn, applied_at, source)
        SELECT c.quota_id, c.eff_version, c.is_delete, c.source_lsn, now(), c.source
        FROM classified c
        WHERE c.candidate
        ORDER BY c.quota_id  -- one lock order for every worker: no deadlocks between batches
        ON CONFLICT (quota_id) DO UPDATE
            SET version = excluded.version,
                is_delete = excluded.is_delete,
                source_lsn = excluded.source_lsn,
                previous_version = v.version,
                applied_at = excluded.applied_at,
                source = excluded.source
            -- the same order as above_gate, under the row lock
            WHERE CASE
                      WHEN excluded.source_lsn IS NOT NULL AND v.source_lsn IS NOT NULL
                          THEN excluded.source_lsn > v.source_lsn
                      ELSE (excluded.version, excluded.is_delete) > (v.version, v.is_delete)
                           OR (excluded.source = 'reconcile'
                               AND (excluded.version, excluded.is_delete) = (v.version, v.is_delete))
                  END
        RETURNING v.quota_id, v.version, v.is_delete, v.previous_version, v.applied_at
    ),
    upserted AS (
        INSERT INTO public.quota AS q (
            quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct,
            incoterm_code, metal_code, source_version, source_updated_at)
        SELECT c.quota_id, c.counterparty_id, c.direction, c.period_month, c.qty_t, c.tolerance_pct,
               c.incoterm_code, c.metal_code, c.version, c.source_updated_at
        FROM classified c
        JOIN gate g ON (g.quota_id, g.version, g.is_delete) = (c.quota_id, c.eff_version, c.is_delete)
        WHERE NOT c.is_delete AND c.candidate
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
                   WHEN o.error IS NOT NULL OR o.unplaceable THEN 'dead'
                   WHEN o.candidate AND g.quota_id IS NOT NULL THEN 'applied'
                   WHEN o.dead_blocked THEN 'dead'
                   ELSE 'stale'
               END AS status,
               CASE
                   WHEN o.error IS NOT NULL THEN coalesce(o.error_class, 'invalid')
                   WHEN o.unplaceable THEN 'delete_unplaceable'
                   WHEN o.dead_blocked THEN 'delete_blocked'
               END AS error_class,
               CASE
                   WHEN o.error IS NOT NULL THEN o.error
                   WHEN o.unplaceable AND o.source_lsn IS NULL THEN
                       format('cannot place the delete of quota %s: Debezium sent only the key (REPLICA '
                              'IDENTITY DEFAULT), so it has no version, and it carries no source LSN to '
                              'order it by (a JDBC sink record needs lsn in ExtractNewRecordState''s '
                              'add.fields). Fix Titan: ALTER TABLE public.quota REPLICA IDENTITY FULL; then '
                              'check the quota against Titan and resolve or replay this dead letter',
                              o.quota_id)
                   WHEN o.unplaceable THEN
                       format('cannot place the delete of quota %s (source LSN %s): Debezium sent only the '
                              'key (REPLICA IDENTITY DEFAULT), so it has no version, and the version gate '
                              'holds version %s without a source LSN to order it by (applied from a feed '
                              'without one, or before migration 014). Fix Titan: ALTER TABLE public.quota '
                              'REPLICA IDENTITY FULL; then check the quota against Titan and resolve or '
                              'replay this dead letter',
                              o.quota_id, o.source_lsn, o.eff_version)
                   WHEN o.dead_blocked THEN
                       format('cannot delete quota %s at version %s: %s call-off(s) reference it',
                              o.quota_id, o.version,
                              (SELECT count(*) FROM public.call_off x WHERE x.quota_id = o.quota_id))
                   -- stale is an outcome, never a silence for a delete: say what it lost to
                   WHEN o.is_delete AND NOT o.dead_blocked AND NOT (o.candidate AND g.quota_id IS NOT NULL) THEN
                       format('stale: a later change of quota %s %s; this delete is at %s',
                              o.quota_id,
                              CASE WHEN o.above_gate THEN 'in the same batch took effect instead'
                                   ELSE 'was already applied' END,
                              CASE WHEN o.source_lsn IS NOT NULL THEN format('source LSN %s', o.source_lsn)
                                   ELSE format('version %s', o.version) END)
               END AS error
        FROM classified o
        LEFT JOIN gate g
            ON (g.quota_id, g.version, g.is_delete) = (o.quota_id, o.eff_version, o.is_delete) AND o.candidate
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
           (SELECT array_agg(jsonb_build_object(
                        'quota_id', g.quota_id,
                        'version', g.version,
                        'previous_version', g.previous_version,
                        'op', CASE WHEN g.is_delete THEN 'delete' ELSE 'upsert' END,
                        'quota', CASE WHEN g.is_delete THEN NULL ELSE to_jsonb(u) END,
                        'applied_at', g.applied_at)
                    ORDER BY g.quota_id)
            FROM gate g LEFT JOIN upserted u USING (quota_id)),
           (SELECT array_agg(g.quota_id ORDER BY g.quota_id) FROM gate g),
           (SELECT array_agg(g.is_delete ORDER BY g.quota_id) FROM gate g)
    INTO applied, stale, dead, not_owned, v_messages, v_quota_ids, v_is_delete
    FROM marked m;

    WITH deleted AS (
        -- = ANY(array): an index lookup per delete, whatever the planner guesses of unnest's size
        DELETE FROM public.quota q
        WHERE q.quota_id = ANY (ARRAY(SELECT c.quota_id
                                      FROM unnest(v_quota_ids, v_is_delete) AS c(quota_id, is_delete)
                                      WHERE c.is_delete))
        RETURNING q.quota_id
    ),
    messages AS (
        SELECT array_agg(c.message ORDER BY c.n) AS batch
        FROM unnest(v_messages, v_quota_ids, v_is_delete) WITH ORDINALITY AS c(message, quota_id, is_delete, n)
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
