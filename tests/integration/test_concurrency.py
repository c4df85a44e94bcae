"""Many workers at once: disjoint claims, no double apply, never an older version over a newer one."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from inbox.apply.pool import WorkerPool
from inbox.apply.worker import Worker
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import Keys, Queries
from inbox.settings import Settings
from inbox.store import store_events
from tests.helpers import count_of, dead_letters, drain, ingest, quota, titan_event, to_json, worker_settings
from tests.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]


# Quick retries and polls: these tests wait for workers to finish.
QUICK = {
    "max_attempts": 5,
    "backoff_base_seconds": 0.05,
    "backoff_cap_seconds": 0.5,
    "poll_seconds": 0.2,
    "reap_interval_seconds": 1.0,
}


def settings(**overrides: Any) -> Settings:
    return worker_settings(**{**QUICK, **overrides})


# -- the change log: a test-only trigger on public.quota ----------------------------------------------


def install_change_log(db: DictConnection) -> None:
    """Record every row change of public.quota with the version it carries and who made it.

    A delete carries no version in the row it removes; the gate row the same transaction just raised
    (inbox.quota_versions) holds it.
    """
    db.execute(
        """
        CREATE TABLE public.test_quota_log (
            id             bigserial PRIMARY KEY,
            quota_id       uuid   NOT NULL,
            source_version bigint NOT NULL,
            op             text   NOT NULL,
            applied_by     text   NOT NULL
        );
        CREATE FUNCTION public.test_log_quota() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO public.test_quota_log (quota_id, source_version, op, applied_by)
                SELECT OLD.quota_id, v.version, TG_OP, current_setting('application_name')
                FROM inbox.quota_versions v WHERE v.quota_id = OLD.quota_id;
            ELSE
                INSERT INTO public.test_quota_log (quota_id, source_version, op, applied_by)
                VALUES (NEW.quota_id, NEW.source_version, TG_OP, current_setting('application_name'));
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_log_quota AFTER INSERT OR UPDATE OR DELETE ON public.quota
            FOR EACH ROW EXECUTE FUNCTION public.test_log_quota();
        """
    )


def check_change_log(db: DictConnection) -> list[dict[str, Any]]:
    """No double apply, versions strictly increasing per quota, and exactly the applied events' effects."""
    log = db.execute(
        "SELECT id, quota_id, source_version, op, applied_by FROM public.test_quota_log ORDER BY id"
    ).fetchall()
    keys = [(r["quota_id"], r["source_version"], r["op"]) for r in log]
    twice = _duplicates(keys)
    assert not twice, f"applied twice: {sorted(twice)[:5]}"

    per_quota: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for r in log:
        per_quota[r["quota_id"]].append(r)
    for qid, changes in per_quota.items():
        versions = [c["source_version"] for c in changes]
        assert all(a < b for a, b in itertools.pairwise(versions)), (qid, changes)

    # Replaying the applied events in version order predicts the log exactly.
    applied = db.execute(
        "SELECT quota_id, version, is_delete FROM inbox.quota_events WHERE status = 'applied'"
        " ORDER BY quota_id, version, is_delete"
    ).fetchall()
    expected: dict[uuid.UUID, list[tuple[int, str]]] = defaultdict(list)
    exists: dict[uuid.UUID, bool] = defaultdict(bool)
    for e in applied:
        qid = e["quota_id"]
        if e["is_delete"]:
            if exists[qid]:
                expected[qid].append((e["version"], "DELETE"))
            exists[qid] = False
        else:
            expected[qid].append((e["version"], "UPDATE" if exists[qid] else "INSERT"))
            exists[qid] = True
    actual = {qid: [(c["source_version"], c["op"]) for c in changes] for qid, changes in per_quota.items()}
    mismatched = [
        (qid, expected.get(qid, []), actual.get(qid, []))
        for qid in set(expected) | set(actual)
        if expected.get(qid, []) != actual.get(qid, [])
    ]
    assert not mismatched, f"{len(mismatched)} quotas changed unlike their applied events: {mismatched[:3]}"
    return log


