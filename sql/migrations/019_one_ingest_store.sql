-- Issue 14: one ingest store. inbox.ingest_typed_events stores its batch itself; inbox.ingest_events
-- (untyped: its typed arrays NULL) files through inbox.ingest_typed_events, which checks the source
-- and the arrays for both. inbox.store_events, the store they shared since 015 (internal: EXECUTE
-- granted to no role), is dropped with its privileges; no other grant changes.
-- Nothing stored is touched. Between this migration and the re-application of the two function
-- files (the same `inbox migrate`, moments later) an ingest fails as not migrated (HTTP 503,
-- `inbox consume` keeps its batch and retries) and stores nothing.
DROP FUNCTION IF EXISTS inbox.store_events(jsonb, uuid[], bigint[], boolean[], text, bigint[], boolean[],
    text[], text[], date[], numeric[], numeric[], text[], text[], timestamptz[]);
