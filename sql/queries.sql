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

-- name: ingest_events
-- What was not new is counted for inbox_events_duplicate_total by the function itself.
SELECT inbox.ingest_events(%(events)s::jsonb, %(quota_ids)s::uuid[], %(versions)s::bigint[],
                           %(is_delete)s::boolean[], %(source)s::text, %(source_lsns)s::bigint[]) AS inserted;

-- name: ingest_typed_events
-- The arrays go in binary (the b placeholders): no quoting, no parsing of each value as text. The
-- two numeric columns go as arrays of decimal text (Queries.ingest_typed_events), cast here: psycopg
-- dumps a Decimal as binary numeric at about 1.3 us, its text at a fifth of that, and PostgreSQL
-- reads the digits exactly either way.
-- What was not new is counted for inbox_events_duplicate_total by the function itself. With
-- apply_attempts, the typed rows it stored are applied in the same transaction (the function says how).
SELECT inserted, finished
FROM inbox.ingest_typed_events(
         %(events)s::jsonb, %(quota_ids)b::uuid[], %(versions)b::bigint[], %(is_delete)b::boolean[],
         %(source)s::text, %(source_lsns)b::bigint[], %(typed)b::boolean[],
         %(counterparty_ids)b::text[], %(directions)b::text[], %(period_months)b::date[],
         %(qty_t)b::text[]::numeric[], %(tolerance_pct)b::text[]::numeric[], %(incoterm_codes)b::text[],
         %(metal_codes)b::text[], %(source_updated_at)b::timestamptz[], %(apply_attempts)s::integer);

-- name: apply_session
-- The apply session's identity, as the claim ledger and the reaper know it: held for the session's
-- life, the advisory lock on its random token says it is alive (inbox.claim_session_alive).
SELECT pg_backend_pid() AS backend_pid, %(token)s::bigint AS session_token
FROM pg_advisory_lock(%(token)s::bigint) l;

-- name: claim_batch
-- Inside the apply transaction: the claim is its row locks.
SELECT quota_ids, versions, is_delete FROM inbox.claim_batch(%(limit)s::integer);

-- name: record_claim
-- From the worker's second session, committed before the apply: who holds which keys.
-- Claims whose worker is gone are released first: their attempts are debts before this apply reads them.
SELECT inbox.record_claim(%(worker)s, %(backend_pid)s, %(session_token)s, %(quota_ids)b::uuid[],
                          %(versions)b::bigint[], %(is_delete)b::boolean[], %(max_attempts)s::integer,
                          %(backoff_base)s::interval, %(backoff_cap)s::interval) AS id;

-- name: drop_claim
-- A batch bisected to the end: every part committed or was given back on its own.
DELETE FROM inbox.claim_ledger WHERE id = %(ledger)s::bigint;

-- name: process_batch
SELECT applied, stale, dead, not_owned, published
FROM inbox.process_batch(%(ledger)s::bigint, %(quota_ids)b::uuid[], %(versions)b::bigint[],
                         %(is_delete)b::boolean[], %(error_class)s::text, %(error)s::text,
                         %(max_attempts)s::integer);

-- name: release_claim
SELECT retried, dead
FROM inbox.release_claim(%(ledger)s::bigint, %(quota_ids)b::uuid[], %(versions)b::bigint[],
                         %(is_delete)b::boolean[], %(error)s::text, %(max_attempts)s::integer,
                         %(backoff_base)s::interval, %(backoff_cap)s::interval);

-- name: reap_abandoned_claims
SELECT retried, dead
FROM inbox.reap_abandoned_claims(%(limit)s::integer, %(max_attempts)s::integer,
                                 %(backoff_base)s::interval, %(backoff_cap)s::interval);

