-- Reconcile and the story of one quota (`inbox reconcile`, `inbox quota show`; docs/operations.md).

-- Corrections that `inbox reconcile --repair` files go through the inbox as events of their own
-- source, so the version gate, dead letters and the outbox apply to them as to any other event.
ALTER TABLE inbox.quota_events DROP CONSTRAINT quota_events_source_check;
ALTER TABLE inbox.quota_events ADD CONSTRAINT quota_events_source_check
    CHECK (source IN ('http', 'kafka', 'sink', 'replay', 'reconcile'));

-- Which feed set the version gate (NULL: set before this migration). A repair of source 'reconcile'
-- passes the gate at its own (version, is_delete) too (sql/functions/inbox.apply_events.sql): that
-- is how a row edited by hand is put back at the version it claims.
ALTER TABLE inbox.quota_versions ADD COLUMN source text NULL;

-- Every drift a `reconcile --repair` run acted on, kept after retention has purged the inbox rows:
-- what CSLA held before, what was filed, and the finished inbox row a refiled repair replaced (a
-- repair at the key of an event already applied takes over that row; its summary stays here).
--   outcome  filed         a new inbox event
--            refiled       the finished (applied, stale or dead) inbox row at that key, reset to pending
--            in_flight     an event with that key is pending or being applied: nothing filed
--            not_repaired  nothing filed, note says why (CSLA ahead of the source, invalid source row)
CREATE TABLE inbox.reconcile_repairs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid        NOT NULL,
    quota_id    uuid        NOT NULL,
    drift       text        NOT NULL CHECK (drift IN ('missing', 'extra', 'differs', 'invalid')),
    versions    text        NULL CHECK (versions IN ('behind', 'ahead', 'same')),
    columns     text[]      NOT NULL DEFAULT '{}',
    -- the event filed (NULL when nothing was)
    version     bigint      NULL,
    is_delete   boolean     NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('filed', 'refiled', 'in_flight', 'not_repaired')),
    note        text        NULL,
    -- public.quota's row before the repair (NULL: there was none), and the replaced inbox row
    csla        jsonb       NULL,
    replaced    jsonb       NULL,
    filed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_repairs_quota_idx ON inbox.reconcile_repairs (quota_id, filed_at);

-- The outbox messages of one quota, by key: `inbox quota show` reads the queue and its archive by
-- the message's quota_id. A text expression (not ::uuid): a message some other producer sends
-- without a UUID there must not fail its insert. Built inside the migration's transaction; on a
-- large archive create them CONCURRENTLY by hand first (same names) and this becomes a no-op.
CREATE INDEX IF NOT EXISTS q_quota_changes_quota_id_idx ON pgmq.q_quota_changes ((message ->> 'quota_id'));
CREATE INDEX IF NOT EXISTS a_quota_changes_quota_id_idx ON pgmq.a_quota_changes ((message ->> 'quota_id'));
