-- Baseline: the tables, indexes, roles, grants and queues of migrations 001-010, squashed (issue 14).
--
-- A fresh database starts here; a database that recorded 001-010 already has all of this and skips
-- it (inbox/db/migrate.py accepts the checksums those files had; docs/upgrading.md). Functions,
-- views and triggers are not here: their current text lives in sql/functions, applied after the
-- numbered migrations. The stand-ins at the end exist only because 012 and 014, written against the
-- functions of 001-010, drop or revoke them by signature.
--
-- The statements below are those of 001-010 in their order (the three roles in one loop), less the
-- function, view and trigger bodies and the grants on them; nothing of 001-010 changed a table's
-- columns or constraints after creating it, so each table is created here exactly as it was then (same columns in the same order, same constraint
-- and index names), and a fresh install and an upgraded one end with identical catalogs
-- (tests/integration/test_schema_objects.py).

-- ---------------------------------------------------------------------------------------------
-- CSLA tables (001), with the seed's names, in the public schema.
-- Quantities are unconstrained NUMERIC: exact, whatever scale Titan sends.

CREATE TABLE public.quota (
    quota_id          uuid        PRIMARY KEY,
    counterparty_id   text        NOT NULL CHECK (counterparty_id <> ''),
    direction         text        NOT NULL CHECK (direction IN ('BUY', 'SELL')),
    -- always the first day of its month
    period_month      date        NOT NULL CHECK (extract(day FROM period_month) = 1),
    qty_t             numeric     NOT NULL CHECK (qty_t > 0 AND qty_t <> 'Infinity'),
    tolerance_pct     numeric     NULL CHECK (tolerance_pct BETWEEN 0 AND 100),
    incoterm_code     text        NULL,
    metal_code        text        NOT NULL CHECK (metal_code <> ''),
    -- set once, when the quota first appears; updates never touch it
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- the Titan version last applied to this row, and Titan's own updated_at
    source_version    bigint      NOT NULL CHECK (source_version >= 0),
    source_updated_at timestamptz NULL
);

