-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_typed_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--               p_is_delete boolean[], p_source text, p_source_lsns bigint[], p_typed boolean[],
--               p_counterparty_ids text[], p_directions text[], p_period_months date[],
--               p_qty_t numeric[], p_tolerance_pct numeric[], p_incoterm_codes text[],
--               p_metal_codes text[], p_source_updated_at timestamptz[]) RETURNS integer
--
-- Reads:       session role's privilege on inbox.quota_events (a source other than http or kafka)
-- Writes:      through inbox.store_events: inbox.quota_events, inbox.metric_counters (duplicates),
--              public.quota_processing_errors (superseded dead letters); NOTIFY inbox_quota_events
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
-- The store itself is inbox.store_events', shared with inbox.ingest_events (014): a redelivered
-- event (same key, no higher LSN) is a no-op, counted as a duplicate; an event whose key is stored
-- but whose LSN is higher is a newer change that reuses the key: it replaces the stored row (typed
-- columns included) and is processed again, and an open dead letter of the row it replaces is
-- resolved. Within one batch the highest LSN of a key wins. The source is what the session may claim: 'http' and 'kafka' for anyone who may
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
    v_n integer := cardinality(p_quota_ids);
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

    RETURN inbox.store_events(p_events, p_quota_ids, p_versions, p_is_delete, p_source, p_source_lsns,
                              p_typed, p_counterparty_ids, p_directions, p_period_months, p_qty_t,
                              p_tolerance_pct, p_incoterm_codes, p_metal_codes, p_source_updated_at);
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[],
    boolean[], text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]) TO inbox_ingest;
