-- The logins of docker-compose.yml: one per process, each a member of the least-privilege group roles
-- of migration 007 (SECURITY.md). Run by the one-shot service `logins` after `inbox migrate`, as the
-- database owner, with each password as a psql variable (from the operator's environment, never a
-- default). Idempotent: a second run sets the same passwords again.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', name)
FROM (VALUES ('quota_webhook'), ('quota_consumer'), ('quota_worker'), ('quota_sink'), ('quota_reader')) AS l(name)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = l.name)
\gexec

ALTER ROLE quota_webhook  LOGIN PASSWORD :'webhook_password';   -- inbox serve
ALTER ROLE quota_consumer LOGIN PASSWORD :'consumer_password';  -- inbox consume
ALTER ROLE quota_worker   LOGIN PASSWORD :'worker_password';    -- inbox work
ALTER ROLE quota_sink     LOGIN PASSWORD :'sink_password';      -- the Kafka Connect JDBC sink
ALTER ROLE quota_reader   LOGIN PASSWORD :'reader_password';    -- DBAs, Grafana, Prometheus' figures

GRANT inbox_ingest   TO quota_webhook, quota_consumer, quota_sink;
GRANT inbox_worker   TO quota_worker;
GRANT inbox_readonly TO quota_webhook, quota_worker, quota_reader;  -- /metrics and /ready read counts
