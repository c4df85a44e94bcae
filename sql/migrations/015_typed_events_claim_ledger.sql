-- Issue 13, the hot path redesign: events typed once at the edge, claims no longer written per
-- event, and the mark of a finished event without the lease columns' index.
--
-- 1. Typed columns beside the raw payload. The ingestor validates each event where it keys it and
--    stores the quota row it sets (or every reason it is invalid, in errors) with
--    inbox.ingest_typed_events; the worker then applies columns and never reads the payload. Rows
--    stored without them (before this migration, by the sink trigger, by a dead-letter replay, by
--    SQL by hand through inbox.ingest_events) keep typed = false: the worker types them from their
--    payload first, with the same validation (inbox/apply/prepare.py). Nothing is rewritten here:
--    nullable columns and a constant default are added without touching a row, and every stored
--    event and dead letter stays as it is.
ALTER TABLE inbox.quota_events
    ADD COLUMN typed             boolean     NOT NULL DEFAULT false,
    -- every reason the event cannot be applied (a dead letter); NULL for a valid event
    ADD COLUMN errors            text[]      NULL,
    -- the dead letter's class when errors is set: NULL means 'invalid'; 'unreadable' for a payload
    -- the worker could not afford to read, 'unprocessable' when validation itself crashed
    ADD COLUMN error_class       text        NULL,
    -- a Debezium delete that carried only its key (REPLICA IDENTITY DEFAULT): placed by source_lsn
    -- alone (migration 014)
    ADD COLUMN versionless       boolean     NOT NULL DEFAULT false,
    ADD COLUMN counterparty_id   text        NULL,
    ADD COLUMN direction         text        NULL,
    ADD COLUMN period_month      date        NULL,
    ADD COLUMN qty_t             numeric     NULL,
    ADD COLUMN tolerance_pct     numeric     NULL,
    ADD COLUMN incoterm_code     text        NULL,
    ADD COLUMN metal_code        text        NULL,
    ADD COLUMN source_updated_at timestamptz NULL;

-- The worker types the rows stored without these columns (and sets the source LSN it reads from the
-- payload where the row was stored without one, as it handed it to the apply before); it still
-- cannot change what an event says (payload, key, source, received_at: migration 012).
GRANT UPDATE (typed, errors, error_class, versionless, source_lsn, counterparty_id, direction, period_month, qty_t,
              tolerance_pct, incoterm_code, metal_code, source_updated_at)
    ON inbox.quota_events TO inbox_worker;
-- DBAs see whether an event is typed and why it is invalid, not the quota it carries (M5).
GRANT SELECT (typed, errors, error_class, versionless) ON inbox.quota_events TO inbox_readonly;

-- The rows the worker still has to type: few, and only after an upgrade, a sink write or a replay.
CREATE INDEX quota_events_untyped_idx
    ON inbox.quota_events (next_attempt_at) WHERE status = 'pending' AND NOT typed;

-- 2. The claim ledger. A worker claims a batch inside its apply transaction (FOR UPDATE SKIP
--    LOCKED: nothing is written per event) and records the batch's keys here from a second
--    session, committed before the apply runs; the apply deletes its row in its own transaction.
--    Each apply session holds a session-level advisory lock on a random session_token for as long
--    as it lives (pg_locks shows it to every role, unlike pg_stat_activity's details). A row whose
--    token no session holds belongs to a worker that died with the batch in hand: the reaper spends
--    one attempt on each of its events, whether a living worker finished them meanwhile or not (or
--    records it as a debt, below, for one a living worker holds), and dead-letters those still pending
--    that have used them all: an event that kills every worker that takes it ends as a dead letter
--    (sql/functions/inbox.reap_abandoned_claims.sql).
CREATE TABLE inbox.claim_ledger (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker        text        NOT NULL,
    backend_pid   integer     NOT NULL,  -- for operators: the apply session's pid when it claimed
    session_token bigint      NOT NULL,  -- the advisory lock its apply session holds while alive
    quota_ids     uuid[]      NOT NULL,
    versions      bigint[]    NOT NULL,
    is_delete     boolean[]   NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(quota_ids) = cardinality(versions) AND cardinality(quota_ids) = cardinality(is_delete))
);
-- One insert and one delete per batch: small, and vacuumed early.
ALTER TABLE inbox.claim_ledger SET (
    fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);
-- UPDATE: the reaper locks the rows it reaps (FOR UPDATE SKIP LOCKED)
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.claim_ledger TO inbox_worker;
GRANT SELECT ON inbox.claim_ledger TO inbox_readonly;

-- Attempts that dead claims owe events a living worker held when the reaper came: the reaper
-- cannot update a row another transaction holds, so it records the debt here, and whoever next
-- finishes or gives back the event pays it (inbox.process_batch, inbox.release_claim): an event whose
-- spent attempts reach INBOX_MAX_ATTEMPTS is then dead-lettered ('retries_exhausted') before it is
-- applied again. Usually empty. One row per dead claim and event, never updated: the reaper's
-- insert waits for no worker (a worker paying a debt holds its row until it commits).
CREATE TABLE inbox.claim_debts (
    quota_id  uuid        NOT NULL,
    version   bigint      NOT NULL,
    is_delete boolean     NOT NULL,
    claims    integer     NOT NULL DEFAULT 1 CHECK (claims > 0),  -- attempts owed
    since     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX claim_debts_event_idx ON inbox.claim_debts (quota_id, version, is_delete);
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox.claim_debts TO inbox_worker;
GRANT SELECT ON inbox.claim_debts TO inbox_readonly;

-- 3. The mark. Claims no longer write a lease, so the lease's index goes: the mark of a finished
--    event (status, attempts, last_error, applied_at) then touches no index key. It still leaves
--    quota_events_due_idx and quota_events_untyped_idx by their predicate on status, which makes it
--    a non-HOT update (docs/operations.md, "The claim ledger and the mark"); more room per page
--    keeps the new row version on its page.
DROP INDEX inbox.quota_events_leased_idx;
ALTER TABLE inbox.quota_events SET (fillfactor = 60);

-- Claims made by workers of the previous version: give them back; their attempt is already spent.
UPDATE inbox.quota_events
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL
WHERE status = 'processing';

-- The per-event claim (a lease written on every row), the payload-carrying apply and the lease
-- reaper are replaced by inbox.claim_batch, inbox.process_batch, inbox.release_claim and
-- inbox.reap_abandoned_claims (sql/functions). The lease columns stay: rows finished under them
-- keep their history.
DROP FUNCTION IF EXISTS inbox.reap_expired_leases(integer, integer, interval, interval);
DROP FUNCTION IF EXISTS inbox.release_events(text, jsonb, text, integer, interval, interval);
DROP FUNCTION IF EXISTS inbox.apply_events(text, jsonb);
DROP FUNCTION IF EXISTS inbox.claim_events(text, integer, interval);
