"""The JDBC-sink feed: replay the exact statements each connector issues on PostgreSQL, each twice.

Shapes (from the connectors' PostgreSQL dialects; the values bound as pgjdbc binds them: strings as
varchar, decimals as numeric, dates and timestamps typed):
* Debezium JDBC sink, row by row: INSERT ... VALUES (cast(? as uuid), ...) ON CONFLICT DO UPDATE.
* Debezium JDBC sink, batch: INSERT ... SELECT * FROM UNNEST(?::uuid[], ...) ON CONFLICT DO UPDATE
  (used when no field is a Connect Decimal, i.e. with decimal.handling.mode=string).
* Confluent JDBC sink, insert.mode=upsert: quoted identifiers, ?::uuid, ON CONFLICT DO UPDATE.
* Confluent JDBC sink, insert.mode=insert: quoted identifiers, a plain INSERT; the connector fails
  unless each statement reports one row. Also with period_month as Debezium's day count, which
  Confluent binds as an integer unless the source uses time.precision.mode=connect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.string import StrDumperVarchar

from inbox.db.connect import DictConnection
from inbox.formats import SINK_COLUMNS
from tests.helpers import drain, quota

COLUMNS = SINK_COLUMNS

DEBEZIUM_UPSERT = (
    "INSERT INTO inbox.titan_quota_sink (quota_id,version,counterparty_id,direction,period_month,qty_t,"
    "tolerance_pct,incoterm_code,metal_code,updated_at,__op,__deleted,__source_ts_ms,__lsn) "
    "VALUES (cast(%s as uuid),%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (quota_id,version) DO UPDATE SET counterparty_id=EXCLUDED.counterparty_id,"
    "direction=EXCLUDED.direction,period_month=EXCLUDED.period_month,qty_t=EXCLUDED.qty_t,"
    "tolerance_pct=EXCLUDED.tolerance_pct,incoterm_code=EXCLUDED.incoterm_code,"
    "metal_code=EXCLUDED.metal_code,updated_at=EXCLUDED.updated_at,__op=EXCLUDED.__op,"
    "__deleted=EXCLUDED.__deleted,__source_ts_ms=EXCLUDED.__source_ts_ms,__lsn=EXCLUDED.__lsn"
)

DEBEZIUM_UNNEST_UPSERT = (
    "INSERT INTO inbox.titan_quota_sink (quota_id,version,counterparty_id,direction,period_month,qty_t,"
    "tolerance_pct,incoterm_code,metal_code,updated_at,__op,__deleted,__source_ts_ms,__lsn) "
    "SELECT * FROM UNNEST(%s::uuid[],%s::bigint[],%s::text[],%s::text[],%s::date[],%s::text[],"
    "%s::text[],%s::text[],%s::text[],%s::timestamptz[],%s::text[],%s::text[],%s::bigint[],%s::bigint[]) "
    "AS t(quota_id,version,counterparty_id,direction,period_month,qty_t,tolerance_pct,incoterm_code,"
    "metal_code,updated_at,__op,__deleted,__source_ts_ms,__lsn) "
    "ON CONFLICT (quota_id,version) DO UPDATE SET counterparty_id=EXCLUDED.counterparty_id,"
    "direction=EXCLUDED.direction,period_month=EXCLUDED.period_month,qty_t=EXCLUDED.qty_t,"
    "tolerance_pct=EXCLUDED.tolerance_pct,incoterm_code=EXCLUDED.incoterm_code,"
    "metal_code=EXCLUDED.metal_code,updated_at=EXCLUDED.updated_at,__op=EXCLUDED.__op,"
    "__deleted=EXCLUDED.__deleted,__source_ts_ms=EXCLUDED.__source_ts_ms,__lsn=EXCLUDED.__lsn"
)

CONFLUENT_UPSERT = (
    'INSERT INTO "inbox"."titan_quota_sink" ("quota_id","version","counterparty_id","direction",'
    '"period_month","qty_t","tolerance_pct","incoterm_code","metal_code","updated_at","__op",'
    '"__deleted","__source_ts_ms","__lsn") VALUES (%s::uuid,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) '
    'ON CONFLICT ("quota_id","version") DO UPDATE SET "counterparty_id"=EXCLUDED."counterparty_id",'
    '"direction"=EXCLUDED."direction","period_month"=EXCLUDED."period_month","qty_t"=EXCLUDED."qty_t",'
    '"tolerance_pct"=EXCLUDED."tolerance_pct","incoterm_code"=EXCLUDED."incoterm_code",'
    '"metal_code"=EXCLUDED."metal_code","updated_at"=EXCLUDED."updated_at","__op"=EXCLUDED."__op",'
    '"__deleted"=EXCLUDED."__deleted","__source_ts_ms"=EXCLUDED."__source_ts_ms","__lsn"=EXCLUDED."__lsn"'
)

CONFLUENT_INSERT = (
    'INSERT INTO "inbox"."titan_quota_sink" ("quota_id","version","counterparty_id","direction",'
    '"period_month","qty_t","tolerance_pct","incoterm_code","metal_code","updated_at","__op",'
    '"__deleted","__source_ts_ms","__lsn") VALUES (%s::uuid,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)'
)


@dataclass(frozen=True)
class Record:
    """A flattened Titan quota record, as ExtractNewRecordState hands it to a sink."""

    quota_id: uuid.UUID
    version: int
    qty_t: Decimal = Decimal("100.000")
    tolerance_pct: Decimal | None = Decimal("0")  # falsy but valid: must survive
    deleted: bool = False
    lsn: int | None = None  # __lsn: Debezium's source.lsn; None as from a config without it in add.fields
    # a delete under REPLICA IDENTITY DEFAULT: the key, and type defaults in the NOT NULL columns
    key_only: bool = False

    def values(
        self, *, decimals_as_text: bool = False, timestamp_as_text: bool = False, date_as_days: bool = False
    ) -> list[Any]:
        def number(value: Decimal | None) -> Decimal | str | None:
            return str(value) if decimals_as_text and value is not None else value

        updated = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
        if self.key_only:
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            defaults = [0, "", "", date(1970, 1, 1), number(Decimal(0)), None, None, ""]
            return [
                str(self.quota_id),
                *defaults,
                "1970-01-01T00:00:00Z" if timestamp_as_text else epoch,
                "d",
                "true",
                1_775_000_000_000,
                self.lsn,
            ]
        return [
            str(self.quota_id),
            self.version,
            "CP-7",
            "SELL",
            (date(2026, 3, 31) - date(1970, 1, 1)).days if date_as_days else date(2026, 3, 31),
            number(self.qty_t),
            number(self.tolerance_pct),
            "FOB",
            "AL",
            "2026-03-31T23:30:00Z" if timestamp_as_text else updated,
            "d" if self.deleted else "u",
            "true" if self.deleted else "false",
            1_775_000_000_000 + self.version,
            self.lsn,
        ]


Deliver = Callable[[psycopg.Connection[Any], Sequence[Record]], list[int]]


def _row_by_row(statement: str, **value_options: bool) -> Deliver:
    """One statement per record in one transaction, like a JDBC executeBatch; the row counts."""

    def deliver(conn: psycopg.Connection[Any], records: Sequence[Record]) -> list[int]:
        counts = []
        with conn.transaction(), conn.cursor() as cur:
            for record in records:
                cur.execute(statement, record.values(**value_options))
                counts.append(cur.rowcount)
        return counts

    return deliver


def _unnest(conn: psycopg.Connection[Any], records: Sequence[Record]) -> list[int]:
    """Debezium's batch form: one array per column, all records in one statement."""
    rows = [r.values(decimals_as_text=True) for r in records]
    columns = [[row[i] for row in rows] for i in range(len(COLUMNS))]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(DEBEZIUM_UNNEST_UPSERT, columns)
        return [cur.rowcount]


