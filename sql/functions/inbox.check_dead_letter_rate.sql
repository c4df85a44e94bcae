-- -------------------------------------------------------------------------------------------------
-- Function: inbox.check_dead_letter_rate(p_window interval, p_threshold integer)
--     RETURNS TABLE (dead_letters, by_class, msg_id)
--
-- Reads:       public.quota_processing_errors
-- Writes:      through inbox.publish_alert
-- Called by:   query check_dead_letter_rate (inbox/jobs.py, alerts)
-- -------------------------------------------------------------------------------------------------
-- Dead letters created in the last p_window, by class; publishes 'dead_letter_rate' when there
-- are at least p_threshold of them (at most once per p_window).
CREATE OR REPLACE FUNCTION inbox.check_dead_letter_rate(p_window interval, p_threshold integer)
RETURNS TABLE (dead_letters bigint, by_class jsonb, msg_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_total bigint;
    v_by_class jsonb;
BEGIN
    SELECT coalesce(sum(c.n), 0), coalesce(jsonb_object_agg(c.error_class, c.n), '{}')
    INTO v_total, v_by_class
    FROM (SELECT d.error_class, count(*) AS n
          FROM public.quota_processing_errors d
          WHERE d.created_at > now() - p_window
          GROUP BY d.error_class) c;
    dead_letters := v_total;
    by_class := v_by_class;
    msg_id := NULL;
    IF v_total >= p_threshold THEN
        msg_id := inbox.publish_alert(
            'dead_letter_rate',
            jsonb_build_object('severity', 'error',
                               'summary', format('%s dead letters in the last %s (threshold %s)',
                                                 v_total, p_window, p_threshold),
                               'dead_letters', v_total, 'by_class', v_by_class,
                               'window_seconds', extract(epoch FROM p_window),
                               'threshold', p_threshold),
            p_window);
    END IF;
    RETURN NEXT;
END;
$$;
