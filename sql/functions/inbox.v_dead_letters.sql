-- -------------------------------------------------------------------------------------------------
-- View: inbox.v_dead_letters
--
-- Reads:       public.quota_processing_errors, inbox.quota_events, inbox.quota_versions
-- Writes:      -
-- Called by:   queries dlq_list, dlq_show, dead_letters_* (inbox/ops.py, inbox/apply/worker.py);
--              SELECT: inbox_worker, inbox_readonly
-- -------------------------------------------------------------------------------------------------
-- Every dead letter with what an operator needs to decide: the event's type, whether its inbox
-- row still exists (and in which state), and whether a newer version has been applied since
-- (superseded: a replay would end as stale).
DROP VIEW IF EXISTS inbox.v_dead_letters;
CREATE VIEW inbox.v_dead_letters AS
SELECT d.id, d.quota_id, d.version, d.is_delete,
       coalesce(d.event_data ->> 'eventType', d.event_data -> 'payload' ->> 'op',
                d.event_data ->> 'op', d.event_data ->> '__op')      AS event_type,
       d.error_class, d.error_message, d.retry_count, d.created_at,
       d.resolved_at, d.resolution_note,
       e.status                                                      AS inbox_status,
       g.version                                                     AS applied_version,
       coalesce((g.version, g.is_delete) >= (d.version, d.is_delete), false) AS superseded,
       d.event_data
FROM public.quota_processing_errors d
LEFT JOIN inbox.quota_events e USING (quota_id, version, is_delete)
LEFT JOIN inbox.quota_versions g ON g.quota_id = d.quota_id;

GRANT SELECT ON inbox.v_dead_letters TO inbox_worker;
-- Read-only reads counts and states, never payloads (migration 012): every column but event_data.
GRANT SELECT (id, quota_id, version, is_delete, event_type, error_class, error_message, retry_count,
              created_at, resolved_at, resolution_note, inbox_status, applied_version, superseded)
    ON inbox.v_dead_letters TO inbox_readonly;
