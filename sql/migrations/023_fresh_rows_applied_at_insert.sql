-- Issue 13 (path 4 PostgreSQL CPU): the apply at ingest stores its typed rows with their outcome.
-- inbox.ingest_typed_events (with p_apply_attempts) now inserts the typed rows of a call already as
-- applied (attempts 1, applied_at), applies them, and updates only the rows whose outcome differs
-- (stale, dead); should anything fail, the insert is rolled back with the apply and the rows are
-- stored pending as before (sql/functions/inbox.ingest_typed_events.sql). inbox.process_batch takes
-- p_fresh for that call: the rows are this transaction's own, stored as applied. A new argument is a
-- new function: the old one is dropped, and its file (the same `inbox migrate`, moments later)
-- creates the new one; the workers' call (seven arguments) reaches it unchanged. Between the two, an
-- apply fails as not migrated and the workers retry it. Nothing stored is touched.
DROP FUNCTION IF EXISTS inbox.process_batch(bigint, uuid[], bigint[], boolean[], text, text, integer);
