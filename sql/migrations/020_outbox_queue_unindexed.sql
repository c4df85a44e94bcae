-- The outbox queue's insert without an expression index (issue 13): every message the apply
-- publishes paid for `message ->> 'quota_id'` and a random-order btree insert (4-5 us of PostgreSQL
-- CPU per message, a third of the message's insert) so that `inbox quota show` could find one
-- quota's unconsumed messages. The story now reads the newest messages of the queue by msg_id (its
-- primary key, bounded; it says when the queue holds more than it searched); the archive, written
-- once by the consumer rather than on the apply path, keeps its index (013).
DROP INDEX IF EXISTS pgmq.q_quota_changes_quota_id_idx;
