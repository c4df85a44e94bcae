-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_typed_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--               p_is_delete boolean[], p_source text, p_source_lsns bigint[], p_typed boolean[],
--               p_counterparty_ids text[], p_directions text[], p_period_months date[],
--               p_qty_t numeric[], p_tolerance_pct numeric[], p_incoterm_codes text[],
--               p_metal_codes text[], p_source_updated_at timestamptz[], p_apply_attempts integer,
--               OUT inserted integer, OUT finished integer)
--
-- Reads:       session role's privilege on inbox.quota_events (a source other than http or kafka);
--              inbox.quota_events (the stored row of a key)
-- Writes:      inbox.quota_events (INSERT ... ON CONFLICT DO UPDATE); inbox.metric_counters (duplicates;
--              ingested: new rows and finished rows replaced, through inbox.add_counters, once per
--              call); public.quota_processing_errors (resolves the open dead letter of a row a newer
--              change replaces); NOTIFY inbox_quota_events (payload 'untyped' when a stored row is
--              untyped: a worker types it before it can be claimed), unless the session set
--              inbox.notify_after_commit = 'on'
--              with p_apply_attempts: what inbox.process_batch reads and writes (the quota, the gate,
--              the outbox, dead letters, counters), for the rows this call stored
-- Called by:   query ingest_typed_events (inbox/store.py: HTTP, `inbox consume`, the Python API);
--              inbox.ingest_events (untyped rows: every typed array NULL)
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events with the typed columns the ingestor read from each (migration 015):
-- where p_typed[n], the quota row a valid upsert sets (inbox/edge.py, ParsedBatch.rows), or none for
-- a Titan delete the edge read (it needs only its key); the other events (invalid events, other
-- formats, deletes the edge's column path did not read) are stored untyped and typed by the worker
-- from their payload. p_events is a JSON array; every other array is parallel to it (sent as binary
-- parameters: no quoting, no parsing of each value as text), or NULL as a whole: no LSNs; no typed
-- columns (inbox.ingest_events: the rows are stored untyped, p_typed NULL counting as false).
-- Returns how many rows were new or replaced (inserted), and how many of them it finished (below).
-- The one store of both ingest functions since 019.
--
-- Apply at ingest (issue 13, migration 021). With p_apply_attempts (the HTTP edge's, unless
-- INBOX_HTTP_APPLY_AT_INGEST is off), the typed rows this call stored are applied in the same
-- transaction by inbox.process_batch, as their first attempt (p_apply_attempts is its
-- p_max_attempts). The typed rows are stored already as applied (attempts 1, applied_at: the outcome
-- of most), and process_batch (p_fresh) marks only the rows whose outcome differs (stale, dead):
-- an applied event costs one tuple, not an insert, a row lock and a second tuple (migration 023).
-- The store and the apply run inside one subtransaction: should the apply fail for any reason (a
-- value the quota table refuses, a deadlock, a lock wait past the session's lock_timeout if it
-- sets one), both are rolled back, the rows are stored again, pending, as without an apply, and the
-- workers apply them, bisecting to the culprit as always. A store that fails fails the call as it
-- would without an apply (the same error: a refused typed value is class 22, which inbox/store.py
-- takes to store the batch untyped). No worker sees the rows before this commits, so nothing is
-- claimed twice; a query cancel or statement timeout is not caught (PL/pgSQL never traps them) and
-- the whole call fails, nothing stored. The workers are woken only for what is left: untyped rows,
-- or rows the apply left.
--
-- The source is what the session may claim (migration 012): 'http' and 'kafka' for anyone who may
-- call this function, 'sink' only from the sink's trigger (through inbox.ingest_events), and
-- 'replay' or any other source only for a session whose role may insert into the inbox itself (the
-- owner, an operator). A definer function cannot see its caller's current_user, so the session's
-- role is read: the role it SET (libpq options, SET ROLE), else its login; a session can only SET a
-- role it is a member of, so this grants nothing a session does not already hold.
--
-- A redelivered event (same key, no higher LSN) is a no-op, counted as a duplicate here (since
-- migration 012: the ingest role may not write counters itself). An event whose key is already
-- stored but whose LSN is higher is a newer change that reuses the key, not a redelivery: the next
-- version-less delete (version 0) of a re-created quota, or Titan reusing a version after a delete
-- (migration 014). It replaces the stored row, typed columns included (NULL and untyped when it
-- comes untyped), and is processed again; an open dead letter of the row it replaces is resolved,
-- naming the change that superseded it. Within one batch, the highest LSN of a key wins (ON
-- CONFLICT DO UPDATE may touch a row once).
CREATE OR REPLACE FUNCTION inbox.ingest_typed_events(
    p_events            jsonb,
    p_quota_ids         uuid[],
    p_versions          bigint[],
    p_is_delete         boolean[],
    p_source            text,
    p_source_lsns       bigint[],
    p_typed             boolean[],
    p_counterparty_ids  text[],
    p_directions        text[],
    p_period_months     date[],
    p_qty_t             numeric[],
    p_tolerance_pct     numeric[],
    p_incoterm_codes    text[],
    p_metal_codes       text[],
    p_source_updated_at timestamptz[],
    p_apply_attempts    integer DEFAULT NULL,
    OUT inserted        integer,
    OUT finished        integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n        integer := cardinality(p_quota_ids);
    v_ingested integer;
    v_untyped  boolean;
    -- the keys of the typed rows this call stored: what it may apply
    v_quota_ids uuid[];
    v_versions  bigint[];
    v_is_delete boolean[];
    v_applying  boolean := p_apply_attempts IS NOT NULL;  -- store the typed rows applied, then apply
    v_stage     text;                                     -- what the subtransaction was doing
    v_not_owned bigint;
    -- the rows a newer change replaced (a higher source LSN)
    v_replaced_ids      uuid[];
    v_replaced_versions bigint[];
    v_replaced_deletes  boolean[];
    v_replaced_lsns     bigint[];
BEGIN
    finished := 0;
    IF p_source IS DISTINCT FROM 'http' AND p_source IS DISTINCT FROM 'kafka'
       AND NOT (p_source = 'sink' AND pg_trigger_depth() > 0)
       AND NOT has_table_privilege(coalesce(nullif(current_setting('role'), 'none'), session_user),
                                   'inbox.quota_events', 'INSERT') THEN
        RAISE EXCEPTION 'inbox ingest: this session may not file events as source %', p_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ingest files events as http or kafka; the sink''s trigger as sink; replays are the owner''s.';
    END IF;

    -- a NULL array (no LSNs, no typed columns) has no cardinality and passes
    IF jsonb_array_length(p_events) <> v_n
       OR v_n <> ANY (ARRAY[cardinality(p_versions), cardinality(p_is_delete), cardinality(p_source_lsns),
                            cardinality(p_typed), cardinality(p_counterparty_ids),
                            cardinality(p_directions), cardinality(p_period_months), cardinality(p_qty_t),
                            cardinality(p_tolerance_pct), cardinality(p_incoterm_codes),
                            cardinality(p_metal_codes), cardinality(p_source_updated_at)]) THEN
        RAISE EXCEPTION 'inbox ingest: % events, % quota ids, and arrays of other lengths',
            jsonb_array_length(p_events), v_n;
    END IF;
    IF p_apply_attempts < 1 THEN
        -- not a data exception (class 22): the store would take that for a refused value and store
        -- the batch untyped (inbox/store.py)
        RAISE EXCEPTION 'inbox ingest: an apply at ingest needs at least one attempt, not %', p_apply_attempts
            USING HINT = 'Pass NULL to leave the events to the workers.';
    END IF;

    -- Once, or (an apply that failed) twice: the second time stores the rows pending, without an apply.
    LOOP
        BEGIN
            v_stage := 'store';
            WITH batch AS (
                -- one row per key (ON CONFLICT DO UPDATE may touch a row once): the highest LSN wins. A NULL
                -- array unnests as NULLs beside the others.
                SELECT DISTINCT ON (k.quota_id, k.version, k.is_delete)
                       k.*, e.payload
                FROM unnest(p_quota_ids, p_versions, p_is_delete, p_source_lsns, p_typed, p_counterparty_ids,
                            p_directions, p_period_months, p_qty_t, p_tolerance_pct, p_incoterm_codes,
                            p_metal_codes, p_source_updated_at)
                         WITH ORDINALITY AS k(quota_id, version, is_delete, source_lsn, typed, counterparty_id,
                                              direction, period_month, qty_t, tolerance_pct, incoterm_code,
                                              metal_code, source_updated_at, n)
                JOIN jsonb_array_elements(p_events) WITH ORDINALITY AS e(payload, n) USING (n)
                ORDER BY k.quota_id, k.version, k.is_delete, k.source_lsn DESC NULLS LAST, k.n
            ),
            stored AS (
                INSERT INTO inbox.quota_events AS x (
                    quota_id, version, is_delete, payload, source, source_lsn, typed, status, attempts, applied_at,
                    counterparty_id, direction, period_month, qty_t, tolerance_pct, incoterm_code, metal_code,
                    source_updated_at)
                SELECT b.quota_id, b.version, b.is_delete, b.payload, p_source, b.source_lsn, coalesce(b.typed, false),
                       -- applied at ingest: stored with the outcome of most; the apply marks the others
                       CASE WHEN v_applying AND b.typed THEN 'applied' ELSE 'pending' END,
                       CASE WHEN v_applying AND b.typed THEN 1 ELSE 0 END,
                       CASE WHEN v_applying AND b.typed THEN clock_timestamp() END,
                       b.counterparty_id, b.direction, b.period_month, b.qty_t, b.tolerance_pct, b.incoterm_code,
                       b.metal_code, b.source_updated_at
                FROM batch b
                ON CONFLICT (quota_id, version, is_delete) DO UPDATE
                    SET payload = excluded.payload,
                        source = excluded.source,
                        source_lsn = excluded.source_lsn,
                        received_at = now(),
                        status = excluded.status,
                        attempts = excluded.attempts,
                        next_attempt_at = now(),
                        lease_owner = NULL,
                        lease_expires_at = NULL,
                        last_error = NULL,
                        applied_at = excluded.applied_at,
                        typed = excluded.typed,
                        errors = NULL,
                        error_class = NULL,
                        versionless = false,
                        counterparty_id = excluded.counterparty_id,
                        direction = excluded.direction,
                        period_month = excluded.period_month,
                        qty_t = excluded.qty_t,
                        tolerance_pct = excluded.tolerance_pct,
                        incoterm_code = excluded.incoterm_code,
                        metal_code = excluded.metal_code,
                        source_updated_at = excluded.source_updated_at
                    WHERE excluded.source_lsn > x.source_lsn
                -- xmax = 0: the row was inserted by this statement, not updated
                RETURNING x.quota_id, x.version, x.is_delete, x.source_lsn, (x.xmax = 0) AS inserted, x.typed
            )
            -- Ingested: every new row, and a replaced row that had finished (one that was still pending was
            -- counted when it came). This statement's snapshot still sees the row as it was before the
            -- replacement.
            SELECT array_agg(s.quota_id) FILTER (WHERE s.typed), array_agg(s.version) FILTER (WHERE s.typed),
                   array_agg(s.is_delete) FILTER (WHERE s.typed),
                   count(*), coalesce(bool_or(NOT s.typed), false),
                   count(*) FILTER (WHERE s.inserted
                                       OR EXISTS (SELECT 1 FROM inbox.quota_events o
                                                  WHERE (o.quota_id, o.version, o.is_delete)
                                                        = (s.quota_id, s.version, s.is_delete)
                                                    AND o.status <> 'pending')),
                   -- the rows a newer change replaced (a higher LSN): their open dead letters end below
                   array_agg(s.quota_id) FILTER (WHERE NOT s.inserted),
                   array_agg(s.version) FILTER (WHERE NOT s.inserted),
                   array_agg(s.is_delete) FILTER (WHERE NOT s.inserted),
                   array_agg(s.source_lsn) FILTER (WHERE NOT s.inserted)
            INTO v_quota_ids, v_versions, v_is_delete, inserted, v_untyped, v_ingested,
                 v_replaced_ids, v_replaced_versions, v_replaced_deletes, v_replaced_lsns
            FROM stored s;
            -- Superseded: a replaced row's open dead letter is resolved, naming the change. A statement
            -- of its own, run only when a row was replaced, its keys looked up one by one: as a step of
            -- the store's statement it was planned for the whole batch and read every open dead letter
            -- on every call (a hash join over a seq scan; tests/integration/test_query_plans.py).
            IF v_replaced_ids IS NOT NULL THEN
                UPDATE public.quota_processing_errors d
                SET resolved_at = now(),
                    resolution_note = format('superseded by a newer change with the same key (source LSN %s)',
                                             r.source_lsn)
                FROM unnest(v_replaced_ids, v_replaced_versions, v_replaced_deletes, v_replaced_lsns)
                         AS r(quota_id, version, is_delete, source_lsn)
                WHERE (d.quota_id, d.version, d.is_delete) = (r.quota_id, r.version, r.is_delete)
                  AND d.resolved_at IS NULL;
            END IF;
            -- one call per batch: no trigger counts the inbox's inserts (migration 018)
            PERFORM inbox.add_counters(ARRAY['duplicate', 'ingested'], ARRAY['', p_source],
                                       ARRAY[v_n - inserted, v_ingested]::float8[]);

            IF v_applying AND v_quota_ids IS NOT NULL THEN
                v_stage := 'apply';
                SELECT p.applied + p.stale + p.dead, p.not_owned INTO finished, v_not_owned
                FROM inbox.process_batch(NULL, v_quota_ids, v_versions, v_is_delete, NULL, NULL,
                                         p_apply_attempts, p_fresh => true) p;
                -- never: every row is this transaction's; one it did not finish must not stay applied
                IF v_not_owned <> 0 THEN
                    RAISE EXCEPTION 'the apply finished % of the % typed rows stored',
                        finished, cardinality(v_quota_ids);
                END IF;
            END IF;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            IF v_stage = 'store' THEN
                RAISE;  -- as without an apply: the caller sees the store's own error
            END IF;
            -- rolled back with the store: store the rows again, pending, for the workers (say why in
            -- the server's log)
            RAISE WARNING 'inbox ingest: stored % events, left them to the workers: the apply at ingest failed: % (%)',
                inserted, SQLERRM, SQLSTATE;
            v_applying := false;
            finished := 0;
        END;
    END LOOP;

    -- A wake-up hint for idle workers, delivered at commit: 'untyped' tells them to type rows first
    -- (inbox/apply/waker.py), which they otherwise look for only after a poll. A session that sets
    -- inbox.notify_after_commit = 'on' (the HTTP ingestor's pool) sends it itself after the commit
    -- (query hint_workers): a transaction that notifies holds PostgreSQL's one NOTIFY lock (on
    -- "database 0") from before its commit until after its WAL flush, so concurrent ingest
    -- transactions that notify commit one flush at a time, never in a group.
    IF inserted > finished AND current_setting('inbox.notify_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('inbox_quota_events', CASE WHEN v_untyped THEN 'untyped' ELSE '' END);
    END IF;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[], integer) TO inbox_ingest;
