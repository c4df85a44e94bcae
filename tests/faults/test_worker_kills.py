"""`inbox work` processes SIGKILLed mid-batch, again and again, while a large stream is applied.

The final quota state is exact, each effective change is applied once and published once, and the
claims the dead workers abandoned (their claim ledger rows) are picked up by the others. CI runs
50,000 events; INBOX_SOAK=1 runs 200,000 with more workers and kills.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inbox.db.connect import DictConnection, connect
from inbox.formats import skip_reason
from inbox.ingest import loads
from inbox.store import store_events
from tests.cdc_events import QuotaStream, expected_rows, quota_rows, quota_stream
from tests.helpers import count_of, dead_letters, status_counts
from tests.integration.test_outbox import install_change_log, keys, outbox
from tests.processes import InboxProcess, WorkerFleet, quick_env, wait_for, worker_fleet

SOAK = os.environ.get("INBOX_SOAK") == "1"
EVENTS = 200_000 if SOAK else 50_000
WORKERS = 4 if SOAK else 3
LEASE_SECONDS = 2
INGEST_CHUNK = 1000
CHUNKS_PER_KILL = 2  # 2,000 events ingested between kills: 25 kills in CI, 100 with INBOX_SOAK=1
KILLS = EVENTS // INGEST_CHUNK // CHUNKS_PER_KILL
STALL_SECONDS = 60  # far beyond a lease (2 s) and a reap interval (0.5 s)


@dataclass
class KillLog:
    kills: int = 0
    abandoned: int = 0  # events in a killed worker's claim ledger rows, right after its death
    abandoned_keys: set[tuple[object, ...]] = field(default_factory=set)


def _kill_one_mid_batch(fleet: WorkerFleet, db: DictConnection, rng: random.Random, log: KillLog) -> bool:
    """SIGKILL a worker the moment it holds claimed rows and start a replacement; False if no worker
    held a claim within a second."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        holders = [p for p in fleet.processes if _held(db, _owner(p))]
        if holders:
            _kill(fleet, db, rng.choice(holders), log)
            return True
        time.sleep(0.005)
    return False


def _kill(fleet: WorkerFleet, db: DictConnection, victim: InboxProcess, log: KillLog) -> None:
    owner = _owner(victim)
    fleet.kill(victim)
    # A statement already running on the server still finishes (and may commit): what is
    # abandoned is what the worker held once its sessions are gone.
    wait_for(lambda: not _sessions(db, f"quota-inbox {owner}"), "the killed worker's sessions to end")
    held = db.execute(
        "SELECT k.quota_id, k.version, k.is_delete FROM inbox.claim_ledger l,"
        " unnest(l.quota_ids, l.versions, l.is_delete) AS k(quota_id, version, is_delete)"
        " WHERE l.worker LIKE %s",
        [owner],
    ).fetchall()
    log.kills += 1
    log.abandoned += len(held)
    log.abandoned_keys.update(tuple(r.values()) for r in held)
    fleet.start()


def _owner(process: InboxProcess) -> str:
    """A LIKE pattern for the names of a process's worker threads (host:pid:index)."""
    return f"%:{process.proc.pid}:%"


def _held(db: DictConnection, owner: str) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM inbox.claim_ledger WHERE worker LIKE %s) AS held", [owner]
    ).fetchone()
    return bool(row and row["held"])


def _sessions(db: DictConnection, application_name: str) -> int:
    return count_of(
        db, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE %s", [application_name]
    )


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[WorkerFleet]:
    env = quick_env(
        dsn,
        INBOX_WORKERS="2",
        INBOX_BATCH_SIZE="250",
        INBOX_LEASE_SECONDS=str(LEASE_SECONDS),
        # A batch may be killed a few times; the kills must not use up its retries.
        INBOX_MAX_ATTEMPTS="100",
    )
    with worker_fleet(env, tmp_path, WORKERS) as workers:
        yield workers


def _event_texts(stream: QuotaStream) -> list[str]:
    """The stream's events as the inbox takes them (tombstones and truncates are not events)."""
    texts = [value.decode() for _, value in stream.messages if value is not None]
    return [text for text in texts if skip_reason(loads(text)) is None]


