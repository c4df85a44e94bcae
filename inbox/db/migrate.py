"""`inbox migrate`: numbered migrations, then the object files, under one advisory lock.

1. Refuse a schema public or inbox that roles other than its owner may CREATE in: such a role could
   plant a function or operator that some caller's search_path picks up.
2. The numbered migrations of sql/migrations, in order, each in a transaction, recorded with its
   checksum in inbox.schema_migrations; an applied one that was edited is refused.
3. The object files of sql/functions, in manifest order, each in a transaction with search_path
   pinned to pg_catalog, recorded with its checksum in inbox.schema_objects: a file is applied when
   its checksum differs from the one recorded, and every file after a numbered migration ran (that
   migration may have dropped or altered what the files define).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from inbox.db.connect import DictConnection, connect
from inbox.db.errors import DatabaseError
from inbox.db.pgmq_setup import ensure_pgmq
from inbox.db.queries import MigrationRow, Queries
from inbox.db.sqlfiles import Migration, ObjectFile, migrations, object_files

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """The database's migration history does not match the files shipped with this version."""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already: int
    # object files (sql/functions) applied by this run
    objects: list[str] = field(default_factory=list)


def _check_history(files: list[Migration], applied: list[MigrationRow]) -> None:
    by_version = {m.version: m for m in files}
    for row in applied:
        version = int(row["version"])
        shipped = by_version.get(version)
        if shipped is None:
            raise MigrationError(
                f"database has migration {version:03d}_{row['name']} which this version does not ship; "
                "refusing to run against a newer schema"
            )
        if shipped.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {version:03d}_{shipped.name} was changed after it was applied "
                f"(checksum {str(row['checksum'])[:12]} in the database, "
                f"{shipped.checksum[:12]} in the file); "
                "write a new migration instead of editing an applied one"
            )


def _refuse_schemas_others_may_create_in(queries: Queries) -> None:
    for row in queries.schemas_others_may_create_in():
        schema = str(row["schema"])
        grantees = "PUBLIC" if row["public_may_create"] else ", ".join(str(r) for r in row["roles"])
        if grantees:
            raise MigrationError(
                f"schema {schema} lets {grantees} create objects in it, so a function planted there "
                f"could run with the rights of whoever calls into this service's SQL; run "
                f"REVOKE CREATE ON SCHEMA {schema} FROM {grantees}; (as the schema's owner), "
                "then migrate again"
            )


# How long `inbox migrate` waits for another migrator to finish before it gives up.
LOCK_WAIT_SECONDS = 60.0


def migrate(dsn: str, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> MigrationReport:
    files = migrations()
    objects = object_files()
    with connect(dsn, autocommit=True, application_name="quota-inbox migrate") as conn:
        queries = Queries(conn)
        _lock(queries, lock_wait_seconds)
        try:
            return _migrate_locked(conn, files, objects)
        finally:
            queries.unlock_migrations()


def _lock(queries: Queries, wait_seconds: float) -> None:
    """Take the migration lock, waiting up to wait_seconds for another migrator. Any role that can
    connect may take an advisory lock (PostgreSQL grants them to PUBLIC): a session that holds it and
    never lets go gets named, instead of hanging every `inbox migrate` and `inbox run` start."""
    deadline = time.monotonic() + wait_seconds
    while not queries.try_lock_migrations():
        if time.monotonic() >= deadline:
            holders = queries.migration_lock_holder()
            who = "; ".join(
                f"pid {h['pid']} (user {h['usename']}, application {h['application_name']!r}, "
                f"from {h['client_addr'] or 'local socket'}, connected {h['backend_start']})"
                for h in holders
            )
            raise MigrationError(
                f"another session has held the migration lock for over {wait_seconds:g} s: "
                f"{who or 'it let go just now'}. If it is not a migration still running, end it "
                "(SELECT pg_terminate_backend(<pid>);) and migrate again"
            )
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))


def _migrate_locked(
    conn: DictConnection, files: list[Migration], objects: list[ObjectFile]
) -> MigrationReport:
    queries = Queries(conn)
    _refuse_schemas_others_may_create_in(queries)
    queries.create_migrations_table()
    applied_rows = queries.applied_migrations()
    _check_history(files, applied_rows)
    done = {int(row["version"]) for row in applied_rows}
    ensure_pgmq(conn)
    newly: list[str] = []
    for migration in files:
        if migration.version in done:
            continue
        label = f"{migration.version:03d}_{migration.name}"
        try:
            with conn.transaction():
                conn.execute(migration.sql.encode("utf-8"))
                queries.record_migration(migration.version, migration.name, migration.checksum)
        except DatabaseError as exc:
            raise MigrationError(f"migration {label} failed: {exc}") from exc
        log.info("applied migration %s", label)
        newly.append(label)
    applied_objects = _apply_object_files(conn, objects, every_file=bool(newly))
    return MigrationReport(applied=newly, already=len(done), objects=applied_objects)


def _apply_object_files(conn: DictConnection, objects: list[ObjectFile], every_file: bool) -> list[str]:
    queries = Queries(conn)
    recorded = queries.applied_object_files()
    applied: list[str] = []
    for obj in objects:
        if not every_file and recorded.get(obj.file) == obj.checksum:
            continue
        try:
            with conn.transaction():
                queries.pin_search_path_locally()
                conn.execute(obj.sql.encode("utf-8"))
                queries.record_object_file(obj.file, obj.checksum)
        except DatabaseError as exc:
            raise MigrationError(f"sql/functions/{obj.file} failed: {exc}") from exc
        log.info("applied sql/functions/%s", obj.file)
        applied.append(obj.file)
    for file in queries.forget_object_files([o.file for o in objects]):
        log.info("forgot sql/functions/%s: this version no longer ships it", file)
    return applied


def pending_migrations(conn: DictConnection) -> list[str]:
    """What `inbox migrate` would do: the numbered migrations not yet applied or, once they all are,
    the object files whose text differs from what the database has (or a MigrationError if the
    history does not match)."""
    files = migrations()
    queries = Queries(conn)
    if not queries.migrations_table_exists():
        return [f"{m.version:03d}_{m.name}" for m in files]
    applied_rows = queries.applied_migrations()
    _check_history(files, applied_rows)
    done = {int(row["version"]) for row in applied_rows}
    pending = [f"{m.version:03d}_{m.name}" for m in files if m.version not in done]
    if pending:
        return pending
    recorded = queries.applied_object_files()
    return [f"sql/functions/{o.file}" for o in object_files() if recorded.get(o.file) != o.checksum]
