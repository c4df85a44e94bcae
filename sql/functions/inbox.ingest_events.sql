-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--                           p_is_delete boolean[], p_source text) RETURNS integer
--
-- Reads:       -
-- Writes:      inbox.quota_events (INSERT ... ON CONFLICT DO NOTHING); inbox.metric_counters (duplicates,
--              through inbox.add_counters); NOTIFY inbox_quota_events
-- Called by:   query ingest_events (inbox/ingest.py: HTTP, `inbox consume`); inbox.titan_quota_sink_to_inbox
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events. p_events is a JSON array; the key arrays are parallel to it.
-- A redelivered event (same key) is a no-op, counted as a duplicate here (since migration 012: the
-- ingest role may not write counters itself). Returns how many rows were new.
-- The source is what the session may claim (migration 012): 'http' and 'kafka' for anyone who may
-- call this function, 'sink' only from the sink's trigger, and 'replay' or any other source only for
-- a session whose role may insert into the inbox itself (the owner, an operator). A definer function
-- cannot see its caller's current_user, so the session's role is read: the role it SET (libpq
-- options, SET ROLE), else its login; a session can only SET a role it is a member of, so this
-- grants nothing a session does not already hold. Whether the keys match the payloads is checked
-- by the worker before anything is applied (inbox/apply/prepare.py: a mismatch is a dead letter).
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
    IF p_source IS DISTINCT FROM 'http' AND p_source IS DISTINCT FROM 'kafka'
       AND NOT (p_source = 'sink' AND pg_trigger_depth() > 0)
       AND NOT has_table_privilege(coalesce(nullif(current_setting('role'), 'none'), session_user),
                                   'inbox.quota_events', 'INSERT') THEN
        RAISE EXCEPTION 'inbox.ingest_events: this session may not file events as source %', p_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Ingest files events as http or kafka; the sink''s trigger as sink; replays are the owner''s.';
    END IF;

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
    -- what was new is counted by the insert trigger; what was not, here
    PERFORM inbox.add_counters(ARRAY['duplicate'], ARRAY[''], ARRAY[cardinality(p_quota_ids) - v_inserted]::float8[]);

    -- A wake-up hint for idle workers; delivered at commit, once per transaction.
    IF v_inserted > 0 THEN
        PERFORM pg_notify('inbox_quota_events', '');
    END IF;
    RETURN v_inserted;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) TO inbox_ingest;
