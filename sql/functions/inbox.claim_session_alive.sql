-- -------------------------------------------------------------------------------------------------
-- Function: inbox.claim_session_alive(p_token bigint) RETURNS boolean
--
-- Reads:       pg_locks
-- Writes:      -
-- Called by:   inbox.reap_abandoned_claims, inbox.record_claim, inbox.v_lag, query metrics_gauges
-- -------------------------------------------------------------------------------------------------
-- Whether a worker's apply session is still connected: it holds a session-level advisory lock on
-- its random token for its whole life (query apply_session). pg_locks shows a lock on a bigint key as
-- classid (its high 32 bits) and objid (its low 32 bits), objsubid 1; every role may read it, where
-- pg_stat_activity hides other roles' session details (a worker role cannot see backend_start of a
-- session that SET ROLE).
CREATE OR REPLACE FUNCTION inbox.claim_session_alive(p_token bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1
        FROM pg_locks k
        WHERE k.locktype = 'advisory' AND k.objsubid = 1 AND k.granted
          AND k.classid = (p_token >> 32)::oid
          AND k.objid = (p_token & 4294967295)::oid
    );
$$;
