"""Numbered migrations, applied in order under an advisory lock, each recorded with its checksum."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from inbox.db.connect import DictConnection, connect
from inbox.db.pgmq_setup import ensure_pgmq
from inbox.db.sqlfiles import Migration, migrations, query

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """The database's migration history does not match the files shipped with this version."""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already: int


def _check_history(files: list[Migration], applied: list[dict[str, object]]) -> None:
    by_version = {m.version: m for m in files}
    for row in applied:
        version = int(str(row["version"]))
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


def migrate(dsn: str) -> MigrationReport:
    files = migrations()
    with connect(dsn, autocommit=True, application_name="quota-inbox migrate") as conn:
        conn.execute(query("lock_migrations"))
        try:
            return _migrate_locked(conn, files)
        finally:
            conn.execute(query("unlock_migrations"))


def _migrate_locked(conn: DictConnection, files: list[Migration]) -> MigrationReport:
    conn.execute(query("create_migrations_table"))
    applied_rows = conn.execute(query("applied_migrations")).fetchall()
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
                conn.execute(
                    query("record_migration"),
                    {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
                )
        except psycopg.Error as exc:
            raise MigrationError(f"migration {label} failed: {exc}") from exc
        log.info("applied migration %s", label)
        newly.append(label)
    return MigrationReport(applied=newly, already=len(done))


def pending_migrations(conn: DictConnection) -> list[str]:
    """Migrations not yet applied (or a MigrationError if the history does not match)."""
    files = migrations()
    if not conn.execute(query("migrations_table_exists")).fetchone()["present"]:  # type: ignore[index]
        return [f"{m.version:03d}_{m.name}" for m in files]
    applied_rows = conn.execute(query("applied_migrations")).fetchall()
    _check_history(files, applied_rows)
    done = {int(row["version"]) for row in applied_rows}
    return [f"{m.version:03d}_{m.name}" for m in files if m.version not in done]
