-- Named runtime queries. Each block starts with "-- name: <name>" and runs as one execute();
-- parameters use psycopg's %(name)s style. Logic lives in the functions of sql/functions.

-- name: create_migrations_table
CREATE SCHEMA IF NOT EXISTS inbox;
CREATE TABLE IF NOT EXISTS inbox.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: try_lock_migrations
-- Session-level: one migrator at a time, across hosts. Tried, not waited for: any role that can
-- connect may take an advisory lock, so a holder that never lets go must not hang `inbox migrate`.
SELECT pg_catalog.pg_try_advisory_lock(7215830113390201) AS locked;

-- name: migration_lock_holder
-- Who holds the lock of try_lock_migrations (a bigint key: classid is its high half, objid its low).
SELECT l.pid, a.usename, a.application_name, a.client_addr::text AS client_addr, a.backend_start
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
          SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
  AND l.classid = (7215830113390201 >> 32)::oid AND l.objid = (7215830113390201 & 4294967295)::oid
  AND l.objsubid = 1;

-- name: unlock_migrations
SELECT pg_advisory_unlock(7215830113390201);

-- name: applied_migrations
SELECT version, name, checksum FROM inbox.schema_migrations ORDER BY version;

-- name: migrations_table_exists
SELECT to_regclass('inbox.schema_migrations') IS NOT NULL AS present;

-- name: record_migration
INSERT INTO inbox.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: schemas_others_may_create_in
-- Who besides the schema's owner (and its members) and superusers may CREATE in public or inbox:
-- such a role could plant a function or operator that a caller's search_path picks up.
SELECT n.nspname AS schema,
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a
               WHERE a.grantee = 0 AND a.privilege_type = 'CREATE') AS public_may_create,
       ARRAY(SELECT r.rolname::text
             FROM pg_roles r
             WHERE NOT r.rolsuper
               AND has_schema_privilege(r.oid, n.oid, 'CREATE')
               AND NOT pg_has_role(r.oid, n.nspowner, 'MEMBER')
               AND NOT pg_has_role(r.oid, current_user, 'MEMBER')
             ORDER BY r.rolname) AS roles
FROM pg_namespace n
WHERE n.nspname IN ('public', 'inbox')
ORDER BY n.nspname;

-- name: applied_object_files
SELECT file, checksum FROM inbox.schema_objects ORDER BY file;

-- name: pin_search_path_locally
-- Object files are created with nothing but pg_catalog on the path: every other name is qualified.
SET LOCAL search_path = pg_catalog, pg_temp;

-- name: record_object_file
INSERT INTO inbox.schema_objects AS o (file, checksum)
VALUES (%(file)s, %(checksum)s)
ON CONFLICT (file) DO UPDATE SET checksum = excluded.checksum, applied_at = now();

-- name: forget_object_files
-- Files this version no longer ships: a numbered migration dropped what they defined.
DELETE FROM inbox.schema_objects WHERE NOT (file = ANY (%(files)s::text[])) RETURNING file;

-- name: pgmq_installed
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq') AS present;

-- name: pgmq_extension_available
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq') AS available;

-- name: create_pgmq_extension
CREATE EXTENSION IF NOT EXISTS pgmq;

-- name: server_version
SELECT current_setting('server_version_num')::integer AS version_num;

-- name: ingest_events
-- What was not new is counted for inbox_events_duplicate_total by the function itself.
SELECT inbox.ingest_events(%(events)s::jsonb, %(quota_ids)s::uuid[], %(versions)s::bigint[],
                           %(is_delete)s::boolean[], %(source)s::text) AS inserted;

-- name: claim_events
-- Keys only: the payloads are read next, by claimed_payloads.
SELECT quota_id, version, is_delete, attempts
FROM inbox.claim_events(%(worker)s::text, %(limit)s::integer, %(lease)s::interval);

-- name: claimed_payloads
-- The payloads, as text, of the events this worker holds, one row per key in the order given. A
-- plain statement, not a function: a set-returning function computes all its rows before the first
-- is sent, and this one must print each payload only as its row goes out, so that a worker
-- streaming the result (inbox/apply/worker.py: read_payloads) receives every row before one that
-- cannot be printed (the 1 GB string limit, statement_timeout) and knows which one failed. A
-- payload stored larger than max_bytes is not printed at all (payload NULL; stored_bytes says why).
-- Each row by primary key (LIMIT 1 keeps the planner from making it a join over a scan).
SELECT k.quota_id, k.version, k.is_delete, e.stored_bytes,
       CASE WHEN e.stored_bytes <= %(max_bytes)s::integer THEN e.payload::text END AS payload