class Progress:
    """How many events are not finished yet, and how long since the number of finished ones grew."""

    def __init__(self) -> None:
        self.finished = 0
        self.since = time.monotonic()

    def unfinished(self, db: DictConnection) -> int:
        counts = status_counts(db)
        finished = counts.get("applied", 0) + counts.get("stale", 0) + counts.get("dead", 0)
        if finished > self.finished:
            self.finished, self.since = finished, time.monotonic()
        return counts.get("pending", 0) + counts.get("processing", 0)

    def stalled_for(self) -> float:
        return time.monotonic() - self.since


@pytest.mark.soak
@pytest.mark.timeout(1800 if SOAK else 300)
def test_workers_killed_mid_batch_again_and_again_end_exact(
    dsn: str, db: DictConnection, fleet: WorkerFleet
) -> None:
    rng = random.Random(11)
    stream = quota_stream(rng, EVENTS * 26 // 25)  # about 3% of the messages are tombstones or truncates
    texts = _event_texts(stream)
    assert len(texts) >= EVENTS
    install_change_log(db)
    log = KillLog()
    ingested = threading.Event()
    owed = threading.Semaphore(0)  # kills asked for and not done yet
    killed = threading.Event()

    def ingest_all() -> None:
        """Chunk by chunk; every few chunks it asks for a kill and gives the workers a moment to be
        killed while busy with them, so the kills spread over the whole run however fast this
        machine applies events."""
        with connect(dsn, autocommit=True) as conn:
            for index, start in enumerate(range(0, len(texts), INGEST_CHUNK)):
                store_events(conn, texts[start : start + INGEST_CHUNK], "http")
                if index % CHUNKS_PER_KILL == CHUNKS_PER_KILL - 1:
                    killed.clear()
                    owed.release()
                    killed.wait(2)
        ingested.set()

    feeder = threading.Thread(target=ingest_all, name="ingest")
    feeder.start()
    started = time.monotonic()
    progress = Progress()
    # The flag first, then the count: read the other way round, the last chunk can land between
    # them and the loop end with it pending (workers that keep up drain everything before it).
    while not ingested.is_set() or progress.unfinished(db):
        if owed.acquire(blocking=False):
            if _kill_one_mid_batch(fleet, db, rng, log):
                killed.set()
            else:
                owed.release()  # nobody held a claim: try again while there is work
        time.sleep(0.01)
        # Liveness, not speed: a shared, busy machine may be slow, but it must keep finishing events.
        assert progress.stalled_for() < STALL_SECONDS, f"no event finished for {STALL_SECONDS} s"
    feeder.join()
    elapsed = time.monotonic() - started

    print(
        f"\n{len(texts)} events, {len(stream.keys)} distinct, {log.kills} kills, {log.abandoned} rows "
        f"abandoned, {fleet.started} worker processes, {elapsed:.1f} s"
    )
    assert log.kills >= KILLS * 3 // 4  # a kill may find no worker holding a claim in time
    assert log.abandoned > 0
    # exact: every distinct event filed once, finished, and the quotas are each one's last word
    assert sum(status_counts(db).values()) == len(stream.keys)
    assert set(status_counts(db)) <= {"applied", "stale"}
    assert dead_letters(db) == []
    assert quota_rows(db) == expected_rows(stream)
    # each effective change applied once (the trigger's log) and published once (the outbox)
    changes = db.execute("SELECT quota_id::text, version, op FROM test_quota_changes").fetchall()
    applied = Counter((c["quota_id"], c["version"], c["op"]) for c in changes)
    assert max(applied.values()) == 1
    messages = outbox(db)
    assert Counter(keys(messages)) == applied
    # the abandoned rows were claimed again by a living worker, and the dead claim cost its attempt
    reclaimed = db.execute(
        "SELECT count(*) AS n FROM inbox.quota_events e"
        " JOIN unnest(%s::uuid[], %s::bigint[], %s::boolean[]) AS k(quota_id, version, is_delete)"
        " USING (quota_id, version, is_delete) WHERE e.attempts >= 2",
        [
            [k[0] for k in log.abandoned_keys],
            [k[1] for k in log.abandoned_keys],
            [k[2] for k in log.abandoned_keys],
        ],
    ).fetchone()
    assert reclaimed == {"n": len(log.abandoned_keys)}
    retried = db.execute(
        "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'retried'"
    ).fetchone()
    assert retried is not None and retried["n"] >= len(log.abandoned_keys)
