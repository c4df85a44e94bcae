-- Issue 13: the apply's counts once per batch, not from a trigger on the mark.
--
-- The statement trigger on every UPDATE of inbox.quota_events captured each marked row twice (old
-- and new transition tables) and paired them to count status changes. Its writers now count
-- themselves: inbox.process_batch (applied, stale, the apply latency: inbox.count_finished),
-- inbox.store_events (a finished row replaced by a newer change with the same key: ingested),
-- inbox.replay_dead_letters and `inbox reconcile --repair` (a finished row pending again: ingested).
-- The insert and dead-letter triggers stay (one statement each, counting rows inserted).
-- Nothing is rewritten: every stored event, dead letter and counter stays as it is.
DROP TRIGGER IF EXISTS quota_events_count_status_changes ON inbox.quota_events;
DROP FUNCTION IF EXISTS inbox.count_status_changes();
