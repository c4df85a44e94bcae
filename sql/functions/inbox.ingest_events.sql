-- -------------------------------------------------------------------------------------------------
-- Function: inbox.ingest_events(p_events jsonb, p_quota_ids uuid[], p_versions bigint[],
--                           p_is_delete boolean[], p_source text, p_source_lsns bigint[] DEFAULT NULL)
--     RETURNS integer
--
-- Reads:       inbox.quota_events (the stored row of a key)
-- Writes:      inbox.quota_events (INSERT ... ON CONFLICT DO UPDATE); inbox.metric_counters (duplicates,
--              through inbox.add_counters); public.quota_processing_errors (resolves the open dead
--              letter of a row a newer change replaces); NOTIFY inbox_quota_events
-- Called by:   query ingest_events (inbox/ingest.py: HTTP, `inbox consume`); inbox.titan_quota_sink_to_inbox
-- Privileges:  SECURITY DEFINER: the ingest role has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Store a batch of raw events, untyped (migration 015: the worker types them from their payload;
-- `inbox serve` and `inbox consume` store typed rows through inbox.ingest_typed_events). p_events is a JSON array; the key arrays are parallel to it, and so
-- is p_source_lsns (Debezium's source.lsn per event, NULL where an event has none; the whole array
-- NULL for a feed without LSNs). Returns how many rows were new or replaced.
--
-- A redelivered event (same key, no higher LSN) is a no-op, counted as a duplicate here (since
-- migration 012: the ingest role may not write counters itself). An event whose key is already
-- stored but whose LSN is higher is a newer change that reuses the key, not a redelivery: the next
-- version-less delete (version 0) of a re-created quota, or Titan reusing a version after a delete
-- (migration 014). It replaces the stored row and is processed again; an open dead letter of the
-- row it replaces is resolved, naming the change that superseded it. Within one batch, the highest
-- LSN of a key wins (ON CONFLICT DO UPDATE may touch a row once).
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
       OR cardinality(p_quota_ids) <> cardinality(p_is_delete)
       OR cardinality(p_quota_ids) <> coalesce(cardinality(p_source_lsns), cardinality(p_quota_ids)) THEN
        RAISE EXCEPTION 'inbox.ingest_events: % events but % / % / % / % keys',
            jsonb_array_length(p_events), cardinality(p_quota_ids),
            cardinality(p_versions), cardinality(p_is_delete), cardinality(p_source_lsns);
    END IF;

    WITH batch AS (
        -- one row per key (ON CONFLICT DO UPDATE may touch a row once): the highest LSN wins
        SELECT DISTINCT ON (k.quota_id, k.version, k.is_delete)
               k.quota_id, k.version, k.is_delete, e.payload, p_source_lsns[k.n] AS source_lsn
        FROM unnest(p_quota_ids, p_versions, p_is_delete) WITH ORDINALITY AS k(quota_id, version, is_delete, n)
        JOIN jsonb_array_elements(p_events) WITH ORDINALITY AS e(payload, n) USING (n)
        ORDER BY k.quota_id, k.version, k.is_delete, p_source_lsns[k.n] DESC NULLS LAST, k.n
    ),
    stored AS (
        INSERT INTO inbox.quota_events AS x (quota_id, version, is_delete, payload, source, source_lsn)
        SELECT b.quota_id, b.version, b.is_delete, b.payload, p_source, b.source_lsn
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
                typed = false  -- a new payload: typed by the worker (migration 015)
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
    PERFORM inbox.add_counters(ARRAY['duplicate'], ARRAY[''], ARRAY[cardinality(p_quota_ids) - v_inserted]::float8[]);

    -- A wake-up hint for idle workers; delivered at commit, once per transaction.
    IF v_inserted > 0 THEN
        PERFORM pg_notify('inbox_quota_events', '');
    END IF;
    RETURN v_inserted;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text, bigint[])
    TO inbox_ingest;