-- name: untyped_keys
-- Due events stored without typed columns (before migration 015, by the sink trigger, by a replay,
-- by SQL by hand): the worker types them from their payload. Locked for the caller's transaction.
SELECT e.quota_id, e.version, e.is_delete
FROM inbox.quota_events e
WHERE e.status = 'pending' AND NOT e.typed AND e.next_attempt_at <= now()
ORDER BY e.next_attempt_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: untyped_payloads
-- The payloads, as text, of the untyped events the caller has locked, one row per key in the order
-- given. A plain statement, not a function: a set-returning function computes all its rows before
-- the first is sent, and this one must print each payload only as its row goes out, so that a worker
-- streaming the result (inbox/apply/worker.py: read_payloads) receives every row before one that
-- cannot be printed (the 1 GB string limit, statement_timeout) and knows which one failed. A
-- payload stored larger than max_bytes is not printed at all (payload NULL; stored_bytes says why).
-- Each row by primary key alone (LIMIT 1 keeps the planner from making it a join over a scan, and
-- from pushing the filter on status and typed into the lookup: with it, a generic plan made when
-- the statistics saw few untyped rows read the whole of quota_events_untyped_idx per key).
SELECT k.quota_id, k.version, k.is_delete, e.stored_bytes,
       CASE WHEN e.stored_bytes <= %(max_bytes)s::integer THEN e.payload::text END AS payload
FROM pg_catalog.jsonb_to_recordset(%(keys)s::jsonb) AS k(quota_id uuid, version bigint, is_delete boolean)
CROSS JOIN LATERAL (
    SELECT x.payload, pg_catalog.pg_column_size(x.payload) AS stored_bytes, x.status, x.typed
    FROM inbox.quota_events x
    WHERE (x.quota_id, x.version, x.is_delete) = (k.quota_id, k.version, k.is_delete)
    LIMIT 1
) e
WHERE e.status = 'pending' AND NOT e.typed;

-- name: type_events
-- The typed columns of untyped events, as the ingestor would have stored them (inbox/apply/prepare.py).
-- The rows are the caller's, locked by untyped_keys in its transaction: still pending and untyped.
-- By primary key alone: a filter on status and typed here would let a generic plan read all of
-- quota_events_untyped_idx per row (the predicate of that index; test_query_plans).
UPDATE inbox.quota_events e
SET typed = true, errors = t.errors, error_class = t.error_class, versionless = coalesce(t.versionless, false),
    source_lsn = coalesce(e.source_lsn, t.source_lsn), counterparty_id = t.counterparty_id,
    direction = t.direction, period_month = t.period_month, qty_t = t.qty_t, tolerance_pct = t.tolerance_pct,
    incoterm_code = t.incoterm_code, metal_code = t.metal_code, source_updated_at = t.source_updated_at
FROM pg_catalog.jsonb_to_recordset(%(rows)s::jsonb) AS t(
    quota_id uuid, version bigint, is_delete boolean, errors text[], error_class text, versionless boolean,
    source_lsn bigint, counterparty_id text, direction text, period_month date, qty_t numeric,
    tolerance_pct numeric, incoterm_code text, metal_code text, source_updated_at timestamptz)
WHERE (e.quota_id, e.version, e.is_delete) = (t.quota_id, t.version, t.is_delete);

-- name: listen_for_events
LISTEN inbox_quota_events;

-- name: notify_after_commit
-- This session's ingest transactions do not notify the workers: the session sends the hint itself,
-- after each commit (hint_workers). For the HTTP ingestor's pool (inbox.ingest_typed_events says why).
SELECT set_config('inbox.notify_after_commit', 'on', false);

