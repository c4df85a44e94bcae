-- CSLA tables, with the seed's names, in the public schema.
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

CREATE VIEW public.v_quota_balance AS
SELECT q.quota_id,
       q.counterparty_id,
       q.direction,
       q.period_month,
       q.metal_code,
       q.qty_t,
       q.tolerance_pct,
       coalesce(c.called_off_qty_t, 0)            AS called_off_qty_t,
       q.qty_t - coalesce(c.called_off_qty_t, 0)  AS remaining_qty_t,
       q.qty_t * (1 - coalesce(q.tolerance_pct, 0) / 100) AS min_qty_t,
       q.qty_t * (1 + coalesce(q.tolerance_pct, 0) / 100) AS max_qty_t
FROM public.quota q
LEFT JOIN (SELECT quota_id, sum(qty_t) AS called_off_qty_t
           FROM public.call_off
           GROUP BY quota_id) c USING (quota_id);

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