SHAPES: dict[str, Deliver] = {
    "debezium-upsert": _row_by_row(DEBEZIUM_UPSERT),
    "debezium-unnest": _unnest,
    "confluent-upsert": _row_by_row(CONFLUENT_UPSERT, timestamp_as_text=True),
    "confluent-insert": _row_by_row(CONFLUENT_INSERT, timestamp_as_text=True),
    # Confluent binds Debezium's default DATE encoding (io.debezium.time.Date) as a plain integer.
    "confluent-insert-day-count": _row_by_row(CONFLUENT_INSERT, timestamp_as_text=True, date_as_days=True),
}


def connector_session(dsn: str) -> psycopg.Connection[Any]:
    """A session that binds Python str as varchar, as pgjdbc's setString does."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.adapters.register_dumper(str, StrDumperVarchar)
    return conn


def inbox_state(db: DictConnection) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT quota_id, version, is_delete, source, status, attempts, applied_at, received_at"
        " FROM inbox.quota_events ORDER BY quota_id, version, is_delete"
    ).fetchall()


def sink_rows(db: DictConnection) -> list[dict[str, Any]]:
    return db.execute("SELECT quota_id, version, __deleted FROM inbox.titan_quota_sink").fetchall()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_record_is_one_event_and_a_redelivery_changes_nothing(
    shape: str, dsn: str, db: DictConnection
) -> None:
    deliver = SHAPES[shape]
    kept, deleted = uuid.uuid4(), uuid.uuid4()
    records = [
        Record(kept, 2, qty_t=Decimal("250.500")),
        Record(kept, 1),  # late and older: stale
        Record(deleted, 1),
        Record(deleted, 1, deleted=True),  # a delete carries the version of the last upsert
    ]

    with connector_session(dsn) as conn:
        first = deliver(conn, records)
    state = inbox_state(db)
    assert [(r["quota_id"], r["version"], r["is_delete"]) for r in state] == sorted(
        [(kept, 1, False), (kept, 2, False), (deleted, 1, False), (deleted, 1, True)]
    )
    assert {r["source"] for r in state} == {"sink"}
    counts = drain(dsn)
    assert (counts.applied, counts.stale, counts.dead) == (2, 2, 0)
    after_first = inbox_state(db)
    assert all(r["status"] in ("applied", "stale") for r in after_first)

    with connector_session(dsn) as conn:
        second = deliver(conn, records)

    assert second == first
    assert first == ([len(records)] if shape == "debezium-unnest" else [1] * len(records))
    assert inbox_state(db) == after_first  # nothing new, nothing reset
    assert drain(dsn).claimed == 0
    row = quota(db, kept)
    assert row is not None
    assert (row["source_version"], str(row["qty_t"]), row["tolerance_pct"]) == (2, "250.500", Decimal("0"))
    assert row["period_month"] == date(2026, 3, 1)
    assert row["source_updated_at"] == datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
    assert quota(db, deleted) is None
    # The table keeps only the last delivery per quota.
    assert sorted((r["quota_id"], r["version"], r["__deleted"]) for r in sink_rows(db)) == sorted(
        [(kept, 1, "false"), (deleted, 1, "true")]
    )


def test_one_batch_may_hold_the_same_key_twice(dsn: str, db: DictConnection) -> None:
    """Without Debezium's reduction buffer an upsert and its delete can share one UNNEST statement;
    plain ON CONFLICT DO UPDATE would fail with 'cannot affect row a second time'."""
    quota_id = uuid.uuid4()
    with connector_session(dsn) as conn:
        _unnest(conn, [Record(quota_id, 4), Record(quota_id, 4, deleted=True), Record(quota_id, 4)])

    assert [(r["version"], r["is_delete"]) for r in inbox_state(db)] == [(4, False), (4, True)]
    drain(dsn)
    assert quota(db, quota_id) is None


def test_sink_table_holds_one_row_per_quota(dsn: str, db: DictConnection) -> None:
    quota_ids = [uuid.uuid4() for _ in range(3)]
    records = [Record(q, v) for v in range(1, 21) for q in quota_ids]
    with connector_session(dsn) as conn:
        SHAPES["confluent-insert"](conn, records)

    assert len(inbox_state(db)) == 60
    assert sorted((r["quota_id"], r["version"]) for r in sink_rows(db)) == sorted((q, 20) for q in quota_ids)


def test_invalid_values_land_and_become_dead_letters(dsn: str, db: DictConnection) -> None:
    """Text columns take whatever a connector binds; the worker judges it like any other event."""
    quota_id = uuid.uuid4()
    values = Record(quota_id, 1).values()
    values[3] = "HOLD"  # direction
    values[5] = "-3"  # qty_t
    with connector_session(dsn) as conn:
        conn.execute(DEBEZIUM_UPSERT, values)

    drain(dsn)
    error = db.execute("SELECT error_class, error_message FROM public.quota_processing_errors").fetchone()
    assert error is not None
    assert error["error_class"] == "invalid"
    assert "direction must be BUY or SELL" in error["error_message"]
    assert "qty_t must be positive" in error["error_message"]


@pytest.mark.parametrize("shape", ["debezium-upsert", "debezium-unnest", "confluent-insert"])
def test_a_key_only_delete_is_ordered_by_its_lsn(shape: str, dsn: str, db: DictConnection) -> None:
    """REPLICA IDENTITY DEFAULT: the sink writes the delete at version 0 with type defaults; __lsn
    (add.fields=op,lsn,...) places it after the upserts it follows, in whatever batch it comes."""
    deliver = SHAPES[shape]
    quota_id = uuid.uuid4()
    with connector_session(dsn) as conn:
        deliver(conn, [Record(quota_id, 1, lsn=100), Record(quota_id, 2, lsn=200)])
        drain(dsn)
        deliver(conn, [Record(quota_id, 0, key_only=True, lsn=300)])
        drain(dsn)
        assert quota(db, quota_id) is None
        # an older change delivered late: its LSN is below the delete's
        deliver(conn, [Record(quota_id, 3, lsn=250)])
        drain(dsn)

    assert quota(db, quota_id) is None
    row = db.execute(
        "SELECT status, source_lsn FROM inbox.quota_events WHERE quota_id = %s AND version = 0", [quota_id]
    ).fetchone()
    assert row == {"status": "applied", "source_lsn": 300}
    assert db.execute("SELECT count(*) AS n FROM public.quota_processing_errors").fetchone() == {"n": 0}


def test_a_key_only_delete_without_its_lsn_is_a_dead_letter_naming_the_fix(
    dsn: str, db: DictConnection
) -> None:
    """A sink config without lsn in add.fields: the delete cannot be placed; it says so."""
    quota_id = uuid.uuid4()
    with connector_session(dsn) as conn:
        SHAPES["debezium-upsert"](conn, [Record(quota_id, 1, lsn=100)])
        drain(dsn)
        SHAPES["debezium-upsert"](conn, [Record(quota_id, 0, key_only=True)])
        drain(dsn)

    assert quota(db, quota_id) is not None
    [letter] = db.execute("SELECT error_class, error_message FROM public.quota_processing_errors").fetchall()
    assert letter["error_class"] == "delete_unplaceable"
    assert "add.fields" in letter["error_message"]
    assert "REPLICA IDENTITY FULL" in letter["error_message"]
