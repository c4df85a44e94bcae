"""A slow or stuck statement cannot hold a claim forever.

An `inbox work` process whose apply statement waits on a lock that is never released: the statement
is cancelled at the statement timeout (never longer than the lease, even with the timeout switched
off), the batch goes back to pending, and nothing is held past its lease. A worker frozen (SIGSTOP)
inside such a statement cannot even give its batch back: its lease runs out, another worker's reaper
returns the rows, and that worker applies them; thawed, the frozen one applies nothing twice.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inbox.db.connect import DictConnection, connect
from tests.helpers import dead_letters, ingest, quota, status_counts, titan_event
from tests.integration.test_outbox import keys, outbox
from tests.processes import InboxProcess, inbox_process, quick_env, wait_for

LEASE_SECONDS = 2.0
LAST_ERRORS = "SELECT DISTINCT last_error AS e FROM inbox.quota_events WHERE last_error IS NOT NULL"
QUOTAS = 50


def _worker_env(dsn: str) -> dict[str, str]:
    return quick_env(
        dsn,
        INBOX_WORKERS="1",
        INBOX_BATCH_SIZE="100",
        INBOX_LEASE_SECONDS=str(LEASE_SECONDS),
        INBOX_STATEMENT_TIMEOUT_MS="0",  # "off": the lease still bounds every statement
        INBOX_BACKOFF_BASE_SECONDS="0.2",
        INBOX_MAX_ATTEMPTS="50",
    )


@contextmanager
def gate_locked(dsn: str, db: DictConnection, quota_id: uuid.UUID) -> Iterator[None]:
    """Hold the version gate row of one quota in an open transaction: an apply touching it waits."""
    db.execute(
        "INSERT INTO inbox.quota_versions (quota_id, version, is_delete) VALUES (%s, 0, false)", [quota_id]
    )
    with connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM inbox.quota_versions WHERE quota_id = %s FOR UPDATE", [quota_id])
        yield
        blocker.rollback()


def _session(db: DictConnection, process: InboxProcess) -> dict[str, Any]:
    """The worker thread's session of a process: its state, wait and statement age."""
    row = db.execute(
        "SELECT state, wait_event_type, extract(epoch FROM now() - query_start)::float8 AS running"
        " FROM pg_stat_activity WHERE application_name LIKE %s",
        [f"quota-inbox %:{process.proc.pid}:0"],
    ).fetchone()
    return row or {}


def _longest_overdue_claim(db: DictConnection) -> float:
    """How long past the lease the oldest claim (a claim ledger row) has been held."""
    row = db.execute(
        "SELECT coalesce(max(extract(epoch FROM now() - claimed_at - make_interval(secs => %s))), 0)"
        " AS overdue FROM inbox.claim_ledger",
        [LEASE_SECONDS],
    ).fetchone()
    return float(row["overdue"]) if row else 0.0


def _events(db: DictConnection) -> tuple[list[uuid.UUID], uuid.UUID]:
    quotas = [uuid.uuid4() for _ in range(QUOTAS)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in quotas])
    return quotas, quotas[0]


def _assert_each_change_once(db: DictConnection, quotas: list[uuid.UUID]) -> None:
    assert status_counts(db) == {"applied": QUOTAS}
    assert dead_letters(db) == []
    assert all(quota(db, q) is not None for q in quotas)
    assert sorted(keys(outbox(db))) == sorted((str(q), 1, "upsert") for q in quotas)


def test_a_statement_stuck_on_a_lock_is_cancelled_and_its_batch_given_back(
    dsn: str, db: DictConnection, tmp_path: Path
) -> None:
    quotas, stuck = _events(db)
    watched_until = time.monotonic() + 3 * LEASE_SECONDS
    longest_statement = longest_overdue = 0.0
    errors: set[str] = set()

    with (
        gate_locked(dsn, db, stuck),
        inbox_process("work", env=_worker_env(dsn), log=tmp_path / "w.log") as worker,
    ):
        wait_for(lambda: _session(db, worker).get("wait_event_type") == "Lock", "the apply to wait")
        while time.monotonic() < watched_until:
            session = _session(db, worker)
            if session.get("state") == "active":
                longest_statement = max(longest_statement, session["running"])
            longest_overdue = max(longest_overdue, _longest_overdue_claim(db))
            errors.update(r["e"] for r in db.execute(LAST_ERRORS))
            time.sleep(0.05)
        attempts = db.execute("SELECT max(attempts) AS n FROM inbox.quota_events").fetchone()
    with inbox_process("work", env=_worker_env(dsn), log=tmp_path / "w2.log"):
        wait_for(lambda: status_counts(db) == {"applied": QUOTAS}, "the batch applied once the lock is gone")

    print(
        f"\nlongest statement {longest_statement:.2f} s, longest overdue claim {longest_overdue:.2f} s, "
        f"attempts {attempts}"
    )
    assert longest_statement < LEASE_SECONDS + 0.5
    assert longest_overdue < 1.0  # given back by the worker itself, about when the lease ends
    assert any("statement timeout" in error for error in errors), errors
    assert attempts is not None and attempts["n"] >= 2  # claimed again after each cancellation
    _assert_each_change_once(db, quotas)


def test_a_frozen_worker_loses_its_claim_to_the_lease_and_applies_nothing_twice(
    dsn: str, db: DictConnection, tmp_path: Path
) -> None:
    quotas, stuck = _events(db)
    with inbox_process("work", env=_worker_env(dsn), log=tmp_path / "frozen.log") as frozen:
        with gate_locked(dsn, db, stuck):
            wait_for(lambda: _session(db, frozen).get("wait_event_type") == "Lock", "the apply to wait")
            frozen.proc.send_signal(signal.SIGSTOP)
            # The server cancels the statement at the timeout, frozen client or not ...
            wait_for(lambda: _session(db, frozen).get("state") != "active", "the statement cancelled", 10)
        # ... but the frozen worker cannot give its batch back: the claim is held, by nobody alive.
        held = db.execute(
            "SELECT coalesce(sum(cardinality(quota_ids)), 0) AS n FROM inbox.claim_ledger"
            " WHERE worker LIKE %s",
            [f"%:{frozen.proc.pid}:0"],
        ).fetchone()
        with inbox_process("work", env=_worker_env(dsn), log=tmp_path / "rescuer.log"):
            wait_for(
                lambda: status_counts(db) == {"applied": QUOTAS}, "another worker to apply the batch", 30
            )
            owners = {
                r["owner"] for r in db.execute("SELECT DISTINCT lease_owner AS owner FROM inbox.quota_events")
            }
            frozen.proc.send_signal(signal.SIGCONT)
            wait_for(
                lambda: "transient failure applying" in frozen.output(), "the thawed worker to wake up", 30
            )
            time.sleep(1.0)  # it gives back what it no longer holds (nothing), then polls on

    assert held == {"n": QUOTAS}
    assert owners == {None}
    _assert_each_change_once(db, quotas)
    retried = db.execute(
        "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'retried'"
    ).fetchone()
    assert retried == {"n": QUOTAS}  # the reaper's, once; the thawed worker released nothing
