-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--                           p_is_delete boolean[], p_source text) RETURNS integer
--
-- Reads:       -
-- Writes:      inbox.quota_events (INSERT ... ON CONFLICT DO NOTHING); NOTIFY inbox_quota_events
-- Called by:   query ingest_events (inbox/ingest.py: HTTP, `inbox consume`); inbox.titan_quota_sink_to_inbox
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events. p_events is a JSON array; the key arrays are parallel to it.
-- A redelivered event (same key) is a no-op. Returns how many rows were new.
CREATE OR REPLACE FUNCTION inbox.ingest_events(
    p_events    jsonb,
    p_quota_ids uuid[],
    p_versions  bigint[],
    p_is_delete boolean[],
    p_source    text
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) TO inbox_ingest;
