-- -------------------------------------------------------------------------------------------------
-- Trigger function: inbox.titan_quota_sink_to_inbox() RETURNS trigger
-- Trigger: titan_quota_sink_to_inbox, BEFORE INSERT ON inbox.titan_quota_sink, FOR EACH ROW
--
-- Reads:       the new sink row
-- Writes:      inbox.quota_events (through inbox.ingest_events), inbox.titan_quota_sink (DELETE)
-- Called by:   a Kafka Connect JDBC sink inserting into inbox.titan_quota_sink (docs/quota-integration.md)
-- Privileges:  SECURITY DEFINER: the sink's role (inbox_ingest) has no right on the inbox table (007)
-- -------------------------------------------------------------------------------------------------
-- Every row written becomes the inbox event it describes. Why this shape:
--
-- * BEFORE, not AFTER. Redeliveries arrive as INSERT ... ON CONFLICT DO UPDATE (Debezium; Confluent
--   in upsert mode) or as a plain INSERT (Confluent in insert mode). An AFTER INSERT trigger would
--   miss every row that ON CONFLICT turns into an update -- among them a delete, which Debezium
--   sends with the key (quota_id, version) of the last upsert. A BEFORE INSERT trigger sees every
--   delivery, and inbox.ingest_events (the key (quota_id, version, is_delete), then the LSN)
--   makes a redelivery a no-op that neither duplicates the event nor resets its processing.
-- * The trigger first deletes the quota's earlier sink row. So the row is always really inserted:
--   no key conflict, no ON CONFLICT update, and the statement reports one row per record, which
--   Confluent's insert mode checks ("Update count did not sum up"). It also bounds the table: at
--   most one row per quota, the last one delivered. The inbox, not this table, is the record.
--   If a concurrent transaction inserts the same key first, ON CONFLICT DO UPDATE still runs, but
--   this trigger has already filed the row by then; the update changes nothing that matters.
-- * A delete is __deleted = 'true' or __op = 'd', the rule of inbox/formats.py for flattened records.
-- * __lsn (Debezium's source.lsn, when ExtractNewRecordState's add.fields names lsn) goes with the
--   event: a delete under REPLICA IDENTITY DEFAULT carries no version (the sink writes it at version
--   0) and is ordered by it alone; without it such a delete is a delete_unplaceable dead letter.
-- * Updating a sink row by hand files nothing: an event is keyed by its version, so a change needs
--   a new version, i.e. a new row.
CREATE OR REPLACE FUNCTION inbox.titan_quota_sink_to_inbox() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM inbox.ingest_events(
        jsonb_build_array(to_jsonb(NEW)),
        ARRAY[NEW.quota_id],
        ARRAY[NEW.version],
        ARRAY[coalesce(NEW.__deleted = 'true' OR NEW.__op = 'd', false)],
        'sink',
        ARRAY[NEW.__lsn]);
    DELETE FROM inbox.titan_quota_sink WHERE quota_id = NEW.quota_id;
    RETURN NEW;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.titan_quota_sink_to_inbox() FROM PUBLIC;

CREATE OR REPLACE TRIGGER titan_quota_sink_to_inbox
    BEFORE INSERT ON inbox.titan_quota_sink
    FOR EACH ROW EXECUTE FUNCTION inbox.titan_quota_sink_to_inbox();
