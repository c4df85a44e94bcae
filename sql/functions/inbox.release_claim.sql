-- -------------------------------------------------------------------------------------------------
-- Function: inbox.release_claim(p_ledger bigint, p_quota_ids uuid[], p_versions bigint[],
--                               p_is_delete boolean[], p_error text, p_max_attempts integer,
--                               p_backoff_base interval, p_backoff_cap interval)
--     RETURNS TABLE (retried, dead)
--
-- Reads:       inbox.claim_ledger, inbox.quota_events, inbox.claim_debts
-- Writes:      inbox.claim_ledger (deletes p_ledger), inbox.claim_debts (pays them through
--              inbox.pay_claim_debts), inbox.quota_events,
--              public.quota_processing_errors (through inbox.bury_retries_exhausted), inbox.metric_counters ('retried', through add_counters)
-- Called by:   query release_claim (inbox/apply/worker.py); inbox.reap_abandoned_claims, inbox.record_claim
-- -------------------------------------------------------------------------------------------------
-- Spend one attempt on each of these events, after a transient failure or for a worker that died
-- with them. One still pending is pending again after an exponential backoff with jitter, or dead
-- ('retries_exhausted') once p_max_attempts attempts have been spent. Debts the event owes (dead
-- claims recorded in inbox.claim_debts) are paid here too.
-- With p_ledger: a claim that failed (its apply rolled back, or its worker died). Only if that claim
-- ledger row is still there (it is deleted here: a worker and the reaper racing for the same claim
-- spend its attempt once), and then on every event of it: one another worker has finished keeps its
-- outcome with the attempt counted; one a living worker holds right now cannot be written, so the
-- attempt becomes a debt in inbox.claim_debts, which that worker (or the next) pays before it
-- applies the event. So every claim that failed holding an event costs it exactly one attempt,
-- whoever took the event next, and nothing here waits for another worker.
-- Without p_ledger (a part of a bisected batch, claimed by its own statement): the events still
-- pending that no other transaction holds.
CREATE OR REPLACE FUNCTION inbox.release_claim(
    p_ledger       bigint,
    p_quota_ids    uuid[],
    p_versions     bigint[],
    p_is_delete    boolean[],
    p_error        text,
    p_max_attempts integer,
    p_backoff_base interval,
    p_backoff_cap  interval
) RETURNS TABLE (retried bigint, dead bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_quota_ids uuid[];
    v_versions  bigint[];
    v_is_delete boolean[];
    v_debts     bigint := 0;
    v_retried   bigint;
    v_dead      bigint;
    v_attempts  integer[];
BEGIN
    IF p_ledger IS NOT NULL THEN
        DELETE FROM inbox.claim_ledger l WHERE l.id = p_ledger;
        IF NOT FOUND THEN  -- released or reaped already: its attempt is spent
            retried := 0;
            dead := 0;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

    -- the events this transaction can hold now
    SELECT coalesce(array_agg(x.quota_id), '{}'), coalesce(array_agg(x.version), '{}'),
           coalesce(array_agg(x.is_delete), '{}')
    INTO v_quota_ids, v_versions, v_is_delete
    FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
    CROSS JOIN LATERAL (
        SELECT e.quota_id, e.version, e.is_delete
        FROM inbox.quota_events e
        WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete)
          AND (e.status = 'pending' OR p_ledger IS NOT NULL)
        FOR UPDATE SKIP LOCKED
    ) x;

    IF p_ledger IS NOT NULL THEN
        -- the others of the claim are in a living worker's hands: a debt it pays
        INSERT INTO inbox.claim_debts (quota_id, version, is_delete, claims)
        SELECT k.quota_id, k.version, k.is_delete, 1
        FROM unnest(p_quota_ids, p_versions, p_is_delete) AS k(quota_id, version, is_delete)
        WHERE EXISTS (SELECT 1 FROM inbox.quota_events e
                      WHERE (e.quota_id, e.version, e.is_delete) = (k.quota_id, k.version, k.is_delete))
          AND NOT EXISTS (SELECT 1 FROM unnest(v_quota_ids, v_versions, v_is_delete) AS f(quota_id, version, is_delete)
                          WHERE (f.quota_id, f.version, f.is_delete) = (k.quota_id, k.version, k.is_delete))
        ORDER BY 1, 2, 3;
        GET DIAGNOSTICS v_debts = ROW_COUNT;
        -- an attempt spent all the same (retried), paid when the event is next finished or given back
        PERFORM inbox.add_counters(ARRAY['retried'], ARRAY[''], ARRAY[v_debts::float8]);
    END IF;

    WITH paid AS (
        SELECT p.quota_id, p.version, p.is_delete, p.claims
        FROM inbox.pay_claim_debts(v_quota_ids, v_versions, v_is_delete) p
    ),
    held AS (
        SELECT e.quota_id, e.version, e.is_delete, e.status, e.attempts + coalesce(p.claims, 0) AS spent,
               e.status = 'pending' AND e.attempts + coalesce(p.claims, 0) + 1 >= p_max_attempts AS exhausted
        FROM unnest(v_quota_ids, v_versions, v_is_delete) AS f(quota_id, version, is_delete)
        JOIN inbox.quota_events e ON (e.quota_id, e.version, e.is_delete) = (f.quota_id, f.version, f.is_delete)
        LEFT JOIN paid p ON (p.quota_id, p.version, p.is_delete) = (f.quota_id, f.version, f.is_delete)
    ),
    marked AS (
        UPDATE inbox.quota_events e
        SET status = CASE WHEN h.exhausted THEN 'dead' ELSE e.status END,
            attempts = h.spent + 1,
            last_error = CASE WHEN h.status = 'pending' THEN p_error ELSE e.last_error END,
            -- equal jitter: half the exponential delay fixed, half random
            next_attempt_at = CASE WHEN h.status = 'pending'
                                   THEN now() + least(p_backoff_cap, p_backoff_base * power(2, h.spent))
                                                * (0.5 + random() / 2)
                                   ELSE e.next_attempt_at END
        FROM held h
        WHERE (e.quota_id, e.version, e.is_delete) = (h.quota_id, h.version, h.is_delete)
        RETURNING h.quota_id, h.version, h.is_delete, h.spent + 1 AS attempts, h.exhausted
    )
    SELECT count(*) FILTER (WHERE NOT m.exhausted), count(*) FILTER (WHERE m.exhausted),
           array_agg(m.quota_id) FILTER (WHERE m.exhausted), array_agg(m.version) FILTER (WHERE m.exhausted),
           array_agg(m.is_delete) FILTER (WHERE m.exhausted), array_agg(m.attempts) FILTER (WHERE m.exhausted)
    INTO v_retried, v_dead, v_quota_ids, v_versions, v_is_delete, v_attempts
    FROM marked m;
    PERFORM inbox.bury_retries_exhausted(v_quota_ids, v_versions, v_is_delete, v_attempts, p_error);
    -- A retry leaves the status as it was: counted here.
    PERFORM inbox.add_counters(ARRAY['retried'], ARRAY[''], ARRAY[v_retried::float8]);
    retried := v_retried + v_debts;
    dead := v_dead;
    RETURN NEXT;
END;
$$;
