"""The outbox: one pgmq message per effective quota change, in the apply transaction; enough to rebuild."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from inbox.apply.worker import BatchCounts, Worker, reap_abandoned_claims
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import Queries
from inbox.settings import Settings
from tests.helpers import QUOTA_AS_TEXT, drain, ingest, quota, titan_event
from tests.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]


def outbox(conn: DictConnection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT msg_id, message FROM pgmq.q_quota_changes ORDER BY msg_id").fetchall()
    return [row["message"] for row in rows]


def keys(messages: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(m["quota_id"], m["version"], m["op"]) for m in messages]


def test_each_effective_change_publishes_one_message(db: DictConnection, dsn: str) -> None:
    q, blocked = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("1250.500"), tolerance_pct=Decimal("0"))])
    drain(dsn)
    ingest(db, [titan_event(q, 3, qty_t=Decimal("0.1")), titan_event(blocked, 1, "INSERT")])
    drain(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [blocked])
    ingest(
        db,
        [
            titan_event(q, 2),  # older: stale
            titan_event(q, 3, qty_t=Decimal("0.1")),  # duplicate
            titan_event(q, 5, direction="HOLD"),  # invalid: dead letter
            titan_event(blocked, 2, "DELETE"),  # blocked by a call-off: dead letter
        ],
    )
    drain(dsn)
    ingest(db, [titan_event(q, 4, "DELETE")])
    drain(dsn)

    messages = outbox(db)
    assert sorted(keys(messages)) == sorted(
        [(str(q), 1, "upsert"), (str(blocked), 1, "upsert"), (str(q), 3, "upsert"), (str(q), 4, "delete")]
    )
    by_version = {(m["quota_id"], m["version"]): m for m in messages}
    first, third, delete = by_version[(str(q), 1)], by_version[(str(q), 3)], by_version[(str(q), 4)]
    assert first["previous_version"] is None
    assert first["quota"]["qty_t"] == Decimal("1250.500")
    assert str(first["quota"]["qty_t"]) == "1250.500"
    assert first["quota"]["tolerance_pct"] == 0
    assert third["previous_version"] == 1
    assert third["quota"]["qty_t"] == Decimal("0.1")
    assert third["quota"]["source_version"] == 3
    assert delete["previous_version"] == 3
    assert delete["quota"] is None
    assert quota(db, q) is None


def test_rolled_back_apply_publishes_nothing(db: DictConnection, dsn: str) -> None:
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT")])
    with connect(dsn) as conn:  # not autocommit: we decide the end of the transaction
        keys = Queries(conn).claim_batch(10)  # the claim: row locks of this transaction
        assert len(keys) == 1
        result = Queries(conn).process_batch(ledger=None, keys=keys, max_attempts=5)
        assert result.published == 1
        conn.rollback()

    assert outbox(db) == []
    assert quota(db, q) is None
    status = db.execute("SELECT status, attempts FROM inbox.quota_events").fetchone()
    assert status == {"status": "pending", "attempts": 0}


def test_poison_batch_publishes_only_what_was_applied(db: DictConnection, dsn: str) -> None:
    db.execute("ALTER TABLE public.quota ADD CONSTRAINT no_poison CHECK (metal_code <> 'POISON')")
    quotas = [uuid.uuid4() for _ in range(20)]
    events = [titan_event(q, 1, "INSERT") for q in quotas]
    events.append(titan_event(quotas[0], 2, metal_code="POISON"))
    events.append(titan_event(quotas[1], 2, qty_t=Decimal("7")))
    ingest(db, events)

    counts = drain(dsn, Settings(batch_size=100))

    messages = outbox(db)
    # quotas[1]'s v1 is applied, or stale when the bisection leaves it in one batch with its v2
    assert counts.applied == len(messages)
    assert (counts.applied + counts.stale, counts.dead) == (21, 1)
    assert (str(quotas[0]), 2, "upsert") not in keys(messages)
    assert (str(quotas[1]), 2, "upsert") in keys(messages)
    assert len(set(keys(messages))) == len(messages)


def rebuild_from_outbox(dsn: str) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import outbox_consumer

        outbox_consumer.main(dsn)
    finally:
        sys.path.remove(str(ROOT / "examples"))


def assert_replica_matches(db: DictConnection) -> None:
    replica = db.execute(
        f"SELECT quota_id, {QUOTA_AS_TEXT}, version AS source_version"
        " FROM downstream_quota WHERE NOT deleted ORDER BY quota_id"
    ).fetchall()
    actual = db.execute(
        f"SELECT quota_id, {QUOTA_AS_TEXT}, source_version FROM public.quota ORDER BY quota_id"
    ).fetchall()
    assert replica == actual
    assert len(actual) > 0


def install_change_log(db: DictConnection) -> None:
    """A test-only trigger recording every effective change to public.quota."""
    db.execute(
        """
        CREATE TABLE test_quota_changes (id bigserial, quota_id uuid, version bigint, op text);
        CREATE FUNCTION test_log_quota_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO public.test_quota_changes (quota_id, version, op)
                SELECT quota_id, version, 'delete' FROM inbox.quota_versions WHERE quota_id = OLD.quota_id;
            ELSE
                INSERT INTO public.test_quota_changes (quota_id, version, op)
                VALUES (NEW.quota_id, NEW.source_version, 'upsert');
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_log_quota_change AFTER INSERT OR UPDATE OR DELETE ON public.quota
            FOR EACH ROW EXECUTE FUNCTION test_log_quota_change();
        """
    )


def test_concurrent_workers_publish_once_and_consumer_rebuilds_quota_table(
    db: DictConnection, dsn: str
) -> None:
    import random

    rng = random.Random(7)
    quotas = [uuid.uuid4() for _ in range(150)]
    events = []
    for q in quotas:
        for version in range(1, 21):
            kind = (
                "DELETE" if version == 20 and rng.random() < 0.2 else ("INSERT" if version == 1 else "UPDATE")
            )
            qty = Decimal(rng.randint(1, 10_000_000)) / Decimal(1000)
            events.append(titan_event(q, version, kind, qty_t=qty, tolerance_pct=Decimal(rng.randint(0, 10))))
    rng.shuffle(events)
    events += rng.sample(events, len(events) // 10)  # redeliveries

    install_change_log(db)
    stop = threading.Event()
    settings = Settings(batch_size=50)
    workers = [Worker(dsn, settings, f"w{i}") for i in range(4)]

    def work(worker: Worker) -> None:
        while not stop.is_set():
            if worker.process_once().claimed == 0:
                time.sleep(0.01)
        worker.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for start in range(0, len(events), 250):
        ingest(db, events[start : start + 250])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) AS n FROM inbox.quota_events WHERE status IN ('pending', 'processing')"
        ).fetchone()
        if row is not None and row["n"] == 0:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()

    messages = outbox(db)
    changes = db.execute("SELECT quota_id::text, version, op FROM test_quota_changes ORDER BY id").fetchall()
    assert sorted(keys(messages)) == sorted((c["quota_id"], c["version"], c["op"]) for c in changes)
    assert len(set(keys(messages))) == len(messages)
    # per quota, messages come in version order and chain through previous_version
    last: dict[str, int] = {}
    for m in messages:
        assert m["previous_version"] == last.get(m["quota_id"])
        last[m["quota_id"]] = m["version"]
    rebuild_from_outbox(dsn)
    assert_replica_matches(db)
    left = db.execute("SELECT count(*) AS n FROM pgmq.q_quota_changes").fetchone()
    assert left is not None and left["n"] == 0  # every message archived by the consumer


def test_worker_killed_mid_batch_still_publishes_each_change_once(db: DictConnection, dsn: str) -> None:
    quotas = [uuid.uuid4() for _ in range(30)]
    ingest(db, [titan_event(q, v, "INSERT" if v == 1 else "UPDATE") for q in quotas for v in (1, 2)])
    # Hold the version gate of one quota so the worker's apply blocks inside its transaction.
    db.execute(
        "INSERT INTO inbox.quota_versions (quota_id, version, is_delete) VALUES (%s, 0, false)", [quotas[0]]
    )
    with connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM inbox.quota_versions WHERE quota_id = %s FOR UPDATE", [quotas[0]])
        env = {
            **os.environ,
            "INBOX_DATABASE_URL": dsn,
            "INBOX_WORKERS": "1",
            "INBOX_LEASE_SECONDS": "1",
            "INBOX_STATEMENT_TIMEOUT_MS": "0",
        }
        proc = subprocess.Popen([sys.executable, "-m", "inbox.cli", "work"], env=env)
        try:
            waiting = _wait_for_blocked_worker(db)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        # The host is gone: so is its connection (a real dead host's TCP session times out).
        db.execute("SELECT pg_terminate_backend(%s)", [waiting])
        blocker.rollback()

    quick_retry = Settings(backoff_base_seconds=0.001, backoff_cap_seconds=0.001)
    reaped = BatchCounts()

    def reaped_all() -> bool:  # the terminated session's locks go a moment after it
        reaped.add(reap_abandoned_claims(db, quick_retry))
        return reaped.retried >= 60

    wait_for(reaped_all, "the dead worker's claim reaped")
    assert reaped.retried == 60
    time.sleep(0.01)
    drain(dsn)

    messages = outbox(db)
    assert len(messages) == len(set(keys(messages))) == 30
    for q in quotas:
        row = quota(db, q)
        assert row is not None and row["source_version"] == 2


def _wait_for_blocked_worker(db: DictConnection) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = db.execute(
            """SELECT pid FROM pg_stat_activity
               WHERE application_name LIKE 'quota-inbox %%:%%' AND wait_event_type = 'Lock'"""
        ).fetchone()
        if row is not None:
            return int(row["pid"])
        time.sleep(0.05)
    raise AssertionError("the worker never blocked on the held lock")


def test_outbox_tail_cli_peeks_and_acks(db: DictConnection, dsn: str) -> None:
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("3.140"))])
    drain(dsn)
    env = {**os.environ, "INBOX_DATABASE_URL": dsn}
    cmd = [sys.executable, "-m", "inbox.cli", "outbox", "tail"]

    peek = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line)["message"] for line in peek.stdout.splitlines()]
    assert [(m["quota_id"], m["version"], m["op"]) for m in lines] == [(str(q), 1, "upsert")]
    assert '"qty_t": 3.140' in peek.stdout  # exact digits, not a float or a string
    assert len(outbox(db)) == 1  # peeking consumes nothing

    acked = subprocess.run([*cmd, "--ack"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert len(acked.stdout.splitlines()) == 1
    assert outbox(db) == []
    archived = db.execute("SELECT count(*) AS n FROM pgmq.a_quota_changes").fetchone()
    assert archived is not None and archived["n"] == 1


@pytest.mark.parametrize(
    ("tolerance", "call_offs", "expected"),
    [
        (Decimal("5"), [Decimal("30"), Decimal("20.5")], ("50.5", "49.5", "95", "105")),
        (None, [], ("0", "100", "100", "100")),
        (Decimal("0"), [Decimal("100")], ("100", "0", "100", "100")),
    ],
)
def test_quota_balance_view(
    db: DictConnection,
    dsn: str,
    tolerance: Decimal | None,
    call_offs: list[Decimal],
    expected: tuple[str, ...],
) -> None:
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("100"), tolerance_pct=tolerance)])
    drain(dsn)
    for qty in call_offs:
        db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, %s)", [q, qty])
    row = db.execute("SELECT * FROM public.v_quota_balance WHERE quota_id = %s", [q]).fetchone()
    assert row is not None
    assert row["qty_t"] == Decimal("100")
    got = (row["called_off_qty_t"], row["remaining_qty_t"], row["min_qty_t"], row["max_qty_t"])
    assert tuple(Decimal(x) for x in expected) == got


def test_a_batchs_messages_are_the_rows_pgmq_send_batch_writes(db: DictConnection, dsn: str) -> None:
    """process_batch inserts its messages into pgmq's queue table itself (issue 13): each row must be
    the one pgmq.send_batch writes for the same message, so that pgmq's clients read it as before."""
    ids = [uuid.uuid4() for _ in range(3)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in ids])
    drain(dsn)
    columns = "read_ct, last_read_at, headers, message, vt >= enqueued_at AS vt_after_enqueued"
    ours = db.execute(
        f"SELECT msg_id, enqueued_at, {columns} FROM pgmq.q_quota_changes ORDER BY msg_id"
    ).fetchall()
    db.execute(
        "SELECT pgmq.send_batch('quota_changes', array_agg(message ORDER BY msg_id))"
        " FROM pgmq.q_quota_changes"
    )
    theirs = db.execute(
        f"SELECT {columns} FROM pgmq.q_quota_changes WHERE msg_id > %s ORDER BY msg_id", [ours[-1]["msg_id"]]
    ).fetchall()

    assert [{k: v for k, v in row.items() if k not in ("msg_id", "enqueued_at")} for row in ours] == theirs
    assert [row["message"]["quota_id"] for row in ours] == sorted(
        str(q) for q in ids
    )  # msg_ids in quota order
    # enqueued in the apply's transaction, visible at once: a consumer reads all three
    # (compared as times: JSON drops a fraction's trailing zeros, isoformat() keeps six digits)
    assert all(row["enqueued_at"] == datetime.fromisoformat(row["message"]["applied_at"]) for row in ours)
    read = db.execute(
        "SELECT msg_id FROM pgmq.read('quota_changes', 30, 10) WHERE msg_id <= %s", [ours[-1]["msg_id"]]
    )
    assert sorted(r["msg_id"] for r in read.fetchall()) == [row["msg_id"] for row in ours]


