-- -------------------------------------------------------------------------------------------------
-- Function: inbox.reset_gate(p_quota_id uuid, p_version bigint, p_note text)
--     RETURNS TABLE (old_version, old_is_delete, new_version)
--
-- Reads:       inbox.quota_versions
-- Writes:      inbox.quota_versions, inbox.gate_resets
-- Called by:   an operator, as the owner (docs/operations.md, "Resetting a quota's version gate");
--              EXECUTE revoked from PUBLIC and granted to no role of the service
-- -------------------------------------------------------------------------------------------------
-- Lower a quota's version gate, or remove it (p_version NULL), after an event that should never
-- have been applied: a version far above Titan's (up to 2^63 - 1), a delete filed by mistake. Without
-- this, nothing could pass such a gate again: a delete at 9223372036854775807 removed the quota for
-- good. The gate only moves down: the new (version, upsert) must be below the current
-- (version, is_delete). Each reset is recorded in inbox.gate_resets with the note and the login
-- that made it. The quota row is left as it is: the next event above the new gate replaces it (or
-- run `inbox reconcile`, or replay the right event).
CREATE OR REPLACE FUNCTION inbox.reset_gate(p_quota_id uuid, p_version bigint, p_note text)
RETURNS TABLE (old_version bigint, old_is_delete boolean, new_version bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_gate record;
BEGIN
    IF p_note IS NULL OR btrim(p_note) = '' THEN
        RAISE EXCEPTION 'inbox.reset_gate: say why in p_note (it is recorded in inbox.gate_resets)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT g.version, g.is_delete INTO v_gate
    FROM inbox.quota_versions g WHERE g.quota_id = p_quota_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inbox.reset_gate: quota % has no version gate', p_quota_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF p_version IS NOT NULL AND (p_version < 0 OR (p_version, false) >= (v_gate.version, v_gate.is_delete)) THEN
        RAISE EXCEPTION 'inbox.reset_gate: the gate of quota % is at version % (%); a reset only lowers it',
            p_quota_id, v_gate.version, CASE WHEN v_gate.is_delete THEN 'delete' ELSE 'upsert' END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give a version below it, or NULL to remove the gate.';
    END IF;

    IF p_version IS NULL THEN
        DELETE FROM inbox.quota_versions g WHERE g.quota_id = p_quota_id;
    ELSE
        UPDATE inbox.quota_versions g
        SET version = p_version, is_delete = false, previous_version = v_gate.version, applied_at = now()
        WHERE g.quota_id = p_quota_id;
    END IF;
    INSERT INTO inbox.gate_resets (quota_id, old_version, old_is_delete, new_version, note, reset_by)
    VALUES (p_quota_id, v_gate.version, v_gate.is_delete, p_version, p_note, session_user);

    old_version := v_gate.version;
    old_is_delete := v_gate.is_delete;
    new_version := p_version;
    RETURN NEXT;
END;
$$;

REVOKE EXECUTE ON FUNCTION inbox.reset_gate(uuid, bigint, text) FROM PUBLIC;
