-- -------------------------------------------------------------------------------------------------
-- Function: inbox.pay_claim_debts(p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[])
--     RETURNS TABLE (quota_id uuid, version bigint, is_delete boolean, claims integer)
--
-- Reads:       inbox.claim_debts
-- Writes:      inbox.claim_debts (deletes the debts of these events)
-- Called by:   inbox.process_batch, inbox.release_claim (each on the events its transaction holds)
-- Privileges:  internal: EXECUTE revoked from PUBLIC, granted to inbox_worker (the callers run as it)
-- -------------------------------------------------------------------------------------------------
-- Pay the attempts that dead claims owe these events (recorded by inbox.release_claim for events a
-- living worker held, migration 015): delete their debts and return, per event that owed any, how
-- many attempts it owed. The caller holds the events' rows, so no reaper pays the same debt.
-- By the debts' index (quota_id, version, is_delete), one lookup per event; usually nothing is owed.
CREATE OR REPLACE FUNCTION inbox.pay_claim_debts(p_quota_ids uuid[], p_versions bigint[], p_is_delete boolean[])
RETURNS TABLE (quota_id uuid, version bigint, is_delete boolean, claims integer)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH paid_rows AS (
        DELETE FROM inbox.claim_debts d
        USING unnest(p_quota_ids, p_versions, p_is_delete) AS f(quota_id, version, is_delete)
        WHERE (d.quota_id, d.version, d.is_delete) = (f.quota_id, f.version, f.is_delete)
        RETURNING d.quota_id, d.version, d.is_delete, d.claims
    )
    SELECT p.quota_id, p.version, p.is_delete, sum(p.claims)::integer
    FROM paid_rows p
    GROUP BY p.quota_id, p.version, p.is_delete;
$$;

REVOKE EXECUTE ON FUNCTION inbox.pay_claim_debts(uuid[], bigint[], boolean[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inbox.pay_claim_debts(uuid[], bigint[], boolean[]) TO inbox_worker;
