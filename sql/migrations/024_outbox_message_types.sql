-- Issue 13 (path 4 PostgreSQL CPU): the outbox message built from two composite types.
-- inbox.process_batch built each message with jsonb_build_object: every key and every value was
-- typed again per message (json_categorize_type: up to four catalog cache lookups each, 36 per
-- message), the nested quota object was built, then walked again into the outer one, and each object's
-- keys were sorted into jsonb's order. to_jsonb of a row of these types writes the same jsonb with the
-- attribute names as keys (not typed again), the quota nested in one pass, and the keys already in
-- jsonb's order (by length, then bytes), which its sort only checks. Measured on embedded PostgreSQL
-- 18, one backend's CPU per message: 16-17 us before, 5.4-7.8 us after (README, Performance).
-- The attribute order IS jsonb's key order and must stay so (tests/integration/test_outbox.py): a new
-- key is a new type, not ALTER TYPE ... ADD ATTRIBUTE (which appends it at the end). The attribute
-- types are public.quota's column types, so each value is written as before.
CREATE TYPE inbox.outbox_quota AS (
    qty_t             numeric,
    quota_id          uuid,
    direction         text,
    created_at        timestamptz,
    metal_code        text,
    updated_at        timestamptz,
    period_month      date,
    incoterm_code     text,
    tolerance_pct     numeric,
    source_version    bigint,
    counterparty_id   text,
    source_updated_at timestamptz
);
CREATE TYPE inbox.outbox_message AS (
    op               text,               -- upsert | delete
    quota            inbox.outbox_quota, -- the row after the change; NULL for a delete
    version          bigint,
    quota_id         uuid,
    applied_at       timestamptz,
    previous_version bigint
);
