-- Named runtime queries. Each block starts with "-- name: <name>" and runs as one execute();
-- parameters use psycopg's %(name)s style. Logic lives in the functions of sql/migrations.

-- name: create_migrations_table
CREATE SCHEMA IF NOT EXISTS inbox;
CREATE TABLE IF NOT EXISTS inbox.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock_migrations
-- Session-level: one migrator at a time, across hosts.
SELECT pg_advisory_lock(7215830113390201);

-- name: unlock_migrations
SELECT pg_advisory_unlock(7215830113390201);

-- name: applied_migrations
SELECT version, name, checksum FROM inbox.schema_migrations ORDER BY version;

-- name: applied_migrations_if_any
SELECT version, name, checksum
FROM inbox.schema_migrations
WHERE to_regclass('inbox.schema_migrations') IS NOT NULL
ORDER BY version;

-- name: migrations_table_exists
SELECT to_regclass('inbox.schema_migrations') IS NOT NULL AS present;

-- name: record_migration
INSERT INTO inbox.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: pgmq_installed
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq') AS present;

-- name: pgmq_extension_available
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq') AS available;

-- name: create_pgmq_extension
CREATE EXTENSION IF NOT EXISTS pgmq;

-- name: server_version
SELECT current_setting('server_version_num')::integer AS version_num;

-- name: ingest_events
SELECT inbox.ingest_events(%(events)s::jsonb, %(quota_ids)s::uuid[], %(versions)s::bigint[],
                           %(is_delete)s::boolean[], %(source)s::text) AS inserted;

-- name: claim_events
SELECT quota_id, version, is_delete, payload, attempts
FROM inbox.claim_events(%(worker)s::text, %(limit)s::integer, %(lease)s::interval);

-- name: apply_events
SELECT applied, stale, dead, not_owned, published FROM inbox.apply_events(%(worker)s::text, %(events)s::jsonb);

-- name: release_events
SELECT retried, dead
FROM inbox.release_events(%(worker)s::text, %(keys)s::jsonb, %(error)s::text, %(max_attempts)s::integer,
                          %(backoff_base)s::interval, %(backoff_cap)s::interval);

-- name: reap_expired_leases
SELECT retried, dead
FROM inbox.reap_expired_leases(%(limit)s::integer, %(max_attempts)s::integer,
                               %(backoff_base)s::interval, %(backoff_cap)s::interval);

-- name: listen_for_events
LISTEN inbox_quota_events;

-- name: set_worker_session
SELECT set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('idle_in_transaction_session_timeout', %(idle_timeout)s, false),
       set_config('application_name', %(application_name)s, false);

-- name: ping
SELECT 1 AS ok;

-- name: quota_states
SELECT quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct, incoterm_code,
       metal_code, source_version, created_at, updated_at, source_updated_at
FROM public.quota
ORDER BY quota_id;

-- name: inbox_counts
SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY status ORDER BY status;

-- name: unresolved_dead_letters
SELECT id, quota_id, version, is_delete, error_class, error_message, retry_count, created_at
FROM public.quota_processing_errors
WHERE resolved_at IS NULL
ORDER BY created_at, id;

-- ---------------------------------------------------------------------------------------------
-- Outbox (pgmq queue quota_changes)

-- name: outbox_peek
-- Operators look without consuming: the queue table itself, newest last.
SELECT msg_id, enqueued_at, read_ct, message::text AS message_text
FROM pgmq.q_quota_changes
WHERE msg_id > %(after)s
ORDER BY msg_id
LIMIT %(limit)s;

-- name: outbox_last_msg_ids
SELECT coalesce(min(msg_id) - 1, 0) AS before_last
FROM (SELECT msg_id FROM pgmq.q_quota_changes ORDER BY msg_id DESC LIMIT %(limit)s) t;

-- name: outbox_read
SELECT msg_id, enqueued_at, read_ct, message::text AS message_text
FROM pgmq.read('quota_changes', %(vt)s::integer, %(limit)s::integer);

-- name: outbox_archive
SELECT pgmq.archive('quota_changes', %(msg_ids)s::bigint[]) AS archived;