FROM pg_catalog.jsonb_to_recordset(%(keys)s::jsonb) AS k(quota_id uuid, version bigint, is_delete boolean)
CROSS JOIN LATERAL (
    SELECT x.payload, pg_catalog.pg_column_size(x.payload) AS stored_bytes
    FROM inbox.quota_events x
    WHERE (x.quota_id, x.version, x.is_delete) = (k.quota_id, k.version, k.is_delete)
      AND x.status = 'processing' AND x.lease_owner = %(worker)s::text
    LIMIT 1
) e;

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

-- ---------------------------------------------------------------------------------------------
-- Operations (migration 006): status, dead letters, retention, alerts, metrics

-- name: status_by_state
SELECT status, events, exact FROM inbox.v_status;

-- name: status_lag
SELECT * FROM inbox.v_lag;

-- name: status_exact_counts
-- Every state counted (v_status estimates the finished ones on a large table); `inbox status` runs
-- it under a statement_timeout and falls back to v_status with the age of its statistics.
SELECT s.status, count(e.status) AS events, true AS exact
FROM unnest(ARRAY['pending', 'processing', 'applied', 'stale', 'dead']) WITH ORDINALITY AS s(status, n)
LEFT JOIN inbox.quota_events e ON e.status = s.status
GROUP BY s.status, s.n
ORDER BY s.n;

-- name: set_local_statement_timeout
SELECT set_config('statement_timeout', %(timeout)s::text, true);

-- name: status_statistics
-- How old the statistics behind v_status's estimates are.
SELECT greatest(t.last_analyze, t.last_autoanalyze) AS analyzed_at, t.n_mod_since_analyze AS changed_since
FROM pg_stat_user_tables t
WHERE t.relid = 'inbox.quota_events'::regclass;

-- name: status_processed
-- Exact flows from the counters the triggers of migration 006 keep (inbox.metric_counters): events
-- received, applied, rejected as stale, dead-lettered and retried, in the last hour and since install.
SELECT m.metric,
       round(inbox.counter_window(m.metric, '1 hour'))::bigint AS last_hour,
       (SELECT coalesce(round(sum(c.value)), 0)::bigint
        FROM inbox.metric_counters c WHERE c.metric = m.metric) AS since_install
FROM unnest(ARRAY['ingested', 'applied', 'stale', 'dead', 'retried']) WITH ORDINALITY AS m(metric, n)
ORDER BY m.n;

-- name: status_dead_letters_by_class
SELECT error_class, count(*) AS dead_letters, min(created_at) AS oldest
FROM public.quota_processing_errors
WHERE resolved_at IS NULL
GROUP BY error_class
ORDER BY error_class;

-- name: status_rejects
-- Kafka messages that could not be parsed or keyed (inbox.rejects, kept verbatim).
SELECT count(*) AS total,
       count(*) FILTER (WHERE received_at > now() - interval '1 hour') AS last_hour
FROM inbox.rejects;

-- name: database_now
SELECT now() AS now;

-- name: dlq_list
SELECT id, quota_id, version, is_delete, event_type, error_class, retry_count, created_at,
       resolved_at, resolution_note, inbox_status, applied_version, superseded,
       left(error_message, 500) AS error_message, length(error_message) AS error_length
FROM inbox.v_dead_letters
WHERE (resolved_at IS NULL OR %(include_resolved)s)
  AND (%(quota_id)s::uuid IS NULL OR quota_id = %(quota_id)s::uuid)
  AND (%(error_class)s::text IS NULL OR error_class = %(error_class)s::text)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: dlq_show
SELECT * FROM inbox.v_dead_letters WHERE id = %(id)s::uuid;

-- name: dlq_replay
SELECT id, quota_id, version, is_delete, outcome
FROM inbox.replay_dead_letters(%(ids)s::uuid[], %(note)s::text);

-- name: dlq_replay_matching
-- One batch of the open dead letters that match; created_at <= until keeps an event that dies
-- again during the replay from being picked up again.
SELECT id, quota_id, version, is_delete, outcome
FROM inbox.replay_dead_letters(
    ARRAY(SELECT d.id
          FROM public.quota_processing_errors d
          WHERE d.resolved_at IS NULL
            AND d.created_at <= %(until)s::timestamptz
            AND (%(quota_id)s::uuid IS NULL OR d.quota_id = %(quota_id)s::uuid)
            AND (%(error_class)s::text IS NULL OR d.error_class = %(error_class)s::text)
            AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s::timestamptz)
          ORDER BY d.created_at, d.id
          LIMIT %(limit)s),
    %(note)s::text);

