-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--                           p_is_delete boolean[], p_source text, p_source_lsns bigint[] DEFAULT NULL)
--     RETURNS integer
--
-- Reads:       nothing itself
-- Writes:      through inbox.ingest_typed_events (untyped rows): inbox.quota_events,
--              inbox.metric_counters (duplicates, ingested), public.quota_processing_errors (superseded
--              dead letters); NOTIFY inbox_quota_events
-- Called by:   query ingest_events (inbox/store.py: a batch whose typed values PostgreSQL refused,
--              stored untyped); inbox.titan_quota_sink_to_inbox
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events, untyped (migration 015: the worker types them from their payload;
-- `inbox serve` and `inbox consume` store typed rows through inbox.ingest_typed_events). p_events
-- is a JSON array; the key arrays are parallel to it, and so is p_source_lsns (Debezium's
-- source.lsn per event, NULL where an event has none; the whole array NULL for a feed without
-- LSNs). Returns how many rows were new or replaced.
--
-- Since 019 this is inbox.ingest_typed_events with every typed array NULL: that function checks the
-- source (the sink's trigger may file as 'sink'; a replay is the owner's) and the arrays' lengths,
-- and stores. A redelivered event (same key, no higher LSN) is a no-op, counted as a duplicate; an
-- event whose key is stored but whose LSN is higher is a newer change that reuses the key
-- (migration 014): it replaces the stored row (its typed columns cleared: the row is untyped again)
-- and is processed again. Whether the keys match the payloads is checked by the worker before
-- anything is applied (inbox/apply/prepare.py: a mismatch is a dead letter).
CREATE OR REPLACE FUNCTION inbox.ingest_events(
    p_events      jsonb,
    p_quota_ids   uuid[],
    p_versions    bigint[],
    p_is_delete   boolean[],
    p_source      text,
    p_source_lsns bigint[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inserted integer;
BEGIN
    SELECT s.inserted INTO v_inserted
    FROM inbox.ingest_typed_events(p_events, p_quota_ids, p_versions, p_is_delete, p_source, p_source_lsns,
                                   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) s;
    RETURN v_inserted;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[])
    TO inbox_ingest;
