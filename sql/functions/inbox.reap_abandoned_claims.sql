-- -------------------------------------------------------------------------------------------------
-- Function: inbox.reap_abandoned_claims(p_limit integer, p_max_attempts integer,
--                                       p_backoff_base interval, p_backoff_cap interval)
--     RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.claim_ledger, pg_locks (inbox.claim_session_alive)
-- Writes:      through inbox.release_claim
-- Called by:   query reap_abandoned_claims (inbox/apply/worker.py, the reaper job)
-- -------------------------------------------------------------------------------------------------
-- Spend an attempt for workers that died with a batch in hand: every claim ledger row whose apply
-- session is gone (no session holds the advisory lock on its session_token). Its transaction is
-- gone, so are its row locks: the events were claimable again the moment it died, and a living
-- worker may hold them already. Each of them has one attempt spent (inbox.release_claim with the
-- claim's ledger row): pending ones go back with a backoff or, out of attempts, are dead-lettered
-- ('retries_exhausted'); ones a living worker finished meanwhile keep their outcome; ones a living
-- worker holds now owe the attempt (inbox.claim_debts), paid before they are applied again. So every
-- worker that dies holding an event costs it exactly one attempt, whoever took the event next: an
-- event that kills every worker that takes it ends as a dead letter after p_max_attempts claims.
-- A live session's claim is never touched: its statement and idle-in-transaction timeouts (the
-- worker's session settings) end it if it hangs, and then it is reaped here.
CREATE OR REPLACE FUNCTION inbox.reap_abandoned_claims(
    p_limit        integer,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(r.retried), 0)::bigint, coalesce(sum(r.dead), 0)::bigint
    FROM (
        SELECT l.id, l.quota_ids, l.versions, l.is_delete
        FROM inbox.claim_ledger l
        WHERE NOT inbox.claim_session_alive(l.session_token)
        ORDER BY l.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ) abandoned,
    LATERAL inbox.release_claim(abandoned.id, abandoned.quota_ids, abandoned.versions, abandoned.is_delete,
                                'the worker ended before it finished the batch',
                                p_max_attempts, p_backoff_base, p_backoff_cap) r;
$$;
