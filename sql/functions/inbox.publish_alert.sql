-- -------------------------------------------------------------------------------------------------
-- Function: inbox.publish_alert(p_alert text, p_message jsonb, p_renotify interval) RETURNS bigint
--
-- Reads:       inbox.alert_state
-- Writes:      inbox.alert_state, pgmq queue inbox_alerts (pgmq.send)
-- Called by:   query publish_alert (inbox/jobs.py); inbox.check_dead_letter_rate
-- -------------------------------------------------------------------------------------------------
-- Publish an alert unless the same alert was published less than p_renotify ago.
-- Returns the pgmq msg_id, or NULL when suppressed. The alert row lock serialises publishers.
CREATE OR REPLACE FUNCTION inbox.publish_alert(p_alert text, p_message jsonb, p_renotify interval)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_msg_id bigint;
BEGIN
    INSERT INTO inbox.alert_state (alert, last_sent_at, last_msg_id)
    VALUES (p_alert, '-infinity', 0)
    ON CONFLICT (alert) DO NOTHING;
    PERFORM 1 FROM inbox.alert_state
    WHERE alert = p_alert AND last_sent_at <= now() - p_renotify
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_msg_id := pgmq.send('inbox_alerts',
                          p_message || jsonb_build_object('alert', p_alert, 'sent_at', now()));
    UPDATE inbox.alert_state SET last_sent_at = now(), last_msg_id = v_msg_id WHERE alert = p_alert;
    RETURN v_msg_id;
END;
$$;
