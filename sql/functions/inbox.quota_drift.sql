-- -------------------------------------------------------------------------------------------------
-- Function: inbox.quota_drift(p_source regclass)
--     RETURNS TABLE (quota_id, drift, versions, columns, source_version, source_deleted, csla_version,
--                    gate_version, gate_deleted, source, csla, invalid)
--
-- Reads:       p_source, public.quota, inbox.quota_versions
-- Writes:      -
-- Called by:   query reconcile_compare (`inbox reconcile`, inbox/reconcile.py); DBAs
-- -------------------------------------------------------------------------------------------------
-- Compare public.quota with Titan's truth loaded in a table: one row per quota that differs.
--   p_source  a table (or view) of Titan's current quotas, with Titan's column names: quota_id,
--             version, counterparty_id, direction, period_month, qty_t, tolerance_pct, incoterm_code,
--             metal_code, updated_at (each cast to CSLA's type; a timestamp without a zone is UTC).
--             Optional: is_delete boolean (the quota was deleted at that version) and invalid text (a
--             row CSLA cannot hold; the reasons). Several rows of one quota: the highest
--             (version, is_delete) is its truth, as for the version gate.
-- Returns, per quota that differs:
--   drift     missing (in the source, not in CSLA), extra (in CSLA, absent or deleted in the source),
--             differs (in both; columns or version differ), invalid (the source row breaks CSLA's rules)
--   versions  the source's (version, is_delete) against CSLA's version gate (the row's source_version
--             when there is no gate): behind (CSLA older), ahead (CSLA newer), same; NULL when the
--             source has no row
--   columns   the compared columns that differ; source, csla: those columns of both rows (jsonb keeps
--             a numeric's exact digits). Numbers compare by value: 100.0 equals 100.000.
-- Reads p_source once, public.quota once (a full join), and the gate of the drifting quotas.
-- The caller needs SELECT on p_source, public.quota and inbox.quota_versions.
CREATE OR REPLACE FUNCTION inbox.quota_drift(p_source regclass)
RETURNS TABLE (quota_id uuid, drift text, versions text, columns text[],
               source_version bigint, source_deleted boolean, csla_version bigint,
               gate_version bigint, gate_deleted boolean,
               source jsonb, csla jsonb, invalid text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $fn$
DECLARE
    v_is_delete text := 'false';
    v_order     text := '';  -- a constant cannot be an ORDER BY item
    v_invalid   text := 'NULL::text';
BEGIN
    IF EXISTS (SELECT FROM pg_attribute a
               WHERE a.attrelid = p_source AND a.attname = 'is_delete' AND a.attnum > 0 AND NOT a.attisdropped) THEN
        v_is_delete := 'coalesce(s.is_delete, false)';
        v_order := ', coalesce(s.is_delete, false) DESC';
    END IF;
    IF EXISTS (SELECT FROM pg_attribute a
               WHERE a.attrelid = p_source AND a.attname = 'invalid' AND a.attnum > 0 AND NOT a.attisdropped) THEN
        v_invalid := 's.invalid::text';
    END IF;
    RETURN QUERY EXECUTE format($sql$
        WITH truth AS (
            SELECT DISTINCT ON (s.quota_id)
                   s.quota_id::uuid AS quota_id, s.version::bigint AS version, %2$s AS is_delete,
                   %3$s AS invalid,
                   s.counterparty_id::text AS counterparty_id, s.direction::text AS direction,
                   date_trunc('month', s.period_month::date)::date AS period_month,
                   s.qty_t::numeric AS qty_t, s.tolerance_pct::numeric AS tolerance_pct,
                   s.incoterm_code::text AS incoterm_code, s.metal_code::text AS metal_code,
                   s.updated_at::timestamptz AS source_updated_at
            FROM %1$s s
            ORDER BY s.quota_id, s.version DESC %4$s
        ),
        compared AS (
            SELECT coalesce(t.quota_id, q.quota_id) AS quota_id,
                   t.quota_id IS NOT NULL AND NOT t.is_delete AS in_source,
                   q.quota_id IS NOT NULL AS in_csla,
                   t.version AS source_version, t.is_delete AS source_deleted, t.invalid,
                   q.source_version AS csla_version,
                   array_remove(ARRAY[
                       CASE WHEN t.counterparty_id IS DISTINCT FROM q.counterparty_id THEN 'counterparty_id' END,
                       CASE WHEN t.direction IS DISTINCT FROM q.direction THEN 'direction' END,
                       CASE WHEN t.period_month IS DISTINCT FROM q.period_month THEN 'period_month' END,
                       CASE WHEN t.qty_t IS DISTINCT FROM q.qty_t THEN 'qty_t' END,
                       CASE WHEN t.tolerance_pct IS DISTINCT FROM q.tolerance_pct THEN 'tolerance_pct' END,
                       CASE WHEN t.incoterm_code IS DISTINCT FROM q.incoterm_code THEN 'incoterm_code' END,
                       CASE WHEN t.metal_code IS DISTINCT FROM q.metal_code THEN 'metal_code' END,
                       CASE WHEN t.source_updated_at IS DISTINCT FROM q.source_updated_at
                            THEN 'source_updated_at' END
                   ], NULL) AS columns,
                   CASE WHEN t.quota_id IS NOT NULL AND NOT t.is_delete AND t.invalid IS NULL THEN
                       jsonb_build_object(
                           'counterparty_id', t.counterparty_id, 'direction', t.direction,
                           'period_month', t.period_month, 'qty_t', t.qty_t, 'tolerance_pct', t.tolerance_pct,
                           'incoterm_code', t.incoterm_code, 'metal_code', t.metal_code,
                           'source_updated_at', t.source_updated_at)
                   END AS source,
                   CASE WHEN q.quota_id IS NOT NULL THEN
                       jsonb_build_object(
                           'counterparty_id', q.counterparty_id, 'direction', q.direction,
                           'period_month', q.period_month, 'qty_t', q.qty_t, 'tolerance_pct', q.tolerance_pct,
                           'incoterm_code', q.incoterm_code, 'metal_code', q.metal_code,
                           'source_updated_at', q.source_updated_at)
                   END AS csla
            FROM truth t
            FULL JOIN public.quota q ON q.quota_id = t.quota_id
        ),
        drifting AS (
            SELECT c.*,
                   CASE
                       WHEN c.invalid IS NOT NULL THEN 'invalid'
                       WHEN c.in_source AND NOT c.in_csla THEN 'missing'
                       WHEN NOT c.in_source AND c.in_csla THEN 'extra'
                       WHEN c.in_source AND c.in_csla
                            AND (cardinality(c.columns) > 0 OR c.source_version <> c.csla_version) THEN 'differs'
                   END AS drift
            FROM compared c
        )
        SELECT d.quota_id, d.drift,
               CASE
                   WHEN d.source_version IS NULL THEN NULL
                   WHEN coalesce(g.version, d.csla_version) IS NULL THEN 'behind'
                   WHEN (d.source_version, d.source_deleted)
                        > (coalesce(g.version, d.csla_version), coalesce(g.is_delete, false)) THEN 'behind'
                   WHEN (d.source_version, d.source_deleted)
                        < (coalesce(g.version, d.csla_version), coalesce(g.is_delete, false)) THEN 'ahead'
                   ELSE 'same'
               END,
               CASE WHEN d.drift = 'differs' THEN d.columns ELSE '{}'::text[] END,
               d.source_version, d.source_deleted, d.csla_version, g.version, g.is_delete,
               d.source, d.csla, d.invalid
        FROM drifting d
        LEFT JOIN inbox.quota_versions g ON g.quota_id = d.quota_id
        WHERE d.drift IS NOT NULL
    $sql$, p_source, v_is_delete, v_invalid, v_order);
END;
$fn$;
