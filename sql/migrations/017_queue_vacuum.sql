-- Issue 13, the soak: keep the inbox's files bounded while events stream through it.
--
-- Every event leaves two dead row versions in inbox.quota_events (the mark, a non-HOT update, and
-- retention's delete) and two index entries in each of its full indexes. Autovacuum visits a
-- database once per autovacuum_naptime (1 min by default), so between two visits the table gains
-- about a minute of events' worth of dead rows; a vacuum makes that room reusable. Throttled by the
-- default cost limit (autovacuum_vacuum_cost_delay 2 ms per 200 units), the vacuum of a table and
-- four indexes that grew takes longer than the minute, the next one starts later still, and the
-- files grow with every lap: the feedback loop behind the soak's 2,453 MB for 0 rows (README,
-- Performance). This table is a queue: its vacuum runs unthrottled, like a manual VACUUM, so each
-- visit finishes and the files stop at the size of one visit's churn plus the retention window.
ALTER TABLE inbox.quota_events SET (autovacuum_vacuum_cost_delay = 0);

-- One insert and one delete per batch, each row ~12 kB of key arrays (TOASTed): 015 let 1,000 dead
-- rows (about 12 MB of TOAST) pile up between vacuums of a table that holds a handful of live rows.
ALTER TABLE inbox.claim_ledger SET (autovacuum_vacuum_threshold = 100, autovacuum_vacuum_cost_delay = 0);
