-- -------------------------------------------------------------------------------------------------
-- View: public.v_quota_balance (each quota with what is called off and what remains)
--
-- Reads:       public.quota, public.call_off
-- Writes:      -
-- Called by:   CSLA readers (owner only: no grant)
-- -------------------------------------------------------------------------------------------------
DROP VIEW IF EXISTS public.v_quota_balance;
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
