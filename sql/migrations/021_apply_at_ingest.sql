-- Issue 13: apply at ingest. inbox.ingest_typed_events takes p_apply_attempts (the HTTP edge's: the
-- typed rows a call stores are applied in its transaction, sql/functions/inbox.ingest_typed_events.sql)
-- and returns how many rows it stored and how many of them it finished. A new argument and a new
-- result type are a new function: the old one is dropped with its privileges, and the function file
-- (the same `inbox migrate`, moments later) creates the new one and grants it to inbox_ingest as
-- before. Nothing stored is touched. Between the two, an ingest fails as not migrated (HTTP 503,
-- `inbox consume` keeps its batch and retries) and stores nothing.
DROP FUNCTION IF EXISTS inbox.ingest_typed_events(jsonb, uuid[], bigint[], boolean[], text, bigint[], boolean[],
    text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]);
