-- The inbox: every keyable event, stored raw, keyed by (quota_id, version, is_delete).
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
