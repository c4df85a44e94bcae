"""The steps of the apply that both SQL-only ceilings write the same way (the honest ceiling's
HONEST_APPLY in ceiling.py, the batch log's APPLY in batchlog_sql.py), defined once: each is one CTE
(or a pair) of their statement, which reads a CTE `best` (the event per quota that may apply) and
names its own CTEs as here. What differs between them (the claim, the checks, the outcome of each
event) stays in each statement."""

from __future__ import annotations

from inbox_bench.quota_sql import COLUMNS, ON_CONFLICT

BLOCKED = "cannot delete quota: call-offs reference it"


def blocked(alias: str) -> str:
    """Whether the event `alias` is a delete that call-offs block."""
    a = alias
    return (
        f"{a}.is_delete AND EXISTS (SELECT 1 FROM public.call_off x WHERE x.quota_id = {a}.quota_id)"
        " AS blocked"
    )


# The version gate: what `best` holds passes when it is newer than what the gate saw.
GATE = """gate AS (
    INSERT INTO inbox.quota_versions AS v (quota_id, version, is_delete, applied_at)
    SELECT b.quota_id, b.version, b.is_delete, now()
    FROM best b
    ORDER BY b.quota_id  -- one lock order for both sessions
    ON CONFLICT (quota_id) DO UPDATE
        SET version = excluded.version, is_delete = excluded.is_delete,
            previous_version = v.version, applied_at = excluded.applied_at
        WHERE (excluded.version, excluded.is_delete) > (v.version, v.is_delete)
    RETURNING v.quota_id, v.version, v.is_delete, v.previous_version, v.applied_at
)"""


def upserted_deleted(values: str) -> str:
    """The quota rows of what passed the gate (CTE `passed`, alias p): upserted with `values` (the
    SELECT list of quota_sql.COLUMNS), or deleted."""
    return f"""upserted AS (
    INSERT INTO public.quota AS q ({COLUMNS})
    SELECT {values}
    FROM passed p
    WHERE NOT p.is_delete
    ORDER BY p.quota_id
    {ON_CONFLICT}
    RETURNING q.*
),
deleted AS (
    DELETE FROM public.quota q
    USING passed p
    WHERE p.is_delete AND q.quota_id = p.quota_id
    RETURNING q.quota_id
)"""


# One outbox message per change, the message apply_events builds, inserted into the queue's table as
# inbox.process_batch does (the rows pgmq.send_batch writes, without its dynamic SQL: issue 13);
# `published` counts the messages sent.
PUBLISHED = """messages AS (  -- a delete of a quota that is not there changes nothing and publishes nothing
    SELECT p.quota_id,
           jsonb_build_object(
               'quota_id', p.quota_id,
               'version', p.version,
               'previous_version', p.previous_version,
               'op', CASE WHEN p.is_delete THEN 'delete' ELSE 'upsert' END,
               'quota', CASE WHEN p.is_delete THEN NULL ELSE to_jsonb(u) END,
               'applied_at', p.applied_at) AS message
    FROM passed p
    LEFT JOIN upserted u USING (quota_id)
    LEFT JOIN deleted d USING (quota_id)
    WHERE NOT p.is_delete OR d.quota_id IS NOT NULL
),
sent AS (
    INSERT INTO pgmq.q_quota_changes (vt, message)
    SELECT clock_timestamp(), m.message FROM messages m ORDER BY m.quota_id
    RETURNING msg_id
),
published AS (
    SELECT count(*) AS n FROM sent
)"""
