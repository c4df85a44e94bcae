-- -------------------------------------------------------------------------------------------------
-- View: inbox.v_lag (one row: backlog, age, flow, why)
--
-- Reads:       inbox.quota_events, inbox.claim_ledger, inbox.counter_window(), pg_stat_activity, pg_stat_user_tables
-- Writes:      -
-- Called by:   query status_lag (`inbox status`); DBAs (SELECT: inbox_readonly)
-- -------------------------------------------------------------------------------------------------
-- How far behind, and the usual reasons why: one row.
--   backlog:  pending (due now / waiting for a retry; claimed events included), processing (in
--             claimed batches, from inbox.claim_ledger; and those of workers already gone)
--   age:      oldest pending event since received; how long the oldest due event has waited
--   flow:     received and processed in the last 1 and 5 minutes (from the counters), and the
--             time to drain what is due at the last 5 minutes' pace
--   why:      worker sessions connected, distinct lease holders, the oldest open transaction in
--             this database (it pins the xmin horizon: dead rows pile up, SKIP LOCKED slows),
--             dead tuples in the inbox and when autovacuum last got to it
DROP VIEW IF EXISTS inbox.v_lag;
CREATE VIEW inbox.v_lag AS
WITH pending AS (
    SELECT count(*)                                                           AS pending,
           count(*) FILTER (WHERE e.next_attempt_at <= now())                 AS due,
           count(*) FILTER (WHERE e.next_attempt_at > now() AND e.attempts > 0) AS waiting_retry,
           min(e.received_at)                                                 AS oldest_received_at,
           min(e.next_attempt_at) FILTER (WHERE e.next_attempt_at <= now())   AS oldest_due_at
    FROM inbox.quota_events e
    WHERE e.status = 'pending'
),
-- in workers' hands: the claim ledger (migration 015: a claim writes no row of the inbox).
-- expired_leases: events of claims whose apply session is gone, not reaped yet; lease_holders:
-- workers holding a claim.
processing AS (
    SELECT coalesce(sum(cardinality(l.quota_ids)), 0)::bigint                 AS processing,
           coalesce(sum(cardinality(l.quota_ids))
                        FILTER (WHERE NOT inbox.claim_session_alive(l.session_token)), 0)::bigint
                                                                              AS expired_leases,
           count(DISTINCT l.worker)                                           AS lease_holders
    FROM inbox.claim_ledger l
),
flow AS (
    SELECT inbox.counter_window('ingested', '1 minute')  AS received_1m,
           inbox.counter_window('ingested', '5 minutes') AS received_5m,
           inbox.counter_window('applied', '1 minute')   AS applied_1m,
           inbox.counter_window('applied', '5 minutes')  AS applied_5m,
           inbox.counter_window('stale', '5 minutes')    AS stale_5m,
           inbox.counter_window('dead', '5 minutes')     AS dead_5m
),
sessions AS (
    SELECT count(*) FILTER (WHERE a.application_name LIKE 'quota-inbox %:%:%') AS worker_sessions,
           max(now() - a.xact_start) FILTER (WHERE a.backend_xmin IS NOT NULL
                                             AND a.pid <> pg_backend_pid())  AS oldest_xact_age
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
),
vacuum AS (
    SELECT t.n_dead_tup                                  AS dead_tuples,
           greatest(t.last_vacuum, t.last_autovacuum)    AS last_vacuum_at
    FROM pg_stat_user_tables t
    WHERE t.relid = 'inbox.quota_events'::regclass
)
SELECT p.pending, p.due, p.waiting_retry, r.processing, r.expired_leases,
       p.oldest_received_at,
       now() - p.oldest_received_at                                          AS oldest_pending_age,
       now() - p.oldest_due_at                                               AS oldest_due_wait,
       round(f.received_1m)::bigint AS received_1m, round(f.received_5m)::bigint AS received_5m,
       round(f.applied_1m)::bigint  AS applied_1m,  round(f.applied_5m)::bigint  AS applied_5m,
       round(f.stale_5m)::bigint    AS stale_5m,    round(f.dead_5m)::bigint     AS dead_5m,
       CASE WHEN f.applied_5m + f.stale_5m + f.dead_5m > 0
            THEN round(p.due / ((f.applied_5m + f.stale_5m + f.dead_5m) / 300.0))::bigint
       END                                                                   AS drain_eta_seconds,
       s.worker_sessions, r.lease_holders, s.oldest_xact_age,
       v.dead_tuples, v.last_vacuum_at
FROM pending p, processing r, flow f, sessions s
LEFT JOIN vacuum v ON true;

GRANT SELECT ON inbox.v_lag TO inbox_readonly;
