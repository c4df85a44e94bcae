"""The HTTP ingestor's pool: a sound session is lent without a round trip, a session the server
ended is replaced before anyone stores through it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from inbox.db.connect import DictConnection, DictPool, open_pool
from inbox.ingest import parse_texts
from inbox.store import store
from tests.helpers import titan_event, to_json

MARKER = "SELECT 'lent before' AS marker"


@pytest.fixture
def pool(dsn: str) -> Iterator[DictPool]:
    pool = open_pool(dsn, application_name="quota-inbox http", max_size=1)
    pool.open(wait=True)
    try:
        yield pool
    finally:
        pool.close()


def _backend(pool: DictPool) -> int:
    with pool.connection() as conn:
        return conn.info.backend_pid


def _last_query(db: DictConnection, pid: int) -> str:
    row = db.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row["query"])


def test_a_sound_session_is_lent_without_a_round_trip(pool: DictPool, db: DictConnection) -> None:
    """Every POST borrows a session: a check that asks the server (an empty query) was one round trip
    per POST. The server's record of the session's last statement shows whether it was asked."""
    with pool.connection() as conn:
        conn.execute(MARKER)
        pid = conn.info.backend_pid
    for _ in range(3):
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid
    assert _last_query(db, pid) == MARKER


def test_a_session_the_server_ended_is_replaced_before_it_is_used(pool: DictPool, db: DictConnection) -> None:
    """pg_terminate_backend stands for a restart or idle_session_timeout: the lent session must be a
    new one, and storing through it succeeds (the request is not refused for a session that died
    while idle)."""
    pid = _backend(pool)
    db.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 10
    while db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
        assert time.monotonic() < deadline, "the terminated backend did not exit"
        time.sleep(0.01)
    with pool.connection() as conn:
        assert conn.info.backend_pid != pid
        result = store(conn, parse_texts([to_json(titan_event(uuid.uuid4(), 1, "INSERT"))]), "http")
    assert result.accepted == 1
