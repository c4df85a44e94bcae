-- The outbox: every effective change to public.quota is published to this pgmq queue
-- in the transaction that makes it.
SELECT pgmq.create('quota_changes');