CREATE TABLE public.call_off (
    call_off_id  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- RESTRICT: a quota with call-offs cannot disappear underneath them
    quota_id     uuid        NOT NULL REFERENCES public.quota (quota_id) ON DELETE RESTRICT,
    qty_t        numeric     NOT NULL CHECK (qty_t > 0 AND qty_t <> 'Infinity'),
    status       text        NOT NULL DEFAULT 'open',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_off_quota_id_idx ON public.call_off (quota_id);

-- Dead letters: the seed's columns, plus the key and a class for triage.
CREATE TABLE public.quota_processing_errors (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event_data    jsonb       NOT NULL,
    error_message text        NOT NULL,
    error_stack   text        NULL,
    retry_count   integer     NOT NULL DEFAULT 0,
    resolved_at   timestamptz NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    quota_id      uuid        NOT NULL,
    version       bigint      NOT NULL,
    is_delete     boolean     NOT NULL,
    error_class   text        NOT NULL,
    resolution_note text      NULL
);
CREATE INDEX idx_quota_errors_unresolved
    ON public.quota_processing_errors (created_at) WHERE resolved_at IS NULL;
-- An event is dead at most once at a time: a second write of the same dead letter fails loudly.
CREATE UNIQUE INDEX quota_processing_errors_one_open_per_event
    ON public.quota_processing_errors (quota_id, version, is_delete) WHERE resolved_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- The inbox (002): every keyable event, stored raw, keyed by (quota_id, version, is_delete).
--
-- is_delete is part of the key because a Debezium delete carries the row as it was before the
-- delete, i.e. the version of the last upsert; keyed by (quota_id, version) alone it would be
-- swallowed as a duplicate. At equal versions a delete ranks above an upsert.

CREATE TABLE inbox.quota_events (
    quota_id         uuid        NOT NULL,
    version          bigint      NOT NULL CHECK (version >= 0),
    is_delete        boolean     NOT NULL,
    payload          jsonb       NOT NULL,
    source           text        NOT NULL CHECK (source IN ('http', 'kafka', 'sink', 'replay')),
    received_at      timestamptz NOT NULL DEFAULT now(),
    -- pending -> processing -> applied | stale | dead; a transient failure goes back to pending
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'processing', 'applied', 'stale', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text        NULL,
    lease_expires_at timestamptz NULL,
    last_error       text        NULL,
    applied_at       timestamptz NULL,
    PRIMARY KEY (quota_id, version, is_delete),
    CHECK ((status = 'processing') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- The claim and the reaper read only these two small partial indexes, never the finished rows.
CREATE INDEX quota_events_due_idx
    ON inbox.quota_events (next_attempt_at) WHERE status = 'pending';
-- Keyed on the lease, not on status = 'processing': with that predicate the planner would scan
-- this index once per row when apply_events looks up the rows a worker holds by primary key.
CREATE INDEX quota_events_leased_idx
    ON inbox.quota_events (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX quota_events_received_idx ON inbox.quota_events (received_at);

-- A hot queue table: updated several times per row, so leave room for HOT updates and vacuum
-- it long before the default 20% of dead rows.
ALTER TABLE inbox.quota_events SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

-- The version gate: the highest (version, is_delete) applied per quota. It outlives a deleted
-- quota row, which is what makes a delete final against older versions.
CREATE TABLE inbox.quota_versions (
    quota_id         uuid        PRIMARY KEY,
    version          bigint      NOT NULL,
    is_delete        boolean     NOT NULL,
    -- the version this one replaced, read under the row lock: exact even with racing workers
    previous_version bigint      NULL,
    applied_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE inbox.quota_versions SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02);

-- ---------------------------------------------------------------------------------------------
-- The outbox (004): every effective change to public.quota is published to this pgmq queue
-- in the transaction that makes it.
SELECT pgmq.create('quota_changes');

-- ---------------------------------------------------------------------------------------------
-- Kafka rejects, and the table Kafka Connect JDBC sinks write into (005).

-- Messages `inbox consume` could not parse or key, kept verbatim so nothing is lost and nothing
-- stalls. Written in the same transaction as the batch they came with, before the offsets are
-- committed; a redelivered message (same topic, partition, offset) is a no-op. A topic that is
-- deleted and re-created restarts its offsets: clear its old rejects first.
CREATE TABLE inbox.rejects (
    topic       text        NOT NULL,
    "partition" integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea       NULL,
    raw         bytea       NOT NULL,
    -- [{"key": name, "value": UTF-8 text}] or {"key": name, "value_base64": ...} for binary values
    headers     jsonb       NOT NULL DEFAULT '[]',
    reason      text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", "offset")
);
CREATE INDEX rejects_received_idx ON inbox.rejects (received_at);

-- The sink-facing table: a JDBC sink (Debezium's or Confluent's) writes each flattened Titan quota
-- record here, and its trigger (sql/functions/inbox.titan_quota_sink_to_inbox.sql) files it in the
-- inbox as one event (source 'sink').
--
-- The key columns are typed like Titan's table. The other columns are text, so that every encoding
-- a connector may bind (Connect Decimal as numeric, decimal.handling.mode=string as varchar, double,
-- dates and timestamps as typed values or strings) lands without a cast error that would stall the
-- connector; the worker validates the values exactly as it does for every other feed.
CREATE TABLE inbox.titan_quota_sink (
    quota_id        uuid   NOT NULL,
    version         bigint NOT NULL,
    counterparty_id text   NULL,
    direction       text   NULL,
    period_month    text   NULL,
    qty_t           text   NULL,
    tolerance_pct   text   NULL,
    incoterm_code   text   NULL,
    metal_code      text   NULL,
    updated_at      text   NULL,
    __op            text   NULL,
    __deleted       text   NULL,
    __source_ts_ms  bigint NULL,
    PRIMARY KEY (quota_id, version)
);

-- Each delivery leaves one dead row behind: vacuum early.
ALTER TABLE inbox.titan_quota_sink SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- ---------------------------------------------------------------------------------------------
-- Operations (006): counters kept by the database itself, the dead-letter indexes, alerts.
--
-- Every process that exposes /metrics reads the same rows, so all of them report the same truth,
-- whichever process (or a JDBC sink writing straight into the inbox) did the work. Statement-level
-- triggers with transition tables (sql/functions/inbox.count_*.sql) count each statement once.
--
-- Contention: each backend writes only rows keyed by its own pg_backend_pid(), and only for the
-- current minute, so two transactions never wait on the same counter row. inbox.fold_counters()
-- later merges old minutes into backend 0 and, past the history window, into minute '-infinity'.
-- Totals are the sum of all rows; rates come from the per-minute rows.

CREATE TABLE inbox.metric_counters (
    metric  text             NOT NULL,
    label   text             NOT NULL DEFAULT '',
    minute  timestamptz      NOT NULL,  -- '-infinity': history folded past the window
    backend integer          NOT NULL,  -- the writer's pg_backend_pid(); 0 once folded
    value   double precision NOT NULL,
    PRIMARY KEY (metric, label, minute, backend)
);
-- Updated in place many times a minute: room for HOT updates, vacuumed early.
ALTER TABLE inbox.metric_counters SET (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000
);

-- The dead-letter queries: by time (rate alerts, --since), by quota, by class among the open ones.
CREATE INDEX quota_processing_errors_created_idx ON public.quota_processing_errors (created_at);
CREATE INDEX quota_processing_errors_quota_idx ON public.quota_processing_errors (quota_id, version);
CREATE INDEX quota_processing_errors_open_class_idx
    ON public.quota_processing_errors (error_class, created_at) WHERE resolved_at IS NULL;

-- Alerts, for an alerting system to consume from pgmq.
SELECT pgmq.create('inbox_alerts');

-- When each alert last fired: many processes check, one message per alert per p_renotify.
CREATE TABLE inbox.alert_state (
    alert         text        PRIMARY KEY,
    last_sent_at  timestamptz NOT NULL,
    last_msg_id   bigint      NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Least-privilege roles (007): what each part of the service may do in this database.
--   inbox_ingest    the HTTP ingestor, `inbox consume`, a Kafka Connect JDBC sink: file events in the
--                   inbox, nothing else. It cannot read the inbox, nor touch public.quota or the
--                   dead letters, nor change the state of an event once filed.
--   inbox_worker    `inbox work`: claim, apply, release and reap; the scheduled jobs (retention,
--                   alerts, counters); the outbox. Data only: it owns nothing, so it can neither
--                   create, alter nor drop anything.
--   inbox_readonly  DBAs and dashboards: the views inbox.v_status, v_lag, v_dead_letters and the
--                   figures /metrics reads.
--
-- The roles are NOLOGIN groups; a DBA grants them to login roles (SECURITY.md):
--   CREATE ROLE titan_webhook LOGIN PASSWORD '...' IN ROLE inbox_ingest;
-- Roles belong to the cluster, not to this database: they are created only when missing, so every
-- database of the cluster that runs these migrations shares them (and its own grants below).
-- Ingest goes through SECURITY DEFINER functions, not table grants; the rights on functions and
-- views are granted by their files in sql/functions (SECURITY.md says why).

DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['inbox_ingest', 'inbox_worker', 'inbox_readonly'] LOOP
        -- Each CREATE in its own block: a database of the same cluster migrating at the same
        -- moment may create the role first, which is as good.
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
    END LOOP;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'the roles inbox_ingest, inbox_worker and inbox_readonly do not all exist, and this '
                    'role may not create them'
        USING HINT = 'Have a DBA run CREATE ROLE inbox_ingest NOLOGIN; CREATE ROLE inbox_worker NOLOGIN; '
                     'CREATE ROLE inbox_readonly NOLOGIN; or migrate as a role with CREATEROLE.';
END
$roles$;

-- Every role may see which migrations are applied (/ready, `inbox consume` check it).
GRANT USAGE ON SCHEMA inbox TO inbox_ingest, inbox_worker, inbox_readonly;
GRANT SELECT ON inbox.schema_migrations TO inbox_ingest, inbox_worker, inbox_readonly;

-- inbox_ingest
-- Kafka messages that cannot be keyed, kept verbatim (a redelivery is ON CONFLICT DO NOTHING).
GRANT INSERT ON inbox.rejects TO inbox_ingest;
-- The JDBC sink's own staging table: it inserts, upserts (ON CONFLICT ... DO UPDATE reads the
-- rows it conflicts with) and, with delete.enabled, deletes. Its trigger files each row in the
-- inbox; what the sink does to this table afterwards changes nothing there.
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.titan_quota_sink TO inbox_ingest;

-- inbox_worker
GRANT USAGE ON SCHEMA public, pgmq TO inbox_worker;
-- claim, apply, release, reap (UPDATE); retention (DELETE)
GRANT SELECT, UPDATE, DELETE ON inbox.quota_events TO inbox_worker;
GRANT SELECT, INSERT, UPDATE ON inbox.quota_versions TO inbox_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.quota TO inbox_worker;
GRANT SELECT ON public.call_off TO inbox_worker;
-- dead letters are written by apply and release; read back to log them and for the rate alert
GRANT SELECT, INSERT ON public.quota_processing_errors TO inbox_worker;
-- counters (written by triggers through add_counters, folded by the metrics job), alerts
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.metric_counters TO inbox_worker;
GRANT SELECT, INSERT, UPDATE ON inbox.alert_state TO inbox_worker;
-- the outbox and the alerts queue (pgmq.send inserts ... RETURNING msg_id)
GRANT SELECT, INSERT ON pgmq.q_quota_changes, pgmq.q_inbox_alerts TO inbox_worker;

-- inbox_readonly
GRANT USAGE ON SCHEMA public TO inbox_readonly;
-- the figures /metrics and the views read (012 narrows the first and last to some columns)
GRANT SELECT ON inbox.quota_events, inbox.metric_counters, public.quota_processing_errors
    TO inbox_readonly;

-- ---------------------------------------------------------------------------------------------
-- Stand-ins, for the migrations after the baseline that name functions of 001-010 by signature:
-- 012 drops inbox.claim_events(text, integer, interval) and revokes inbox.add_counters from
-- inbox_ingest; 014 drops inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text). On a
-- database migrated before the baseline those were the real functions. Here they do nothing and
-- nobody may run them (no EXECUTE for PUBLIC, no role granted); 012 and 014 drop two of them, and
-- sql/functions/inbox.add_counters.sql replaces the third (CREATE OR REPLACE, with its rights).
-- A migration from now on that drops a function writes DROP FUNCTION IF EXISTS (docs/upgrading.md).
CREATE FUNCTION inbox.claim_events(p_worker text, p_limit integer, p_lease interval) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS '';
CREATE FUNCTION inbox.add_counters(p_metrics text[], p_labels text[], p_values double precision[])
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS '';
CREATE FUNCTION inbox.ingest_events(
    p_events jsonb, p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[], p_source text
) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS '';
REVOKE EXECUTE ON FUNCTION inbox.claim_events(text, integer, interval),
                           inbox.add_counters(text[], text[], double precision[]),
                           inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text)
    FROM PUBLIC;
