-- Deletes that carry no version, ordered by Titan's WAL; HTTP items that cannot be keyed kept as
-- rejects (issue 11). The functions that use these columns live in sql/functions/.
--
-- A Debezium delete under REPLICA IDENTITY DEFAULT carries only the key: its NOT NULL columns hold
-- type defaults (version 0), so its version is not Titan's and, keyed by it, it went stale in
-- silence. Debezium's source.lsn orders one database's changes, so every Debezium event is stored
-- with its source LSN, the version gate remembers the LSN of the change it applied, and a
-- version-less delete is placed by its LSN (inbox.apply_events.sql, inbox.ingest_events.sql).

ALTER TABLE inbox.quota_events ADD COLUMN source_lsn bigint NULL CHECK (source_lsn >= 0);
ALTER TABLE inbox.quota_versions ADD COLUMN source_lsn bigint NULL CHECK (source_lsn >= 0);

-- The JDBC sink's record carries the LSN as __lsn when ExtractNewRecordState's add.fields names
-- lsn (connect/*-jdbc-sink.json); the trigger passes it on. An int64, like __source_ts_ms.
ALTER TABLE inbox.titan_quota_sink ADD COLUMN __lsn bigint NULL;

-- ingest_events gains p_source_lsns: a new signature, so the old function goes here and its file
-- creates the new one (inbox migrate applies every file after a numbered migration).
DROP FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text);

-- Rejects come from two feeds now: `inbox consume` (a Kafka message, addressed by topic, partition
-- and offset) and POST /events (an item of a request that could not be keyed: the request is
-- answered 202 with the item named under "rejected", and the item is kept here, so that a sender
-- that ignores the answer loses nothing in silence). An HTTP reject has no Kafka address.
ALTER TABLE inbox.rejects
    DROP CONSTRAINT rejects_pkey,
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY,
    -- the default keeps every writer of Kafka rejects as it was
    ADD COLUMN source text NOT NULL DEFAULT 'kafka' CHECK (source IN ('kafka', 'http')),
    ALTER COLUMN topic DROP NOT NULL,
    ALTER COLUMN "partition" DROP NOT NULL,
    ALTER COLUMN "offset" DROP NOT NULL,
    ADD CONSTRAINT rejects_kafka_address CHECK (
        (source = 'kafka') = (topic IS NOT NULL AND "partition" IS NOT NULL AND "offset" IS NOT NULL)),
    -- a redelivered Kafka message is still a no-op (ON CONFLICT DO NOTHING); NULLs never conflict
    ADD CONSTRAINT rejects_kafka_message UNIQUE (topic, "partition", "offset"),
    ADD PRIMARY KEY (id);
