-- -------------------------------------------------------------------------------------------------
-- Function: inbox.reap_abandoned_claims(p_limit integer, p_max_attempts integer,
--                                       p_backoff_base interval, p_backoff_cap interval)
--     RETURNS TABLE (retried, dead, waiting)
--
-- Reads:       inbox.claim_ledger, inbox.quota_events, pg_locks (inbox.claim_session_alive)
-- Writes:      through inbox.release_claim
-- Called by:   query reap_abandoned_claims (inbox/apply/worker.py, the reaper job)
-- -------------------------------------------------------------------------------------------------
-- Spend an attempt for workers that died with a batch in hand: every claim ledger row whose apply
-- session is gone (no session holds the advisory lock on its session_token). Its transaction is
-- gone, so are its row locks: the events were claimable again the moment it died, and a living
-- worker may hold them already. The claim is reaped only once none of its events is locked (a
-- claim some of whose events are held waits for the next round: counted in waiting); then each of
-- them has one attempt spent (inbox.release_claim with the claim's ledger row): pending ones go back
-- with a backoff or, out of attempts, are dead-lettered ('retries_exhausted'); ones a living worker
-- finished meanwhile keep their outcome. So every worker that dies holding an event costs it
-- exactly one attempt, whoever took the event next: an event that kills every worker that takes it
-- ends as a dead letter after p_max_attempts claims.
-- A live session's claim is never touched: its statement and idle-in-transaction timeouts (the
-- worker's session settings) end it if it hangs, and then it is reaped here.
CREATE OR REPLACE FUNCTION inbox.reap_abandoned_claims(
    p_limit        integer,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint, waiting bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_claim  record;
    v_stored bigint;
    v_free   bigint;
    v_r      bigint;
    v_d      bigint;
BEGIN
    retried := 0;
    dead := 0;
    waiting := 0;
    FOR v_claim IN
        SELECT l.id, l.quota_ids, l.versions, l.is_delete
        FROM inbox.claim_ledger l
        WHERE NOT inbox.claim_session_alive(l.session_token)
        ORDER BY l.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        SELECT count(*) INTO v_stored
        FROM unnest(v_claim.quota_ids, v_claim.versions, v_claim.is_delete) AS k(quota_id, version, is_delete)
        JOIN inbox.quota_events e USING (quota_id, version, is_delete);
        SELECT count(*) INTO v_free
        FROM unnest(v_claim.quota_ids, v_claim.versions, v_claim.is_delete) AS k(quota_id, version, is_delete)
        CROSS JOIN LATERAL (
            SELECT 1
            FROM inbox.quota_events e
            WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
            FOR UPDATE SKIP LOCKED
        ) x;
        IF v_free < v_stored THEN
            waiting := waiting + 1;  -- a living worker holds some of its events: the next round
            CONTINUE;
        END IF;
        SELECT r.retried, r.dead INTO v_r, v_d
        FROM inbox.release_claim(v_claim.id, v_claim.quota_ids, v_claim.versions, v_claim.is_delete,
                                 'the worker ended before it finished the batch',
                                 p_max_attempts, p_backoff_base, p_backoff_cap) r;
        retried := retried + v_r;
        dead := dead + v_d;
    END LOOP;
    RETURN NEXT;
END;
$$;
