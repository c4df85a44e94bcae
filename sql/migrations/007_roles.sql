-- Least-privilege roles: what each part of the service may do in this database.
--
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
--
-- Why ingest goes through SECURITY DEFINER functions and not table grants: with a grant on
-- inbox.quota_events the ingestor could read every payload, and its INSERT fires the counter trigger,
-- which would need write rights on inbox.metric_counters too. inbox.ingest_events is one narrow door
-- instead: it checks the batch's shape, inserts new events as 'pending' and makes a redelivery a
-- no-op; the ingest role has no right on any inbox table behind it. A definer function runs with
-- its owner's rights, so each one here pins search_path to pg_catalog, pg_temp (every object it
-- uses is schema-qualified: nothing a caller creates can stand in for one it calls), builds no SQL
-- from strings, and EXECUTE on it is revoked from PUBLIC. The worker gets plain table grants: it is
-- the data path, and every statement it runs would need the same rights inside a definer function.
--
-- Invoker functions keep PostgreSQL's default EXECUTE for PUBLIC: they run with the caller's
-- table rights, so they give nobody anything, and schema USAGE is needed even to name them.
--
-- A later migration that replaces one of the definer functions (CREATE OR REPLACE) resets it to
-- SECURITY INVOKER: repeat the ALTER FUNCTION below. tests/integration/test_roles.py notices.

DO $roles$
BEGIN
    -- Each CREATE in its own block: a database of the same cluster migrating at the same moment
    -- may create the role first, which is as good.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'inbox_ingest') THEN
        BEGIN
            CREATE ROLE inbox_ingest NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'inbox_worker') THEN
        BEGIN
            CREATE ROLE inbox_worker NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'inbox_readonly') THEN
        BEGIN
            CREATE ROLE inbox_readonly NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
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

-- ---------------------------------------------------------------------------------------------
-- inbox_ingest

ALTER FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- The ingest query counts duplicates itself; the counters of new events come from a trigger.
ALTER FUNCTION inbox.add_counters(text[], text[], double precision[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- The JDBC sink's trigger files the row and deletes the quota's previous sink row.
ALTER FUNCTION inbox.titan_quota_sink_to_inbox()
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION inbox.titan_quota_sink_to_inbox() FROM PUBLIC;

GRANT EXECUTE ON FUNCTION inbox.ingest_events(jsonb, uuid[], bigint[], boolean[], text) TO inbox_ingest;
GRANT EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[])
    TO inbox_ingest, inbox_worker;
-- Kafka messages that cannot be keyed, kept verbatim (a redelivery is ON CONFLICT DO NOTHING).
GRANT INSERT ON inbox.rejects TO inbox_ingest;
-- The JDBC sink's own staging table: it inserts, upserts (ON CONFLICT ... DO UPDATE reads the
-- rows it conflicts with) and, with delete.enabled, deletes. Its trigger files each row in the
-- inbox; what the sink does to this table afterwards changes nothing there.
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.titan_quota_sink TO inbox_ingest;

-- ---------------------------------------------------------------------------------------------
-- inbox_worker

GRANT USAGE ON SCHEMA public, pgmq TO inbox_worker;
-- claim, apply, release, reap (UPDATE); retention (DELETE)
GRANT SELECT, UPDATE, DELETE ON inbox.quota_events TO inbox_worker;
GRANT SELECT, INSERT, UPDATE ON inbox.quota_versions TO inbox_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.quota TO inbox_worker;
GRANT SELECT ON public.call_off TO inbox_worker;
-- dead letters are written by apply and release; read back to log them and for the rate alert
GRANT SELECT, INSERT ON public.quota_processing_errors TO inbox_worker;
GRANT SELECT ON inbox.v_dead_letters TO inbox_worker;
-- counters (written by triggers through add_counters, folded by the metrics job), alerts
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.metric_counters TO inbox_worker;
GRANT SELECT, INSERT, UPDATE ON inbox.alert_state TO inbox_worker;
-- the outbox and the alerts queue (pgmq.send inserts ... RETURNING msg_id)
GRANT SELECT, INSERT ON pgmq.q_quota_changes, pgmq.q_inbox_alerts TO inbox_worker;

-- ---------------------------------------------------------------------------------------------
-- inbox_readonly

GRANT USAGE ON SCHEMA public TO inbox_readonly;
GRANT SELECT ON inbox.v_status, inbox.v_lag, inbox.v_dead_letters TO inbox_readonly;
-- A view checks table rights as its owner, but the functions it calls run as the caller:
-- inbox.status_counts() (v_status) reads the inbox, inbox.counter_window() (v_lag) the counters.
-- /metrics reads the same tables, and the number of open dead letters.
GRANT SELECT ON inbox.quota_events, inbox.metric_counters, public.quota_processing_errors
    TO inbox_readonly;