def _duplicates(keys: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    seen: set[tuple[Any, ...]] = set()
    twice: set[tuple[Any, ...]] = set()
    for k in keys:
        (twice if k in seen else seen).add(k)
    return twice


# -- a random stream with a known end state ---------------------------------------------------------


@dataclass
class Stream:
    events: list[dict[str, Any]]  # shuffled, with duplicates
    final: dict[uuid.UUID, dict[str, Any]]  # the highest event of each quota
    unique: int


def make_stream(quotas: int, versions: int, seed: int, duplicate_share: float = 0.1) -> Stream:
    rng = random.Random(seed)
    unique: list[dict[str, Any]] = []
    final: dict[uuid.UUID, dict[str, Any]] = {}
    for _ in range(quotas):
        qid = uuid.UUID(int=rng.getrandbits(128), version=4)
        ends_deleted = rng.random() < 0.2
        for v in range(1, versions + 1):
            if v == versions and ends_deleted:
                kind = "DELETE"
            else:
                kind = rng.choices(["INSERT", "UPDATE", "DELETE"], weights=[2, 7, 1])[0]
            event = titan_event(
                qid,
                v,
                kind,
                qty_t=Decimal(f"{rng.randint(1, 99_999)}.{rng.randint(0, 999):03d}"),
                metal_code=rng.choice(["CU", "AL", "ZN", "NI"]),
                direction=rng.choice(["BUY", "SELL"]),
            )
            unique.append(event)
        final[qid] = unique[-1]
    events = unique + rng.sample(unique, int(len(unique) * duplicate_share))
    rng.shuffle(events)
    return Stream(events=events, final=final, unique=len(unique))


def ingest_in_chunks(dsn: str, events: list[dict[str, Any]], chunk: int, pause: float = 0.0) -> int:
    duplicates = 0
    with connect(dsn, autocommit=True) as conn:
        for start in range(0, len(events), chunk):
            result = store_events(conn, [to_json(e) for e in events[start : start + chunk]], "kafka")
            duplicates += result.duplicates
            if pause:
                time.sleep(pause)
    return duplicates


def unfinished(db: DictConnection) -> int:
    return count_of(
        db, "SELECT count(*) AS n FROM inbox.quota_events WHERE status IN ('pending', 'processing')"
    )


def check_final_state(db: DictConnection, stream: Stream) -> None:
    rows = {r["quota_id"]: r for r in db.execute("SELECT * FROM public.quota").fetchall()}
    wrong = []
    for qid, event in stream.final.items():
        row = rows.get(qid)
        if event["eventType"] == "DELETE":
            if row is not None:
                wrong.append((qid, "should be deleted", event["metadata"]["version"], row["source_version"]))
            continue
        data = event["data"]
        want = (event["metadata"]["version"], data["qty_t"], data["metal_code"], data["direction"])
        got = (
            None
            if row is None
            else (row["source_version"], row["qty_t"], row["metal_code"], row["direction"])
        )
        if got != want:
            wrong.append((qid, "wrong state", want, got))
    assert not wrong, (
        f"{len(wrong)} of {len(stream.final)} quotas are not at their highest version: {wrong[:5]}"
    )
    assert set(rows) <= set(stream.final)
    gates = {
        r["quota_id"]: (r["version"], r["is_delete"])
        for r in db.execute("SELECT quota_id, version, is_delete FROM inbox.quota_versions").fetchall()
    }
    assert gates == {
        qid: (e["metadata"]["version"], e["eventType"] == "DELETE") for qid, e in stream.final.items()
    }
    statuses = db.execute("SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY status").fetchall()
    by_status = {r["status"]: r["n"] for r in statuses}
    assert set(by_status) <= {"applied", "stale"}, by_status
    assert sum(by_status.values()) == stream.unique
    assert dead_letters(db) == []


# -- (a) SKIP LOCKED ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_two_open_claims_get_disjoint_rows_without_waiting(db: DictConnection, dsn: str) -> None:
    quotas = [uuid.uuid4() for _ in range(10)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in quotas])

    with connect(dsn) as first, connect(dsn) as second:  # both in open transactions
        for conn in (first, second):
            conn.execute("SET lock_timeout = '2s'")  # a claim that waited would fail here
        got_first = Queries(first).claim_batch(6)
        got_second = Queries(second).claim_batch(6)
        third = Queries(db).claim_batch(6)

        keys_first = set(zip(got_first.quota_ids, got_first.versions, strict=True))
        keys_second = set(zip(got_second.quota_ids, got_second.versions, strict=True))
        assert len(keys_first) == 6
        assert len(keys_second) == 4  # only what the first left
        assert keys_first.isdisjoint(keys_second)
        assert keys_first | keys_second == {(q, 1) for q in quotas}
        assert len(third) == 0  # nothing left for a third claimer, and it did not wait either
        first.commit()
        second.commit()

    # A claim writes nothing (migration 015): it is the row locks of its transaction, gone with it.
    rows = db.execute("SELECT status, attempts FROM inbox.quota_events").fetchall()
    assert rows == [{"status": "pending", "attempts": 0}] * 10