-- name: hint_workers
-- The workers' wake-up hint (payload 'untyped' or ''), sent after the events' own commit, as a
-- transaction of its own (autocommit only: in an open transaction, set_config would make that
-- transaction's commit asynchronous) that does not wait for the disk: the NOTIFY lock is held only
-- while the commit record is written, and a hint lost in a crash costs a poll.
SELECT set_config('synchronous_commit', 'off', true), pg_notify('inbox_quota_events', %(payload)s);

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

-- name: commit_without_flush
-- This transaction's commit does not wait for its WAL to reach the disk (synchronous_commit off, for
-- this transaction only). Only for work derived from what is already durable: lost in a crash, it is
-- done again (the worker's typing of untyped rows). The next synchronous commit flushes it anyway.
SELECT set_config('synchronous_commit', 'off', true);

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
-- Kafka messages and HTTP items that could not be parsed or keyed (inbox.rejects, kept verbatim).
SELECT count(*) AS total,
       count(*) FILTER (WHERE received_at > now() - interval '1 hour') AS last_hour,
       count(*) FILTER (WHERE source = 'kafka') AS kafka,
       count(*) FILTER (WHERE source = 'http') AS http
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
-- Exact, through the pending partial index, the claim ledger (what workers hold: migration 015) and
-- the open dead letters' index.
SELECT (SELECT count(*) FROM inbox.quota_events WHERE status = 'pending')    AS pending,
       (SELECT coalesce(sum(cardinality(quota_ids)), 0)
        FROM inbox.claim_ledger)                                             AS processing,
       (SELECT extract(epoch FROM now() - min(received_at))::float8
        FROM inbox.quota_events WHERE status = 'pending')                    AS oldest_pending_age,
       (SELECT count(*) FROM public.quota_processing_errors
        WHERE resolved_at IS NULL)                                           AS dead_letters_unresolved,
       inbox.apply_latency_buckets()                                         AS latency_buckets;

-- ---------------------------------------------------------------------------------------------
-- Kafka consumer (inbox consume)

-- name: insert_request_rejects
-- Items of a POST /events request that could not be keyed, verbatim (the request stored the rest).
INSERT INTO inbox.rejects (source, raw, reason)
SELECT %(source)s::text, r.raw, r.reason
FROM unnest(%(raws)s::bytea[], %(reasons)s::text[]) AS r(raw, reason);

-- name: insert_rejects
-- Messages that could not be parsed or keyed, verbatim; a redelivered one is a no-op.
INSERT INTO inbox.rejects (source, topic, "partition", "offset", key, raw, headers, reason)
SELECT 'kafka', *
FROM unnest(%(topics)s::text[], %(partitions)s::integer[], %(offsets)s::bigint[], %(keys)s::bytea[],
            %(raws)s::bytea[], %(headers)s::jsonb[], %(reasons)s::text[])
ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- The story of one quota (inbox quota show): every read by key, newest first, at most `limit`
-- rows each (the caller asks for one more to know whether there are older ones).

-- name: read_only_snapshot
-- The first statement of a transaction whose reads must agree with each other.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: quota_show_row
SELECT quota_id, counterparty_id, direction, period_month, qty_t, tolerance_pct, incoterm_code,
       metal_code, source_version, source_updated_at, created_at, updated_at
FROM public.quota
WHERE quota_id = %(quota_id)s::uuid;

-- name: quota_show_gate
SELECT version, is_delete, previous_version, applied_at, source
FROM inbox.quota_versions
WHERE quota_id = %(quota_id)s::uuid;

-- name: quota_show_events
-- The primary key read backwards from the quota's highest version.
SELECT e.version, e.is_delete,
       coalesce(e.payload ->> 'eventType', e.payload -> 'payload' ->> 'op', e.payload ->> 'op',
                e.payload -> 'payload' ->> '__op', e.payload ->> '__op') AS op,
       e.source, e.status, e.attempts, e.received_at, e.applied_at, e.next_attempt_at,
       e.lease_owner, e.last_error
FROM inbox.quota_events e
WHERE e.quota_id = %(quota_id)s::uuid
ORDER BY e.version DESC, e.is_delete DESC
LIMIT %(limit)s;

-- name: quota_show_dead_letters
SELECT d.id, d.version, d.is_delete, d.error_class, d.error_message, d.retry_count, d.created_at,
       d.resolved_at, d.resolution_note
FROM public.quota_processing_errors d
WHERE d.quota_id = %(quota_id)s::uuid
ORDER BY d.version DESC, d.created_at DESC
LIMIT %(limit)s;

-- name: quota_show_queue_bound
-- The newest message of the outbox queue that the story does not search (NULL: it searches the whole
-- queue): the queue has no index by quota (migration 020), so the story reads its newest %(scan)s
-- messages by msg_id, its primary key.
SELECT (SELECT q.msg_id FROM pgmq.q_quota_changes q ORDER BY q.msg_id DESC OFFSET %(scan)s LIMIT 1) AS unsearched;

-- name: quota_show_outbox
-- The queue's messages after %(unsearched)s (quota_show_queue_bound), by its primary key; the
-- archive by the expression index of migration 013.
SELECT m.place, m.msg_id, m.enqueued_at, m.archived_at, m.read_ct, m.message
FROM (
    SELECT 'queue'::text AS place, q.msg_id, q.enqueued_at, NULL::timestamptz AS archived_at, q.read_ct,
           q.message
    FROM pgmq.q_quota_changes q
    WHERE q.msg_id > coalesce(%(unsearched)s::bigint, -1) AND q.message ->> 'quota_id' = %(quota_id)s::text
    UNION ALL
    SELECT 'archive', a.msg_id, a.enqueued_at, a.archived_at, a.read_ct, a.message
    FROM pgmq.a_quota_changes a
    WHERE a.message ->> 'quota_id' = %(quota_id)s::text
) m
ORDER BY m.msg_id DESC
LIMIT %(limit)s;

-- name: quota_show_repairs
SELECT r.run_id, r.drift, r.versions, r.columns, r.version, r.is_delete, r.outcome, r.note, r.csla,
       r.replaced, r.filed_at
FROM inbox.reconcile_repairs r
WHERE r.quota_id = %(quota_id)s::uuid
ORDER BY r.filed_at DESC, r.id DESC
LIMIT %(limit)s;

-- ---------------------------------------------------------------------------------------------
-- Reconcile (inbox reconcile): Titan's truth streamed into a temp table with COPY, compared by
-- inbox.quota_drift (sql/functions) into another, streamed out, repaired in batches.

-- name: reconcile_create_source
-- Titan's column names, so that inbox.quota_drift reads it as it reads a DBA's copy of Titan's table.
CREATE TEMP TABLE reconcile_source (
    item            bigint      NOT NULL,
    quota_id        uuid        NOT NULL,
    version         bigint      NOT NULL,
    is_delete       boolean     NOT NULL,
    invalid         text        NULL,
    counterparty_id text        NULL,
    direction       text        NULL,
    period_month    date        NULL,
    qty_t           numeric     NULL,
    tolerance_pct   numeric     NULL,
    incoterm_code   text        NULL,
    metal_code      text        NULL,
    updated_at      timestamptz NULL
);

-- name: reconcile_copy_source
COPY pg_temp.reconcile_source (item, quota_id, version, is_delete, invalid, counterparty_id, direction,
                               period_month, qty_t, tolerance_pct, incoterm_code, metal_code, updated_at)
FROM STDIN;

-- name: reconcile_analyze_source
-- Temp tables are never analyzed by autovacuum: without statistics the comparison is planned blind.
ANALYZE pg_temp.reconcile_source;

-- name: reconcile_compare
CREATE TEMP TABLE reconcile_drift AS
SELECT d.* FROM inbox.quota_drift('pg_temp.reconcile_source') d;

-- name: reconcile_index_drift
CREATE UNIQUE INDEX ON pg_temp.reconcile_drift (quota_id);

-- name: reconcile_counts
SELECT (SELECT count(*) FROM pg_temp.reconcile_source)                    AS source_rows,
       (SELECT count(DISTINCT s.quota_id) FROM pg_temp.reconcile_source s) AS source_quotas,
       (SELECT count(*) FROM public.quota)                                  AS csla_quotas;

-- name: reconcile_drift_counts
SELECT d.drift, d.versions, count(*) AS quotas
FROM pg_temp.reconcile_drift d
GROUP BY d.drift, d.versions
ORDER BY d.drift, d.versions;

-- name: reconcile_drift_rows
SELECT d.quota_id, d.drift, d.versions, d.columns, d.source_version, d.source_deleted, d.csla_version,
       d.gate_version, d.gate_deleted, d.source, d.csla, d.invalid
FROM pg_temp.reconcile_drift d
ORDER BY d.quota_id;

-- name: reconcile_file_repairs
-- One batch of the drift (the quotas after `after`, in quota_id order), filed through the inbox in one
-- transaction as Titan events of source 'reconcile', built from the source's columns:
--   missing, differs  an UPDATE at the source's version
--   extra             a DELETE at the source's delete version, or (absent from the source) at CSLA's
--                     version: (v, delete) ranks above the upsert (v) the gate holds
--   ahead, invalid    nothing (the note says why)
-- At the key of a finished inbox event (applied, stale, dead) the repair takes that row over,
-- pending again (as a dead-letter replay does), and resolves its open dead letter; the replaced
-- row's summary is kept in inbox.reconcile_repairs. An event pending or in hand at that key is left
-- to the workers (in_flight). Every drift acted on is logged in inbox.reconcile_repairs.
WITH batch AS (
    SELECT d.*
    FROM pg_temp.reconcile_drift d
    WHERE d.quota_id > %(after)s::uuid
    ORDER BY d.quota_id
    LIMIT %(limit)s
),
planned AS (
    SELECT b.*,
           CASE WHEN b.drift <> 'invalid' AND b.versions IS DISTINCT FROM 'ahead'
                THEN coalesce(b.source_version, b.gate_version, b.csla_version)
           END                    AS repair_version,
           b.drift = 'extra'      AS repair_delete,
           CASE WHEN b.drift = 'invalid' THEN 'the source row breaks CSLA''s rules: ' || b.invalid
                WHEN b.versions = 'ahead' THEN
                    format('CSLA is ahead of the source (v%%s%%s applied, the source has v%%s%%s): an older '
                           'truth is never filed; check the source', coalesce(b.gate_version, b.csla_version),
                           CASE WHEN b.gate_deleted THEN ' delete' ELSE '' END, b.source_version,
                           CASE WHEN b.source_deleted THEN ' delete' ELSE '' END)
           END                    AS note
    FROM batch b
),
existing AS (
    SELECT e.quota_id, e.version, e.is_delete, e.source, e.status, e.attempts, e.received_at,
           e.applied_at, e.last_error
    FROM planned p
    JOIN inbox.quota_events e
      ON (e.quota_id, e.version, e.is_delete) = (p.quota_id, p.repair_version, p.repair_delete)
    FOR UPDATE OF e
),
filed AS (
    INSERT INTO inbox.quota_events AS e (quota_id, version, is_delete, payload, source)
    SELECT p.quota_id, p.repair_version, p.repair_delete,
           jsonb_build_object(
               'eventType', CASE WHEN p.repair_delete THEN 'DELETE' ELSE 'UPDATE' END,
               'data', CASE WHEN p.repair_delete THEN jsonb_build_object('quota_id', p.quota_id)
                            ELSE (p.source - 'source_updated_at')
                                 || jsonb_build_object('quota_id', p.quota_id,
                                                       'updated_at', p.source -> 'source_updated_at')
                       END,
               'metadata', jsonb_build_object('version', p.repair_version, 'source', 'reconcile',
                                              'timestamp', now(), 'reconcile_run', %(run_id)s::uuid,
                                              'drift', p.drift)),
           'reconcile'
    FROM planned p
    WHERE p.repair_version IS NOT NULL
      -- An init plan, run before the first insert: every row to replace is read (and locked) as it
      -- was. Read lazily after the ON CONFLICT update of its row, FOR UPDATE would skip it.
      AND (SELECT count(*) FROM existing) >= 0
    ORDER BY p.quota_id
    ON CONFLICT (quota_id, version, is_delete) DO UPDATE
        SET payload = excluded.payload, source = 'reconcile', status = 'pending', attempts = 0,
            received_at = now(), next_attempt_at = now(), last_error = NULL, applied_at = NULL,
            typed = false  -- a new payload: typed by the worker (migration 015)
        WHERE e.status IN ('applied', 'stale', 'dead')
    RETURNING e.quota_id
),
resolved AS (
    UPDATE public.quota_processing_errors d
    SET resolved_at = now(),
        resolution_note = format('replaced by inbox reconcile --repair (run %%s)', %(run_id)s::uuid)
    FROM existing x
    JOIN filed f USING (quota_id)
    WHERE (d.quota_id, d.version, d.is_delete) = (x.quota_id, x.version, x.is_delete)
      AND d.resolved_at IS NULL
    RETURNING d.quota_id, d.id
),
logged AS (
    INSERT INTO inbox.reconcile_repairs (
        run_id, quota_id, drift, versions, columns, version, is_delete, outcome, note, csla, replaced)
    SELECT %(run_id)s::uuid, p.quota_id, p.drift, p.versions, p.columns,
           CASE WHEN f.quota_id IS NOT NULL THEN p.repair_version END,
           CASE WHEN f.quota_id IS NOT NULL THEN p.repair_delete END,
           CASE WHEN p.repair_version IS NULL THEN 'not_repaired'
                WHEN f.quota_id IS NULL THEN 'in_flight'
                WHEN x.quota_id IS NOT NULL THEN 'refiled'
                ELSE 'filed'
           END,
           coalesce(p.note,
                    CASE WHEN f.quota_id IS NULL THEN
                        format('v%%s%%s is %%s in the inbox: the workers apply it', p.repair_version,
                               CASE WHEN p.repair_delete THEN ' delete' ELSE '' END,
                               coalesce(x.status, 'being filed'))
                    END,
                    CASE WHEN r.id IS NOT NULL THEN format('resolved dead letter %%s', r.id) END),
           p.csla,
           CASE WHEN x.quota_id IS NOT NULL AND f.quota_id IS NOT NULL THEN
               jsonb_build_object('source', x.source, 'status', x.status, 'attempts', x.attempts,
                                  'received_at', x.received_at, 'applied_at', x.applied_at,
                                  'last_error', x.last_error)
           END
    FROM planned p
    LEFT JOIN filed f USING (quota_id)
    LEFT JOIN existing x USING (quota_id)
    LEFT JOIN resolved r USING (quota_id)
    RETURNING outcome
),
-- a new row (filed) and a finished row taken over, pending again (refiled): ingested from 'reconcile'
-- (no trigger counts the inbox's inserts since migration 018, nor its status changes since 016)
counted AS (
    SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['reconcile'], ARRAY[count(*)::float8])
    FROM logged l
    WHERE l.outcome IN ('filed', 'refiled')
)
SELECT (SELECT b.quota_id FROM batch b ORDER BY b.quota_id DESC LIMIT 1) AS last_quota_id,
       count(*) FILTER (WHERE l.outcome = 'filed')        AS filed,
       count(*) FILTER (WHERE l.outcome = 'refiled')      AS refiled,
       count(*) FILTER (WHERE l.outcome = 'in_flight')    AS in_flight,
       count(*) FILTER (WHERE l.outcome = 'not_repaired') AS not_repaired
FROM logged l, counted;

-- name: wake_workers
-- The hint for rows filed untyped (reconcile's repairs): idle workers type them and claim now.
SELECT pg_notify('inbox_quota_events', 'untyped');

-- name: open_unplaceable_deletes
-- Deletes that carried no version and could not be ordered (inbox.apply_events): each is an alert.
SELECT count(*) AS open, min(created_at) AS oldest
FROM public.quota_processing_errors
WHERE resolved_at IS NULL AND error_class = 'delete_unplaceable';
