"""An event that kills every worker that takes it ends as a dead letter (issue 13).

The claim writes nothing per event: a worker records its batch in the claim ledger, committed before
the apply, and a worker that dies holding it must still spend an attempt on each of its events, even
when a living worker takes them before any reaper runs. Here every `inbox work` process that takes
the poison event is SIGKILLed mid-apply (its apply waits on a lock this test holds), again and
again, while another worker takes the event at once: each death costs it exactly one attempt, and
it is dead-lettered after INBOX_MAX_ATTEMPTS of them; its neighbours are applied.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbox.db.connect import DictConnection, connect
from tests.helpers import dead_letters_for, inbox_row, ingest, quota, titan_event
from tests.processes import InboxProcess, WorkerFleet, quick_env, wait_for, worker_fleet

MAX_ATTEMPTS = 3
NEIGHBOURS = 10


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[WorkerFleet]:
    env = quick_env(
        dsn,
        INBOX_WORKERS="1",
        INBOX_BATCH_SIZE="1",  # the poison's batch holds the poison alone
        INBOX_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        INBOX_LEASE_SECONDS="30",
        INBOX_STATEMENT_TIMEOUT_MS="60000",  # the apply waits for the lock until it is killed
        INBOX_POLL_SECONDS="0.1",
        INBOX_BACKOFF_BASE_SECONDS="0.01",
        INBOX_BACKOFF_CAP_SECONDS="0.01",
    )
    with worker_fleet(env, tmp_path, 2) as workers:
        yield workers


def _kill(fleet: WorkerFleet, db: DictConnection, process: InboxProcess) -> None:
    """SIGKILL the process, end its sessions as a dead host's would end (a backend waiting on a lock
    does not notice that its client is gone), and start another."""
    fleet.kill(process)
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
        [f"quota-inbox %:{process.proc.pid}:%"],
    )
    fleet.start()


def _holder(db: DictConnection, quota_id: uuid.UUID) -> int | None:
    """The pid of the `inbox work` process whose claim ledger row holds the quota's event."""
    row = db.execute(
        "SELECT worker FROM inbox.claim_ledger WHERE %s = ANY (quota_ids) ORDER BY id DESC LIMIT 1",
        [quota_id],
    ).fetchone()
    return None if row is None else int(str(row["worker"]).split(":")[-2])


@pytest.mark.timeout(240)
def test_an_event_that_kills_every_worker_that_takes_it_ends_as_a_dead_letter(
    dsn: str, db: DictConnection, fleet: WorkerFleet
) -> None:
    poison = uuid.uuid4()
    neighbours = [uuid.uuid4() for _ in range(NEIGHBOURS)]
    db.execute(
        "INSERT INTO inbox.quota_versions (quota_id, version, is_delete) VALUES (%s, 0, false)", [poison]
    )
    kills = 0
    with connect(dsn) as blocker:  # every apply of the poison waits here, until its worker is killed
        blocker.execute("SELECT 1 FROM inbox.quota_versions WHERE quota_id = %s FOR UPDATE", [poison])
        ingest(db, [titan_event(poison, 1, "INSERT"), *(titan_event(q, 1, "INSERT") for q in neighbours)])
        deadline = time.monotonic() + 200
        while inbox_row(db, poison, 1)["status"] != "dead" or _holder(db, poison) is not None:
            assert time.monotonic() < deadline, f"still {inbox_row(db, poison, 1)} after {kills} kills"
            pid = _holder(db, poison)
            process = None if pid is None else fleet.find(pid)
            if process is not None and _waits_on_lock(db, process.proc.pid):
                _kill(fleet, db, process)
                kills += 1
            time.sleep(0.02)
        blocker.rollback()

    row = inbox_row(db, poison, 1)
    print(f"\n{kills} kills, {fleet.started} worker processes, poison {row['status']} at {row['attempts']}")
    # Each death cost exactly one attempt, spent before any worker could apply the event again (the
    # next claim releases the dead ones first, inbox.record_claim): no worker dies in excess.
    assert kills == MAX_ATTEMPTS
    assert (row["status"], row["attempts"]) == ("dead", MAX_ATTEMPTS)
    [letter] = dead_letters_for(db, poison)
    assert (letter["error_class"], letter["retry_count"]) == ("retries_exhausted", MAX_ATTEMPTS)
    assert "the worker ended before it finished the batch" in letter["error_message"]
    wait_for(lambda: all(quota(db, q) is not None for q in neighbours), "the neighbours applied")
    assert quota(db, poison) is None


def _waits_on_lock(db: DictConnection, pid: int) -> bool:
    """Whether the process's apply has waited on the lock for a while: the poison takes a moment to
    kill its worker, time for the reaper of a living process to run (in a fleet where every
    process died at once, none would be left to reap)."""
    row = db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE %s"
        " AND wait_event_type = 'Lock' AND now() - query_start > interval '1 second'",
        [f"quota-inbox %:{pid}:%"],
    ).fetchone()
    return row is not None and row["n"] > 0
