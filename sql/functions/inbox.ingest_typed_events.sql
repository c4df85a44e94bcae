-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_typed_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--               p_is_delete boolean[], p_source text, p_source_lsns bigint[], p_typed boolean[],
--               p_counterparty_ids text[], p_directions text[], p_period_months date[],
--               p_qty_t numeric[], p_tolerance_pct numeric[], p_incoterm_codes text[],
--               p_metal_codes text[], p_source_updated_at timestamptz[]) RETURNS integer
--
-- Reads:       inbox.quota_events (the stored row of a key)
-- Writes:      inbox.quota_events (INSERT ... ON CONFLICT DO UPDATE); inbox.metric_counters (duplicates,
--              through inbox.add_counters); public.quota_processing_errors (resolves the open dead
--              letter of a row a newer change replaces); NOTIFY inbox_quota_events
-- Called by:   query ingest_typed_events (inbox/store.py: HTTP, `inbox consume`, the Python API)
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events with the typed columns the ingestor read from each (migration 015):
-- where p_typed[n], the quota row a valid upsert sets (inbox/edge.py, ParsedBatch.rows); the other
-- events (deletes, invalid events, other formats) are stored untyped and typed by the worker from
-- their payload. p_events is a JSON array; every other array is parallel to it (sent as binary
-- parameters: no quoting, no parsing of each value as text). Returns how many rows were new or
-- replaced.
--
-- Everything else is inbox.ingest_events' (014): a redelivered event (same key, no higher LSN) is a
-- no-op, counted as a duplicate here; an event whose key is stored but whose LSN is higher is a newer
-- change that reuses the key: it replaces the stored row (typed columns included) and is processed
-- again, and an open dead letter of the row it replaces is resolved. Within one batch the highest
-- LSN of a key wins. The source is what the session may claim: 'http' and 'kafka' for anyone who may
-- call this function, any other source only for a session whose role may insert into the inbox
-- itself (the owner, an operator); the sink's trigger files untyped rows through inbox.ingest_events.
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
    p_source_updated_at timestamptz[]
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inserted integer;
    v_n        integer := cardinality(p_quota_ids);
BEGIN
    IF p_source IS DISTINCT FROM 'http' AND p_source IS DISTINCT FROM 'kafka'
       AND NOT has_table_privilege(coalesce(nullif(current_setting('role'), 'none'), session_user),
                                   'inbox.quota_events', 'INSERT') THEN
        RAISE EXCEPTION 'inbox.ingest_typed_events: this session may not file events as source %', p_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ingest files events as http or kafka; replays are the owner''s.';
    END IF;

    IF jsonb_array_length(p_events) <> v_n
       OR v_n <> ANY (ARRAY[cardinality(p_versions), cardinality(p_is_delete), cardinality(p_source_lsns),
                            cardinality(p_typed), cardinality(p_counterparty_ids),
                            cardinality(p_directions), cardinality(p_period_months), cardinality(p_qty_t),
                            cardinality(p_tolerance_pct), cardinality(p_incoterm_codes),
                            cardinality(p_metal_codes), cardinality(p_source_updated_at)]) THEN
        RAISE EXCEPTION 'inbox.ingest_typed_events: % events but arrays of other lengths', v_n;
    END IF;

    WITH batch AS (
        -- one row per key (ON CONFLICT DO UPDATE may touch a row once): the highest LSN wins
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
            quota_id, version, is_delete, payload, source, source_lsn, typed, counterparty_id, direction,
            period_month, qty_t, tolerance_pct, incoterm_code, metal_code, source_updated_at)
        SELECT b.quota_id, b.version, b.is_delete, b.payload, p_source, b.source_lsn, coalesce(b.typed, false),
               b.counterparty_id, b.direction, b.period_month, b.qty_t, b.tolerance_pct, b.incoterm_code,
               b.metal_code, b.source_updated_at
        FROM batch b
        ON CONFLICT (quota_id, version, is_delete) DO UPDATE
            SET payload = excluded.payload,
                source = excluded.source,
                source_lsn = excluded.source_lsn,
                received_at = now(),
                status = 'pending',
                attempts = 0,
                next_attempt_at = now(),
                lease_owner = NULL,
                lease_expires_at = NULL,
                last_error = NULL,
                applied_at = NULL,
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
        RETURNING x.quota_id, x.version, x.is_delete, x.source_lsn
    ),
    superseded AS (
        UPDATE public.quota_processing_errors d
        SET resolved_at = now(),
            resolution_note = format('superseded by a newer change with the same key (source LSN %s)',
                                     s.source_lsn)
        FROM stored s
        WHERE (d.quota_id, d.version, d.is_delete) = (s.quota_id, s.version, s.is_delete)
          AND d.resolved_at IS NULL AND s.source_lsn IS NOT NULL
        RETURNING 1
    )
    SELECT count(*) INTO v_inserted FROM stored;
    -- what was new is counted by the insert trigger; what was not, here
    PERFORM inbox.add_counters(ARRAY['duplicate'], ARRAY[''], ARRAY[v_n - v_inserted]::float8[]);

    -- A wake-up hint for idle workers; delivered at commit, once per transaction.
    IF v_inserted > 0 THEN
        PERFORM pg_notify('inbox_quota_events', '');
    END IF;
    RETURN v_inserted;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]) TO inbox_ingest;
