-- -------------------------------------------------------------------------------------------------
-- View: inbox.v_status (status, events, exact)
--
-- Reads:       inbox.status_counts()
-- Writes:      -
-- Called by:   query status_by_state (`inbox status`); DBAs (SELECT: inbox_readonly)
-- -------------------------------------------------------------------------------------------------
DROP VIEW IF EXISTS inbox.v_status;
CREATE VIEW inbox.v_status AS
SELECT s.status, s.events, s.exact
FROM inbox.status_counts() s;

GRANT SELECT ON inbox.v_status TO inbox_readonly;