@pytest.mark.timeout(30)
def test_a_rolled_back_claim_leaves_its_rows_claimable(db: DictConnection, dsn: str) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3)])
    with connect(dsn) as conn:
        assert len(Queries(conn).claim_batch(10)) == 3
        conn.rollback()

    rows = db.execute("SELECT status, attempts, lease_owner FROM inbox.quota_events").fetchall()
    assert rows == [{"status": "pending", "attempts": 0, "lease_owner": None}] * 3
    assert drain(dsn, settings()).applied == 3


# -- two workers on one quota at the same moment --------------------------------------------------


HOLD_KEY = 4242


def install_hold(db: DictConnection, worker_name: str) -> None:
    """Make the named worker pause inside its apply statement, after its gate row is locked."""
    db.execute(
        f"""
        CREATE FUNCTION public.test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') = 'quota-inbox {worker_name}' THEN
                PERFORM pg_advisory_xact_lock({HOLD_KEY});
            END IF;
            RETURN coalesce(NEW, OLD);
        END $$;
        CREATE TRIGGER test_hold BEFORE INSERT OR UPDATE OR DELETE ON public.quota
            FOR EACH ROW EXECUTE FUNCTION public.test_hold();
        """
    )


def backend_waits(db: DictConnection, worker_name: str, wait_events: list[str]) -> bool:
    row = db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE application_name = %s AND wait_event_type = 'Lock' AND wait_event = ANY(%s)",
        [f"quota-inbox {worker_name}", wait_events],
    ).fetchone()
    return row is not None and row["n"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("history", "first", "second", "exists_after"),
    [
        pytest.param([], (1, "INSERT"), (2, "DELETE"), False, id="new-quota-then-delete"),
        pytest.param(
            [(1, "INSERT"), (2, "DELETE")], (3, "INSERT"), (4, "DELETE"), False, id="recreate-then-delete"
        ),
        pytest.param([(1, "INSERT")], (2, "UPDATE"), (3, "DELETE"), False, id="update-then-delete"),
        pytest.param([(1, "INSERT")], (2, "DELETE"), (3, "UPDATE"), True, id="delete-then-recreate"),
        pytest.param([], (1, "INSERT"), (2, "UPDATE"), True, id="new-quota-then-update"),
    ],
)
def test_two_workers_applying_consecutive_versions_of_one_quota_at_once_end_at_the_newer(
    db: DictConnection,
    dsn: str,
    history: list[tuple[int, str]],
    first: tuple[int, str],
    second: tuple[int, str],
    exists_after: bool,
) -> None:
    """Worker A holds the quota's gate row mid-statement while worker B applies the next version."""
    qid = uuid.uuid4()
    conf = settings()
    install_change_log(db)
    for version, kind in history:
        ingest(db, [titan_event(qid, version, kind)])
        drain(dsn, conf)
    install_hold(db, "w-A")
    worker_a, worker_b = Worker(dsn, conf, "w-A"), Worker(dsn, conf, "w-B")
    ingest(db, [titan_event(qid, first[0], first[1], qty_t=Decimal("1.5"))])
    ingest(db, [titan_event(qid, second[0], second[1], qty_t=Decimal("2.5"))])
    # each worker's batch: one version (finish() claims each event in its own transaction)
    batch_a = Keys([qid], [first[0]], [first[1] == "DELETE"])
    batch_b = Keys([qid], [second[0]], [second[1] == "DELETE"])
    results: dict[str, Any] = {}

    def finish(name: str, worker: Worker, batch: Keys) -> None:
        try:
            results[name] = worker.finish(batch)
        except Exception as exc:  # reported by the assertions below
            results[name] = exc

    holder = connect(dsn, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", [HOLD_KEY])
        thread_a = threading.Thread(target=finish, args=("A", worker_a, batch_a))
        thread_a.start()
        wait_for(lambda: backend_waits(db, "w-A", ["advisory"]), "worker A holding the gate row", 10)
        thread_b = threading.Thread(target=finish, args=("B", worker_b, batch_b))
        thread_b.start()
        wait_for(
            lambda: backend_waits(db, "w-B", ["transactionid", "tuple"]), "worker B waiting for worker A", 10
        )
        holder.execute("SELECT pg_advisory_unlock(%s)", [HOLD_KEY])
        thread_a.join(20)
        thread_b.join(20)
    finally:
        holder.close()
        worker_a.close()
        worker_b.close()

    assert results["A"].applied == 1, results
    assert results["B"].applied == 1, results
    row = quota(db, qid)
    if exists_after:
        assert row is not None
        assert (row["source_version"], row["qty_t"]) == (second[0], Decimal("2.5"))
    else:
        assert row is None, f"quota still there at version {row['source_version']} after delete v{second[0]}"
    gate = db.execute("SELECT version, is_delete FROM inbox.quota_versions WHERE quota_id = %s", [qid])
    assert gate.fetchone() == {"version": second[0], "is_delete": second[1] == "DELETE"}
    check_change_log(db)


# -- (b) worker threads --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_four_worker_threads_over_ten_thousand_events_end_at_each_quotas_highest_version(
    db: DictConnection, dsn: str
) -> None:
    stream = make_stream(quotas=500, versions=20, seed=20260301)
    assert stream.unique == 10_000
    install_change_log(db)

    with WorkerPool(dsn, settings(batch_size=100), concurrency=4) as pool:
        assert len(pool.workers) == 4
        duplicates = ingest_in_chunks(dsn, stream.events, chunk=500)
        wait_for(lambda: unfinished(db) == 0, "every event finished", 90)

    assert duplicates == len(stream.events) - stream.unique
    check_final_state(db, stream)
    log = check_change_log(db)
    assert len({r["applied_by"] for r in log}) >= 2, "the work was not shared between threads"


