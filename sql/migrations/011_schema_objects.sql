-- The files of sql/functions (one per function, view and trigger) applied to this database, each
-- with the checksum of the text applied. `inbox migrate` applies a file again when its checksum
-- differs from the one recorded here, and every file after a numbered migration ran (inbox/db/migrate.py).
CREATE TABLE inbox.schema_objects (
    file       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Every role may see whether the functions are up to date (/ready, `inbox consume` check it).
GRANT SELECT ON inbox.schema_objects TO inbox_ingest, inbox_worker, inbox_readonly;
