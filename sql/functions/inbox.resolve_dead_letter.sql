-- -------------------------------------------------------------------------------------------------
-- Function: inbox.resolve_dead_letter(p_id uuid, p_note text) RETURNS timestamptz
--
-- Reads:       -
-- Writes:      public.quota_processing_errors
-- Called by:   query dlq_resolve (`inbox dlq resolve`, inbox/ops.py)
-- -------------------------------------------------------------------------------------------------
-- Close a dead letter without replaying it. Returns NULL when the id is unknown or already resolved.
CREATE OR REPLACE FUNCTION inbox.resolve_dead_letter(p_id uuid, p_note text)
RETURNS timestamptz
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE public.quota_processing_errors
    SET resolved_at = now(), resolution_note = p_note
    WHERE id = p_id AND resolved_at IS NULL
    RETURNING resolved_at
$$;
