-- Role boundaries (issue 12): what each role of 007 reaches, narrowed to what its part needs.
-- Every grant of this change is here, in one place, so the worker's can be adjusted when its hot
-- path changes. SECURITY.md states what each role reaches; tests/integration/test_roles.py tries it.

-- ---------------------------------------------------------------------------------------------
-- The claim reads keys first (H2): claim_events no longer returns payloads, which the worker reads
-- afterwards through inbox.claimed_payloads (sql/functions), one row at a time as they arrive. A
-- changed return type needs the old function dropped; `inbox migrate` then re-creates it from its file.
DROP FUNCTION inbox.claim_events(text, integer, interval);

-- ---------------------------------------------------------------------------------------------
-- inbox_ingest: no direct counter writes (M3). ingest_events counts duplicates itself now.
REVOKE EXECUTE ON FUNCTION inbox.add_counters(text[], text[], double precision[]) FROM inbox_ingest;

-- ---------------------------------------------------------------------------------------------
-- inbox_worker: UPDATE only the columns of an event's processing state, and no DELETE at all: it
-- cannot rewrite what an event says (payload, key, source, received_at), nor delete a pending row.
-- Retention deletes through definer functions that pick only finished rows (sql/functions:
-- inbox.purge_finished_events, inbox.purge_history).
REVOKE UPDATE, DELETE ON inbox.quota_events FROM inbox_worker;
GRANT UPDATE (status, attempts, next_attempt_at, lease_owner, lease_expires_at, last_error, applied_at)
    ON inbox.quota_events TO inbox_worker;

-- ---------------------------------------------------------------------------------------------
-- inbox_readonly: counts and states, not payloads (M5). Every column but the event itself.
REVOKE SELECT ON inbox.quota_events FROM inbox_readonly;
GRANT SELECT (quota_id, version, is_delete, source, received_at, status, attempts, next_attempt_at,
              lease_owner, lease_expires_at, last_error, applied_at)
    ON inbox.quota_events TO inbox_readonly;
REVOKE SELECT ON public.quota_processing_errors FROM inbox_readonly;
GRANT SELECT (id, error_message, error_stack, retry_count, resolved_at, created_at, quota_id, version,
              is_delete, error_class, resolution_note)
    ON public.quota_processing_errors TO inbox_readonly;
-- (inbox.v_dead_letters: its file grants inbox_readonly every column but event_data.)

-- pgmq grants SELECT on every table of its schema to pg_monitor (ALTER DEFAULT PRIVILEGES in its
-- install script), so any monitoring login read the outbox: every quota change, whole. Our queues
-- carry quota data; monitoring reads their depth from /metrics and v_lag, not their messages.
DO $pgmq$
DECLARE
    v_table regclass;
BEGIN
    FOREACH v_table IN ARRAY ARRAY[to_regclass('pgmq.q_quota_changes'), to_regclass('pgmq.a_quota_changes'),
                                   to_regclass('pgmq.q_inbox_alerts'), to_regclass('pgmq.a_inbox_alerts')] LOOP
        IF v_table IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON TABLE %s FROM pg_monitor', v_table);
        END IF;
    END LOOP;
END
$pgmq$;

-- ---------------------------------------------------------------------------------------------
-- The version gate can be reset by an operator (M2): inbox.reset_gate (sql/functions) records each
-- reset here. Append-only for everyone but the owner.
CREATE TABLE inbox.gate_resets (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    quota_id        uuid        NOT NULL,
    old_version     bigint      NOT NULL,
    old_is_delete   boolean     NOT NULL,
    new_version     bigint      NULL,      -- NULL: the gate row was removed
    note            text        NOT NULL CHECK (btrim(note) <> ''),
    reset_by        text        NOT NULL,  -- session_user: the login, whatever role it set
    reset_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gate_resets_quota_idx ON inbox.gate_resets (quota_id, reset_at);
GRANT SELECT ON inbox.gate_resets TO inbox_readonly;

-- ---------------------------------------------------------------------------------------------
-- Retention of the history tables (inbox.purge_history): by age, through these indexes.
CREATE INDEX quota_processing_errors_resolved_idx
    ON public.quota_processing_errors (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX quota_versions_deleted_idx ON inbox.quota_versions (applied_at) WHERE is_delete;
