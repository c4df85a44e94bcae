-- Issue 13 (path 4 PostgreSQL CPU): HOT updates for the version gate and the quota row.
-- Every apply updates one inbox.quota_versions row and (an upsert) one public.quota row per quota.
-- An UPDATE is HOT (no new index entries, no dead index entries for vacuum) only when it changes no
-- column an index names, in its key or its predicate, and the new version fits on the same page.
--
-- quota_versions_deleted_idx (012) keyed applied_at under the predicate is_delete: every gate update
-- sets applied_at, so not one gate update was HOT. Its only reader is inbox.purge_history's gate
-- retention (off by default, INBOX_GATE_RETENTION), which now reads the gate by a seq scan: one
-- pass over the table per retention run, against an index entry written and vacuumed per apply.
-- Measured on embedded PostgreSQL 18, 100k gate rows (10k deleted and old), machine at load 7.6 on
-- 2 cores: the gate selection 75 ms, a whole purge_history call deleting 1,000 gates 100-140 ms. The gate keeps its
-- fillfactor 80 (010).
DROP INDEX IF EXISTS inbox.quota_versions_deleted_idx;

-- public.quota had fillfactor 100: an update of a seeded row rarely found room on its page, so it
-- moved to another page (non-HOT, a new primary key entry). Its only index is the primary key
-- (quota_id), which the apply never changes. Fillfactor 80 leaves room on new pages; rows already
-- on full pages gain room as updates move them (or after a VACUUM FULL / pg_repack, an operator's
-- choice: the table is not rewritten here, to keep the migration short on a large table).
ALTER TABLE public.quota SET (fillfactor = 80);
