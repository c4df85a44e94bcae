"""Make pgmq available: the extension where the server has it, else the SQL bundled in the pgmq wheel."""

from __future__ import annotations

import logging

import psycopg

from inbox.db.queries import DictConnection, Queries

log = logging.getLogger(__name__)


class PgmqUnavailable(Exception):
    """Neither CREATE EXTENSION pgmq nor the bundled pgmq.sql could be installed."""


def ensure_pgmq(conn: DictConnection) -> str:
    """Idempotent; returns how pgmq is provided ('present', 'extension' or 'bundled-sql')."""
    queries = Queries(conn)
    if queries.pgmq_installed():
        return "present"
    if queries.pgmq_extension_available():
        try:
            queries.create_pgmq_extension()
            return "extension"
        except psycopg.Error as exc:
            log.warning("CREATE EXTENSION pgmq failed (%s); installing the bundled SQL", exc)
    try:
        from pgmq.install import get_embedded_install_sql

        with conn.transaction():
            conn.execute(get_embedded_install_sql().encode("utf-8"))
    except Exception as exc:
        raise PgmqUnavailable(
            f"pgmq is not installed and could not be installed: {exc}. "
            "Install the pgmq extension on the server or grant this role CREATE on the database."
        ) from exc
    return "bundled-sql"