# -- (c) worker processes ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_three_worker_processes_end_at_each_quotas_highest_version(db: DictConnection, dsn: str) -> None:
    stream = make_stream(quotas=150, versions=20, seed=7)
    assert stream.unique == 3_000
    install_change_log(db)
    env = {
        **os.environ,
        "INBOX_DATABASE_URL": dsn,
        "INBOX_BATCH_SIZE": "50",
        "INBOX_WORKERS": "1",
        "INBOX_POLL_SECONDS": "0.2",
        "INBOX_LEASE_SECONDS": "30",
        "INBOX_BACKOFF_BASE_SECONDS": "0.05",
        "INBOX_BACKOFF_CAP_SECONDS": "0.5",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "inbox.cli", "--log-level", "WARNING", "work", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        wait_for(lambda: _listening_workers(db) >= 3, "three worker processes connected", 30)
        duplicates = ingest_in_chunks(dsn, stream.events, chunk=300, pause=0.02)
        wait_for(lambda: unfinished(db) == 0, "every event finished", 90)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            codes.append((proc.returncode, err.decode(errors="replace")[-2000:]))
    assert [code for code, _ in codes] == [0, 0, 0], codes

    assert duplicates == len(stream.events) - stream.unique
    check_final_state(db, stream)
    log = check_change_log(db)
    processes = {r["applied_by"].rsplit(":", 2)[1] for r in log}  # "quota-inbox host:pid:index"
    assert len(processes) >= 2, f"the work was not shared between processes: {processes}"


def _listening_workers(db: DictConnection) -> int:
    return count_of(
        db, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'quota-inbox listener'"
    )
