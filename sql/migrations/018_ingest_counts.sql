-- Issue 13: the ingest's counts once per batch, not from a trigger on the insert.
--
-- The statement trigger on every INSERT into inbox.quota_events built a transition table of the
-- inserted rows to count them as ingested, per source. Its three writers now count their own new
-- rows in the one inbox.add_counters call each already makes: inbox.store_events (both ingest
-- functions, the JDBC sink's trigger), inbox.replay_dead_letters (reinserted) and `inbox reconcile
-- --repair` (filed). /metrics shows the same figures. The dead-letter trigger
-- (public.quota_processing_errors) stays.
-- Nothing is rewritten: every stored event and counter stays as it is. Events stored between this
-- migration and the re-application of sql/functions/inbox.store_events.sql (the same `inbox migrate`,
-- moments later) are kept but not counted as ingested; a row inserted by hand (as the owner, outside
-- these functions) is not counted either.
DROP TRIGGER IF EXISTS quota_events_count_inserted ON inbox.quota_events;
DROP FUNCTION IF EXISTS inbox.count_inserted_events();
