-- -------------------------------------------------------------------------------------------------
-- Function: inbox.reap_abandoned_claims(p_limit integer, p_max_attempts integer,
--                                       p_backoff_base interval, p_backoff_cap interval)
--     RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.claim_ledger, inbox.claim_debts, inbox.quota_events, pg_locks
-- Writes:      through inbox.release_claim; inbox.claim_debts, inbox.quota_events,
--              public.quota_processing_errors (debts nobody else paid, through
--              inbox.bury_retries_exhausted)
-- Called by:   query reap_abandoned_claims (inbox/apply/worker.py, the reaper job); inbox.record_claim releases
--              the same claims as a worker records its own
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
-- Then the debts no worker paid: a worker that finished an event may have read its debts just
-- before the reaper recorded one. Each debt whose event no transaction holds is paid here: its
-- attempts are added (an event still pending that has used them all is dead-lettered).
-- A live session's claim is never touched: its statement and idle-in-transaction timeouts (the
-- worker's session settings) end it if it hangs, and then it is reaped here.
CREATE OR REPLACE FUNCTION inbox.reap_abandoned_claims(
    p_limit        integer,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_dead      bigint;
    v_quota_ids uuid[];
    v_versions  bigint[];
    v_is_delete boolean[];
    v_attempts  integer[];
BEGIN
    SELECT coalesce(sum(r.retried), 0)::bigint, coalesce(sum(r.dead), 0)::bigint
    INTO retried, dead
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

    WITH due AS (
        SELECT d.ctid AS address, d.quota_id, d.version, d.is_delete, d.claims
        FROM inbox.claim_debts d
        ORDER BY d.since
        LIMIT p_limit * 100
        FOR UPDATE SKIP LOCKED
    ),
    owed AS (
        SELECT d.quota_id, d.version, d.is_delete, sum(d.claims)::integer AS claims,
               array_agg(d.address) AS addresses
        FROM due d
        GROUP BY d.quota_id, d.version, d.is_delete
    ),
    free AS (  -- the events no transaction holds now (a worker holding one pays it itself)
        SELECT o.*, x.status, x.attempts, x.payload,
               x.status = 'pending' AND x.attempts + o.claims >= p_max_attempts AS exhausted
        FROM owed o
        CROSS JOIN LATERAL (
            SELECT e.status, e.attempts, e.payload
            FROM inbox.quota_events e
            WHERE (e.quota_id, e.version, e.is_delete) = (o.quota_id, o.version, o.is_delete)
            FOR UPDATE SKIP LOCKED
        ) x
    ),
    paid AS (  -- and those of events gone (retention): nothing left to pay
        DELETE FROM inbox.claim_debts d
        USING owed o
        WHERE d.ctid = ANY (o.addresses)
          AND (EXISTS (SELECT 1 FROM free f
                       WHERE (f.quota_id, f.version, f.is_delete) = (o.quota_id, o.version, o.is_delete))
               OR NOT EXISTS (SELECT 1 FROM inbox.quota_events e
                              WHERE (e.quota_id, e.version, e.is_delete) = (o.quota_id, o.version, o.is_delete)))
        RETURNING 1
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET attempts = e.attempts + f.claims,
            status = CASE WHEN f.exhausted THEN 'dead' ELSE e.status END,
            last_error = CASE WHEN f.exhausted THEN 'the worker ended before it finished the batch'
                              ELSE e.last_error END
        FROM free f
        WHERE (e.quota_id, e.version, e.is_delete) = (f.quota_id, f.version, f.is_delete)
        RETURNING f.quota_id, f.version, f.is_delete, f.attempts + f.claims AS attempts, f.exhausted
    )
    SELECT array_agg(m.quota_id), array_agg(m.version), array_agg(m.is_delete), array_agg(m.attempts)
    INTO v_quota_ids, v_versions, v_is_delete, v_attempts
    FROM marked m, (SELECT count(*) FROM paid) p
    WHERE m.exhausted;
    v_dead := inbox.bury_retries_exhausted(v_quota_ids, v_versions, v_is_delete, v_attempts,
                                           'the worker ended before it finished the batch');
    dead := dead + v_dead;
    RETURN NEXT;
END;
$$;