-- name: dlq_error_classes
-- The error classes stored so far (the open index answers for open ones; resolved ones are few).
SELECT DISTINCT error_class FROM public.quota_processing_errors ORDER BY error_class;

-- name: dlq_replay_ended
-- Where replayed events are now: their inbox row's state and, if one died again, its new open
-- dead letter (replay resolved the old one, so an open letter for the key is a new one).
SELECT k.quota_id, k.version, k.is_delete, e.status AS inbox_status,
       (SELECT d.id FROM public.quota_processing_errors d
        WHERE (d.quota_id, d.version, d.is_delete) = (k.quota_id, k.version, k.is_delete)
          AND d.resolved_at IS NULL
        ORDER BY d.created_at DESC
        LIMIT 1) AS dead_letter_id
FROM jsonb_to_recordset(%(keys)s::jsonb) AS k(quota_id uuid, version bigint, is_delete boolean)
LEFT JOIN inbox.quota_events e USING (quota_id, version, is_delete);

-- name: worker_sessions
-- Connected worker sessions (application_name 'quota-inbox host:pid:n', as v_lag counts them).
SELECT count(*) AS sessions
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name LIKE 'quota-inbox %%:%%:%%';

-- name: dlq_resolve
SELECT inbox.resolve_dead_letter(%(id)s::uuid, %(note)s::text) AS resolved_at;

-- name: dead_letters_for_keys
-- The open dead letters of these events (the unique partial index on the key answers it).
SELECT d.quota_id, d.version, d.is_delete, d.event_type, d.error_class, d.retry_count,
       left(d.error_message, 500) AS error_message
FROM inbox.v_dead_letters d
JOIN jsonb_to_recordset(%(keys)s::jsonb) AS k(quota_id uuid, version bigint, is_delete boolean)
    USING (quota_id, version, is_delete)
WHERE d.resolved_at IS NULL;

-- name: dead_letters_of_this_transaction
-- Run inside the transaction that wrote them: created_at defaults to now(), the transaction's start.
SELECT d.quota_id, d.version, d.is_delete, d.event_type, d.error_class, d.retry_count,
       left(d.error_message, 500) AS error_message
FROM inbox.v_dead_letters d
WHERE d.resolved_at IS NULL AND d.created_at = now();

-- name: purge_finished_events
SELECT inbox.purge_finished_events(%(older_than)s::interval, %(limit)s::integer) AS purged;

-- name: purge_history
SELECT rejects, dead_letters, gates
FROM inbox.purge_history(%(older_than)s::interval, %(gates_older_than)s::interval, %(limit)s::integer);

-- name: check_dead_letter_rate
SELECT dead_letters, by_class, msg_id
FROM inbox.check_dead_letter_rate(%(window)s::interval, %(threshold)s::integer);

-- name: publish_alert
SELECT inbox.publish_alert(%(alert)s::text, %(message)s::jsonb, %(renotify)s::interval) AS msg_id;

-- name: fold_counters
SELECT inbox.fold_counters() AS folded;

-- name: metrics_counters
SELECT metric, label, sum(value) AS value
FROM inbox.metric_counters
GROUP BY metric, label;

-- name: metrics_gauges
-- Exact, through the pending and processing partial indexes and the open dead letters' index.
SELECT (SELECT count(*) FROM inbox.quota_events WHERE status = 'pending')    AS pending,
       (SELECT count(*) FROM inbox.quota_events WHERE status = 'processing') AS processing,
       (SELECT extract(epoch FROM now() - min(received_at))::float8
        FROM inbox.quota_events WHERE status = 'pending')                    AS oldest_pending_age,
       (SELECT count(*) FROM public.quota_processing_errors
        WHERE resolved_at IS NULL)                                           AS dead_letters_unresolved,
       inbox.apply_latency_buckets()                                         AS latency_buckets;

-- ---------------------------------------------------------------------------------------------
-- Kafka consumer (inbox consume)

-- name: insert_rejects
-- Messages that could not be parsed or keyed, verbatim; a redelivered one is a no-op.
INSERT INTO inbox.rejects (topic, "partition", "offset", key, raw, headers, reason)
SELECT *
FROM unnest(%(topics)s::text[], %(partitions)s::integer[], %(offsets)s::bigint[], %(keys)s::bytea[],
            %(raws)s::bytea[], %(headers)s::jsonb[], %(reasons)s::text[])
ON CONFLICT DO NOTHING;
