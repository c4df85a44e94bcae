-- The status counter trigger (006) pairs each new row with its old row by joining the two
-- transition tables. In a PL/pgSQL trigger that statement is planned once per session, for the size
-- of the first batch it sees: a worker whose first batch held a few rows kept a nested loop, 250,000
-- comparisons for every 500-row batch after it; the trigger then cost 19 ms per batch instead of
-- 1.2, and the apply a third of its throughput (README, Performance). Without nested loops the pair
-- is a hash or merge join, linear whatever the first batch was (tests/integration/test_query_plans.py).
--
-- The join stays: only the old row tells a status change from an update that changed something
-- else (an operator moving next_attempt_at, say), which must count nothing.
ALTER FUNCTION inbox.count_status_changes() SET enable_nestloop = off;
