"""Sessions: the DSN (role, connect timeout), exact decimals out of jsonb, worker session limits,
reconnecting sessions for the long-running loops, and the HTTP ingestor's pool.

Starting the embedded server is explicit and lives elsewhere (inbox/db/embedded.py): nothing here
starts a database."""

from __future__ import annotations

import json
import select
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from inbox.db.queries import DictConnection as DictConnection
from inbox.db.queries import Queries

DictPool = ConnectionPool[DictConnection]

# Python refuses to convert integer text longer than this (sys.get_int_max_str_digits, CVE-2020-10735).
_INT_DIGITS = 4000


def _exact_int(text: str) -> int | Decimal:
    """An integer beyond Python's conversion limit stays exact as a Decimal. The ingestor accepts
    1e5000 (a valid numeric), but PostgreSQL writes it back as 5001 digits: read as int, it would
    raise while the worker loads the claimed batch, and stall every event claimed with it."""
    return int(text) if len(text) <= _INT_DIGITS else Decimal(text)


# jsonb numbers come back as Decimal, never float: a quantity read from the inbox stays exact.
_loads = partial(json.loads, parse_float=Decimal, parse_int=_exact_int)


def load_json(text: str) -> Any:
    """JSON text as PostgreSQL printed it, read the way every jsonb value of a connection is."""
    return _loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_encode_extra)


def _encode_extra(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Callers send decimals as strings so PostgreSQL reads them exactly into numeric.
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def configure(conn: psycopg.Connection[Any]) -> None:
    set_json_loads(_loads, conn)
    set_json_dumps(_dumps, conn)


def with_role(dsn: str, role: str | None) -> str:
    """The DSN whose sessions start as `role` (SET ROLE done by the server at connect), or dsn itself.

    The role rides in libpq's startup options, so every connection made from the DSN has it: pooled
    ones, reconnections after an outage, the worker's jobs and listener. RESET ROLE returns to it.
    `role` is a plain identifier (Settings.RoleName): nothing in it needs quoting.
    """
    if role is None:
        return dsn
    options = conninfo_to_dict(dsn).get("options") or ""
    return make_conninfo(dsn, options=f"{options} -c role={role}".strip())


def with_timeout(dsn: str, seconds: int = 10, *, force: bool = False) -> str:
    """The DSN with a connect_timeout unless it has one (force: even if it has a longer one): a host
    that drops packets answers in seconds."""
    if not force and "connect_timeout" in conninfo_to_dict(dsn):
        return dsn
    return make_conninfo(dsn, connect_timeout=str(seconds))


def connect(dsn: str, *, autocommit: bool = False, application_name: str = "quota-inbox") -> DictConnection:
    conn = psycopg.connect(
        dsn, autocommit=autocommit, row_factory=dict_row, application_name=application_name
    )
    configure(conn)
    return conn


def set_worker_session(conn: DictConnection, *, statement_timeout_ms: int, application_name: str) -> None:
    """Bound every statement and idle transaction, so a stuck session cannot pin a claim or xmin."""
    Queries(conn).set_worker_session(
        statement_timeout=f"{statement_timeout_ms}ms",
        idle_timeout=f"{max(statement_timeout_ms, 1000) * 2}ms",
        application_name=application_name,
    )
    if not conn.autocommit:
        conn.commit()


class Session:
    """One autocommit connection of a long-running loop (a worker, the Kafka consumer), opened on
    first use and again after it broke; worker session limits set on each. The loop closes it after
    an error it cannot tell apart from a lost connection, and the next use reconnects."""

    def __init__(self, dsn: str, *, application_name: str, statement_timeout_ms: int) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: DictConnection | None = None

    def connection(self) -> DictConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.dsn, autocommit=True, application_name=self.application_name)
            set_worker_session(
                self._conn,
                statement_timeout_ms=self.statement_timeout_ms,
                application_name=self.application_name,
            )
        return self._conn

    def queries(self) -> Queries:
        return Queries(self.connection())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _configure_ingest(conn: DictConnection) -> None:
    configure(conn)
    Queries(conn).notify_after_commit()


def check_idle_session(conn: DictConnection) -> None:
    """The pool's check of a session it lends, without a round trip while nothing says it is needed.

    An idle session's socket has nothing to read unless the server wrote to it unasked: before it
    closes a session (a restart, pg_terminate_backend, idle_session_timeout) it sends the reason and
    then its end of the connection, and either makes the socket readable. Only then is the session
    asked (ConnectionPool.check_connection: one empty query, raising if it is gone, and the pool
    takes a new one). A readable socket that holds something harmless (a parameter change) costs
    the same one query. Asked every time, the check was a round trip per POST."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the session is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def open_pool(dsn: str, *, application_name: str, max_size: int = 8, timeout: float = 5.0) -> DictPool:
    """A pool of autocommit sessions (not yet opened: call .open()). It never gives up reconnecting:
    the database may be away for a while; a session lent is checked by check_idle_session. Its
    sessions' ingest does not notify the workers inside its transaction: whoever stores through it
    sends the hint after the commit (Queries.hint_workers; inbox.ingest_typed_events says why)."""
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=timeout,
        kwargs={"autocommit": True, "row_factory": dict_row, "application_name": application_name},
        configure=_configure_ingest,
        check=check_idle_session,
        reconnect_timeout=0,
    )