def jsonb_key_order(names: list[str]) -> list[str]:
    """The order jsonb keeps an object's keys in: shorter first, then bytewise."""
    return sorted(names, key=lambda n: (len(n.encode()), n.encode()))


def test_the_message_types_list_their_keys_in_jsonb_order(db: DictConnection) -> None:
    """process_batch writes each message as to_jsonb of a row of inbox.outbox_message (migration 024):
    with its attributes in jsonb's key order, each object's key sort only checks them (a third of the
    message's CPU with jsonb_build_object). A key added at the end (ALTER TYPE ... ADD ATTRIBUTE) would
    make every message sort its keys again: it is a new type instead."""
    for type_name in ("inbox.outbox_message", "inbox.outbox_quota"):
        names = [
            r["attname"]
            for r in db.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = (SELECT typrelid FROM pg_type"
                " WHERE oid = %s::regtype) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                [type_name],
            )
        ]
        assert names and names == jsonb_key_order(names), type_name
    body = db.execute("SELECT prosrc FROM pg_proc WHERE oid = 'inbox.process_batch'::regproc").fetchone()
    assert body is not None and "jsonb_build_object(" not in body["prosrc"]
    assert "::inbox.outbox_message" in body["prosrc"]


def test_a_message_is_the_gate_row_and_the_quota_row_applied(db: DictConnection, dsn: str) -> None:
    """The message's content, checked against the tables it comes from: its quota is the quota row
    (every column of public.quota, each as to_jsonb writes it: numbers exact, times in ISO 8601), its
    other keys the version gate's row; a delete carries quota null."""
    q, gone = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT"), titan_event(gone, 1, "INSERT")])
    drain(dsn)
    ingest(
        db,
        [
            titan_event(
                q, 2, qty_t=Decimal("1000.0010"), tolerance_pct=Decimal("2.50"), counterparty_id='CP "7"\\'
            ),
            titan_event(gone, 2, "DELETE"),
        ],
    )
    drain(dsn)
    rows = db.execute(
        """
        SELECT m.message = jsonb_build_object(
                   'quota_id', g.quota_id, 'version', g.version, 'previous_version', g.previous_version,
                   'op', CASE WHEN g.is_delete THEN 'delete' ELSE 'upsert' END,
                   'quota', (SELECT to_jsonb(x) FROM public.quota x WHERE x.quota_id = g.quota_id),
                   'applied_at', g.applied_at) AS same,
               m.message->>'op' AS op
        FROM pgmq.q_quota_changes m
        JOIN inbox.quota_versions g ON g.quota_id = (m.message->>'quota_id')::uuid
                                   AND g.version = (m.message->>'version')::bigint
        """
    ).fetchall()
    assert sorted((r["op"], r["same"]) for r in rows) == [("delete", True), ("upsert", True)]
    message = next(m for m in outbox(db) if m["quota_id"] == str(q) and m["version"] == 2)
    assert str(message["quota"]["qty_t"]) == "1000.0010"
    assert message["quota"]["counterparty_id"] == 'CP "7"\\'
