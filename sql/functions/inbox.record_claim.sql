-- -------------------------------------------------------------------------------------------------
-- Function: inbox.record_claim(p_worker text, p_backend_pid integer, p_session_token bigint,
--                              p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[],
--                              p_max_attempts integer, p_backoff_base interval, p_backoff_cap interval)
--     RETURNS bigint (the claim ledger row's id)
--
-- Reads:       inbox.claim_ledger, pg_locks (through inbox.claim_session_alive)
-- Writes:      inbox.claim_ledger; for claims whose worker is gone, through inbox.release_claim:
--              inbox.claim_debts, inbox.quota_events, public.quota_processing_errors
-- Called by:   query record_claim (inbox/apply/worker.py), from the worker's ledger session,
--              committed before the apply of the batch it records
-- -------------------------------------------------------------------------------------------------
-- Record who holds which keys, after spending the attempt of every claim whose worker is gone and
-- that shares a quota with this one (as inbox.reap_abandoned_claims does, now rather than at the
-- reaper's next run). The apply that follows reads the debts of the events it holds
-- (inbox.process_batch): a dead worker's attempt is a debt before any other worker can apply the
-- event again, so an event that kills every worker that takes it is dead-lettered after exactly
-- p_max_attempts deaths, however quickly the next worker took it. This session holds no row of the
-- events (the caller's apply session does): inbox.release_claim skips them and records their debts.
-- A dead claim the reaper (or another worker) is releasing right now is waited for (FOR UPDATE), so
-- its debts are committed before this returns; the wait is bounded (lock_timeout). A release that
-- fails (that wait, a deadlock) is left to the reaper, with a warning in the server log: the claim is
-- recorded all the same, and one dead claim can never stop the workers. Usually no claim is dead:
-- one look at pg_locks per ledger row.
CREATE OR REPLACE FUNCTION inbox.record_claim(
    p_worker        text,
    p_backend_pid   integer,
    p_session_token bigint,
    p_quota_ids     uuid[],
    p_versions      bigint[],
    p_is_delete     boolean[],
    p_max_attempts  integer,
    p_backoff_base  interval,
    p_backoff_cap   interval
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    v_gone bigint;
    v_dead record;
    v_id   bigint;
BEGIN
    FOR v_gone IN
        WITH gone AS MATERIALIZED (  -- first the dead claims (few), then their overlap with this one
            SELECT l.id FROM inbox.claim_ledger l WHERE NOT inbox.claim_session_alive(l.session_token)
        )
        SELECT l.id
        FROM inbox.claim_ledger l
        JOIN gone g ON g.id = l.id
        WHERE l.quota_ids && p_quota_ids
        ORDER BY l.id
    LOOP
        BEGIN
            SELECT l.quota_ids, l.versions, l.is_delete INTO v_dead
            FROM inbox.claim_ledger l
            WHERE l.id = v_gone
            FOR UPDATE;
            IF FOUND THEN  -- (not when the reaper released it meanwhile)
                PERFORM inbox.release_claim(v_gone, v_dead.quota_ids, v_dead.versions, v_dead.is_delete,
                                            'the worker ended before it finished the batch',
                                            p_max_attempts, p_backoff_base, p_backoff_cap);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'inbox.record_claim: claim % left to the reaper: %', v_gone, SQLERRM;
        END;
    END LOOP;

    INSERT INTO inbox.claim_ledger (worker, backend_pid, session_token, quota_ids, versions, is_delete)
    VALUES (p_worker, p_backend_pid, p_session_token, p_quota_ids, p_versions, p_is_delete)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
