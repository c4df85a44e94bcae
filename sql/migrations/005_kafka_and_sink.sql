-- Kafka rejects, and the table Kafka Connect JDBC sinks write into.

-- Messages `inbox consume` could not parse or key, kept verbatim so nothing is lost and nothing
-- stalls. Written in the same transaction as the batch they came with, before the offsets are
-- committed; a redelivered message (same topic, partition, offset) is a no-op. A topic that is
-- deleted and re-created restarts its offsets: clear its old rejects first.
CREATE TABLE inbox.rejects (
    topic       text        NOT NULL,
    "partition" integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea       NULL,
    raw         bytea       NOT NULL,
    -- [{"key": name, "value": UTF-8 text}] or {"key": name, "value_base64": ...} for binary values
    headers     jsonb       NOT NULL DEFAULT '[]',
    reason      text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE INDEX rejects_received_idx ON inbox.rejects (received_at);

-- The sink-facing table: a JDBC sink (Debezium's or Confluent's) writes each flattened Titan quota
-- record here, and the trigger below files it in the inbox as one event (source 'sink').
--
-- The key columns are typed like Titan's table. The other columns are text, so that every encoding
-- a connector may bind (Connect Decimal as numeric, decimal.handling.mode=string as varchar, double,
-- dates and timestamps as typed values or strings) lands without a cast error that would stall the
-- connector; the worker validates the values exactly as it does for every other feed.
CREATE TABLE inbox.titan_quota_sink (
    quota_id        uuid   NOT NULL,
    version         bigint NOT NULL,
    counterparty_id text   NULL,
    direction       text   NULL,
    period_month    text   NULL,
    qty_t           text   NULL,
    tolerance_pct   text   NULL,
    incoterm_code   text   NULL,
    metal_code      text   NULL,
    updated_at      text   NULL,
    __op            text   NULL,
    __deleted       text   NULL,
    __source_ts_ms  bigint NULL,
    PRIMARY KEY (quota_id, version)
);

-- Every row written becomes the inbox event it describes. Why this shape:
--
-- * BEFORE, not AFTER. Redeliveries arrive as INSERT ... ON CONFLICT DO UPDATE (Debezium; Confluent
--   in upsert mode) or as a plain INSERT (Confluent in insert mode). An AFTER INSERT trigger would
--   miss every row that ON CONFLICT turns into an update -- among them a delete, which Debezium
--   sends with the key (quota_id, version) of the last upsert. A BEFORE INSERT trigger sees every
--   delivery, and inbox.ingest_events (ON CONFLICT DO NOTHING on (quota_id, version, is_delete))
--   makes a redelivery a no-op that neither duplicates the event nor resets its processing.
-- * The trigger first deletes the quota's earlier sink row. So the row is always really inserted:
--   no key conflict, no ON CONFLICT update, and the statement reports one row per record, which
--   Confluent's insert mode checks ("Update count did not sum up"). It also bounds the table: at
--   most one row per quota, the last one delivered. The inbox, not this table, is the record.
--   If a concurrent transaction inserts the same key first, ON CONFLICT DO UPDATE still runs, but
--   this trigger has already filed the row by then; the update changes nothing that matters.
-- * A delete is __deleted = 'true' or __op = 'd', the rule of inbox/formats.py for flattened records.
-- * Updating a sink row by hand files nothing: an event is keyed by its version, so a change needs
--   a new version, i.e. a new row.
CREATE FUNCTION inbox.titan_quota_sink_to_inbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM inbox.ingest_events(
        jsonb_build_array(to_jsonb(NEW)),
        ARRAY[NEW.quota_id],
        ARRAY[NEW.version],
        ARRAY[coalesce(NEW.__deleted = 'true' OR NEW.__op = 'd', false)],
        'sink');
    DELETE FROM inbox.titan_quota_sink WHERE quota_id = NEW.quota_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER titan_quota_sink_to_inbox
    BEFORE INSERT ON inbox.titan_quota_sink
    FOR EACH ROW EXECUTE FUNCTION inbox.titan_quota_sink_to_inbox();

-- Each delivery leaves one dead row behind: vacuum early.
ALTER TABLE inbox.titan_quota_sink SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
