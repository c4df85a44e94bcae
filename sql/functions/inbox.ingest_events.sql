-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--                           p_is_delete boolean[], p_source text, p_source_lsns bigint[] DEFAULT NULL)
--     RETURNS integer
--
-- Reads:       session role's privilege on inbox.quota_events (a source other than http or kafka)
-- Writes:      through inbox.store_events (untyped rows): inbox.quota_events, inbox.metric_counters
--              (duplicates), public.quota_processing_errors (superseded dead letters); NOTIFY
--              inbox_quota_events
-- Called by:   query ingest_events (inbox/ingest.py: HTTP, `inbox consume`); inbox.titan_quota_sink_to_inbox
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events, untyped (migration 015: the worker types them from their payload;
-- `inbox serve` and `inbox consume` store typed rows through inbox.ingest_typed_events). p_events is a JSON array; the key arrays are parallel to it, and so
-- is p_source_lsns (Debezium's source.lsn per event, NULL where an event has none; the whole array
-- NULL for a feed without LSNs). Returns how many rows were new or replaced.
--
-- The store is inbox.store_events', shared with inbox.ingest_typed_events: a redelivered event (same
-- key, no higher LSN) is a no-op, counted as a duplicate; an event whose key is stored but whose LSN
-- is higher is a newer change that reuses the key (migration 014): it replaces the stored row (its
-- typed columns cleared: the row is untyped again) and is processed again, and an open dead letter
-- of the row it replaces is resolved. Within one batch, the highest LSN of a key wins.
-- The source is what the session may claim (migration 012): 'http' and 'kafka' for anyone who may
-- call this function, 'sink' only from the sink's trigger, and 'replay' or any other source only for
-- a session whose role may insert into the inbox itself (the owner, an operator). A definer function
-- cannot see its caller's current_user, so the session's role is read: the role it SET (libpq
-- options, SET ROLE), else its login; a session can only SET a role it is a member of, so this
-- grants nothing a session does not already hold. Whether the keys match the payloads is checked
-- by the worker before anything is applied (inbox/apply/prepare.py: a mismatch is a dead letter).
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
       OR cardinality(p_quota_ids) <> cardinality(p_is_delete)
       OR cardinality(p_quota_ids) <> coalesce(cardinality(p_source_lsns), cardinality(p_quota_ids)) THEN
        RAISE EXCEPTION 'inbox.ingest_events: % events but % / % / % / % keys',
            jsonb_array_length(p_events), cardinality(p_quota_ids),
            cardinality(p_versions), cardinality(p_is_delete), cardinality(p_source_lsns);
    END IF;

    -- untyped: the worker types these rows from their payload (migration 015)
    RETURN inbox.store_events(p_events, p_quota_ids, p_versions, p_is_delete, p_source, p_source_lsns,
                              NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[])
    TO inbox_ingest;
