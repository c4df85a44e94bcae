"""`inbox migrate`: numbered migrations, then the object files, under one advisory lock.

1. Refuse a schema public or inbox that roles other than its owner may CREATE in: such a role could
   plant a function or operator that some caller's search_path picks up.
2. The numbered migrations of sql/migrations, in order, each in a transaction, recorded with its
   checksum in inbox.schema_migrations; an applied one that was edited is refused. The first is
   010_baseline: 001-010 squashed. A database that recorded all of 001-010 (each with the checksum
   its file had, SQUASHED below) has the baseline and keeps that history; one that recorded only
   some of them is refused: the release before the baseline finishes it.
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
from inbox.db.sqlfiles import BASELINE, Migration, ObjectFile, migrations, object_files

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """The database's migration history does not match the files shipped with this version."""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already: int
    # object files (sql/functions) applied by this run
    objects: list[str] = field(default_factory=list)


# The migrations squashed into 010_baseline, as releases before it recorded them: (version, name,
# sha256 of the file). Their SQL is in git history (tests/fixtures/make_db_010.py reads it there).
SQUASHED: tuple[tuple[int, str, str], ...] = (
    (1, "csla_tables", "3d3521dfb002d00af4d4fef22ad5ef7310328642cef6dc33722037d5c4aef1a0"),
    (2, "inbox_tables", "f98e2e778435f26305d24be7338fa0df2614a3083d2745363c32105e72f29ee7"),
    (3, "inbox_functions", "ebcb380ee0f4561b7292fa0fd41761cae4975732b7ca3848c67b9371a6231db7"),
    (4, "outbox_queue", "8ba1126d476fcb1f52b49ac614b33eb450a381de2183f09cc23ecb4845d72bcf"),
    (5, "kafka_and_sink", "ba82680d21946813b31eb58e98efcda1d16e3c83e7aaaaeec88f824544611e26"),
    (6, "operations", "a0cc2de1761b4f2de867538b687821509b3447269171f32229c03f1853dda636"),
    (7, "roles", "5e37a5e4f8187078bbc61f30dccca8ff3621bce5f64fcff27810bcb8c57f4c85"),
    (8, "apply_events_v2", "101e4c3a32b4708fa930b6aafbc85f384887551daf60fcd2fab533e470a35776"),
    (9, "status_counters_plan", "1e49a7b864c0bb8fe5d8c6115fbb3a6e51e710a613f61ffdbe40f0674b4db641"),
    (10, "purge_by_row_address", "18130b6daef73844198dda2da5d42ce1dd40db33c1374da901ddb65c66f98110"),
)
# The last release that ships 001-010 as separate files: it finishes a database they left part-way.
BEFORE_BASELINE = "61b721b"


def _check_history(files: list[Migration], applied: list[MigrationRow]) -> None:
    by_version = {m.version: m for m in files}
    squashed = {v: (name, checksum) for v, name, checksum in SQUASHED} if files[0].name == BASELINE else {}
    recorded_squashed: list[int] = []
    for row in applied:
        version = int(row["version"])
        old = squashed.get(version)
        if old is not None and row["name"] == old[0]:
            # recorded by a release before the baseline: accepted as it was, never rewritten
            if row["checksum"] != old[1]:
                raise MigrationError(
                    f"migration {version:03d}_{old[0]} was changed after it was applied "
                    f"(checksum {str(row['checksum'])[:12]} in the database, {old[1][:12]} when it "
                    "shipped): it was applied from an edited copy; check the schema against the release "
                    "that shipped it, then correct the checksum recorded in inbox.schema_migrations"
                )
            recorded_squashed.append(version)
            continue
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
    missing = sorted(set(squashed) - set(recorded_squashed)) if recorded_squashed else []
    if missing:
        last = max(recorded_squashed)
        raise MigrationError(
            f"this database stopped part-way through migrations 001-{files[0].version:03d} (it has "
            f"{last:03d}_{squashed[last][0]}, not {missing[0]:03d}_{squashed[missing[0]][0]}), which this "
            f"version ships squashed into {files[0].version:03d}_{BASELINE}: run `inbox migrate` of the "
            f"release before the baseline (commit {BEFORE_BASELINE}) first, then this one"
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
