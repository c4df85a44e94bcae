"""The apply contract of issue 2 ("Apply semantics"), one test per line, against a real PostgreSQL."""

from __future__ import annotations

import random
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from inbox.apply.worker import Worker
from inbox.db.connect import DictConnection
from inbox.ingest import BadBatch
from inbox.store import store_events
from tests.helpers import (
    dead_letters,
    dead_letters_for,
    drain,
    event_status,
    inbox_row,
    ingest,
    quota,
    status_counts,
    titan_event,
    to_json,
    worker_settings,
)
from tests.processes import wait_for

pytestmark = pytest.mark.timeout(60)


def run(dsn: str, **overrides: Any) -> Any:
    return drain(dsn, worker_settings(**overrides))


def without(event: dict[str, Any], *fields: str) -> dict[str, Any]:
    """The event with some data fields absent (not null)."""
    data = {k: v for k, v in event["data"].items() if k not in fields}
    return {**event, "data": data}


def keyed_rows(conn: DictConnection) -> dict[tuple[str, int, bool], dict[str, Any]]:
    rows = conn.execute("SELECT * FROM inbox.quota_events").fetchall()
    return {(str(r["quota_id"]), r["version"], r["is_delete"]): r for r in rows}


# -- INSERT / UPDATE upsert; the highest version wins ------------------------------------------------


def test_insert_creates_the_quota_with_every_field(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(
        db,
        [
            titan_event(
                qid,
                7,
                "INSERT",
                counterparty_id="CP-42",
                direction="SELL",
                period_month="2026-05-20",
                qty_t=Decimal("321.125"),
                tolerance_pct=Decimal("2.5"),
                incoterm_code="FOB",
                metal_code="NI",
                updated_at="2026-05-01T08:30:00+02:00",
            )
        ],
    )

    counts = run(dsn)

    assert (counts.applied, counts.stale, counts.dead) == (1, 0, 0)
    row = quota(db, qid)
    assert row is not None
    assert row["counterparty_id"] == "CP-42"
    assert row["direction"] == "SELL"
    assert row["period_month"] == date(2026, 5, 1)
    assert str(row["qty_t"]) == "321.125"
    assert str(row["tolerance_pct"]) == "2.5"
    assert row["incoterm_code"] == "FOB"
    assert row["metal_code"] == "NI"
    assert row["source_version"] == 7
    assert row["source_updated_at"].isoformat() == "2026-05-01T06:30:00+00:00"
    inbox = inbox_row(db, qid, 7)
    assert inbox["status"] == "applied"
    assert inbox["applied_at"] is not None
    assert inbox["lease_owner"] is None
    assert inbox["last_error"] is None
    assert dead_letters(db) == []


def test_update_of_an_unknown_quota_creates_it(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 3, "UPDATE", metal_code="ZN")])

    run(dsn)

    row = quota(db, qid)
    assert row is not None
    assert (row["metal_code"], row["source_version"]) == ("ZN", 3)
    assert event_status(db, qid, 3) == "applied"


def test_insert_of_an_existing_quota_overwrites_it(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", qty_t=Decimal("10"), incoterm_code="CIF")])
    run(dsn)
    ingest(db, [titan_event(qid, 2, "INSERT", qty_t=Decimal("20"), incoterm_code=None, direction="SELL")])

    run(dsn)

    row = quota(db, qid)
    assert row is not None
    assert (row["qty_t"], row["incoterm_code"], row["direction"]) == (Decimal("20"), None, "SELL")
    assert row["source_version"] == 2
    assert db.execute("SELECT count(*) AS n FROM public.quota").fetchone() == {"n": 1}


def test_highest_version_wins_within_one_batch(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    versions = [1, 2, 3, 4, 5]
    random.Random(7).shuffle(versions)
    ingest(db, [titan_event(qid, v, "UPDATE", qty_t=Decimal(v * 100)) for v in versions])

    counts = run(dsn)

    assert (counts.applied, counts.stale) == (1, 4)
    row = quota(db, qid)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (5, Decimal(500))
    assert [event_status(db, qid, v) for v in (1, 2, 3, 4, 5)] == ["stale"] * 4 + ["applied"]


def test_highest_version_wins_across_batches(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    for v in (4, 2, 6, 1, 5, 3):
        ingest(db, [titan_event(qid, v, "UPDATE", qty_t=Decimal(v))])
        run(dsn)

    row = quota(db, qid)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (6, Decimal(6))
    assert [event_status(db, qid, v) for v in (4, 2, 6, 1, 5, 3)] == [
        "applied",
        "stale",
        "applied",
        "stale",
        "stale",
        "stale",
    ]
    gate = db.execute("SELECT version, is_delete FROM inbox.quota_versions WHERE quota_id = %s", [qid])
    assert gate.fetchone() == {"version": 6, "is_delete": False}


def test_version_not_above_the_applied_one_is_stale_and_changes_nothing(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 5, "INSERT", qty_t=Decimal("55"))])
    run(dsn)
    before = quota(db, qid)

    ingest(
        db,
        [
            titan_event(qid, 4, "UPDATE", qty_t=Decimal("44"), metal_code="AL"),
            titan_event(qid, 0, "INSERT", qty_t=Decimal("1")),
        ],
    )
    counts = run(dsn)

    assert (counts.applied, counts.stale, counts.dead) == (0, 2, 0)
    assert quota(db, qid) == before  # every column, updated_at included
    for version in (4, 0):
        row = inbox_row(db, qid, version)
        assert row["status"] == "stale"
        assert row["applied_at"] is None
        assert row["last_error"] is None
    assert dead_letters(db) == []


def test_a_version_gap_does_not_wait(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT")])
    run(dsn)

    ingest(db, [titan_event(qid, 9, "UPDATE", qty_t=Decimal("9"))])
    counts = run(dsn)

    assert counts.applied == 1
    row = quota(db, qid)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (9, Decimal("9"))
    assert status_counts(db) == {"applied": 2}

    # The missing versions, arriving late, are stale.
    ingest(db, [titan_event(qid, v, "UPDATE", qty_t=Decimal(v)) for v in range(2, 9)])
    counts = run(dsn)
    assert (counts.applied, counts.stale) == (0, 7)
    row = quota(db, qid)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (9, Decimal("9"))


# -- DELETE ---------------------------------------------------------------------------------------------


def test_delete_removes_the_quota(db: DictConnection, dsn: str) -> None:
    qid, other = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT"), titan_event(other, 1, "INSERT")])
    run(dsn)

    ingest(db, [titan_event(qid, 2, "DELETE")])
    counts = run(dsn)

    assert counts.applied == 1
    assert quota(db, qid) is None
    assert quota(db, other) is not None
    assert inbox_row(db, qid, 2, is_delete=True)["status"] == "applied"
    gate = db.execute("SELECT version, is_delete FROM inbox.quota_versions WHERE quota_id = %s", [qid])
    assert gate.fetchone() == {"version": 2, "is_delete": True}
    assert dead_letters(db) == []


def test_a_late_older_update_after_a_delete_does_not_bring_the_quota_back(
    db: DictConnection, dsn: str
) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT"), titan_event(qid, 3, "DELETE")])
    run(dsn)
    assert quota(db, qid) is None

    # Late updates: older than the delete, one in its own batch, one with an equal version.
    ingest(db, [titan_event(qid, 2, "UPDATE", metal_code="LATE")])
    ingest(db, [titan_event(qid, 3, "UPDATE", metal_code="EQUAL")])
    counts = run(dsn)

    assert (counts.applied, counts.stale) == (0, 2)
    assert quota(db, qid) is None
    assert inbox_row(db, qid, 2)["status"] == "stale"
    assert inbox_row(db, qid, 3, is_delete=False)["status"] == "stale"


def test_a_delete_of_a_never_seen_quota_is_final_against_older_versions(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 5, "DELETE")])
    run(dsn)
    ingest(db, [titan_event(qid, 1, "INSERT"), titan_event(qid, 4, "UPDATE")])

    counts = run(dsn)

    assert (counts.applied, counts.stale) == (0, 2)
    assert quota(db, qid) is None


def test_a_newer_version_after_a_delete_creates_the_quota_again(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", qty_t=Decimal("1"))])
    run(dsn)
    ingest(db, [titan_event(qid, 2, "DELETE")])
    run(dsn)
    assert quota(db, qid) is None

    ingest(db, [titan_event(qid, 3, "UPDATE", qty_t=Decimal("3.50"), metal_code="SN")])
    counts = run(dsn)

    assert counts.applied == 1
    row = quota(db, qid)
    assert row is not None
    assert (row["source_version"], str(row["qty_t"]), row["metal_code"]) == (3, "3.50", "SN")


def test_a_delete_blocked_by_call_offs_is_dead_lettered_once_and_spares_the_batch(
    db: DictConnection, dsn: str
) -> None:
    blocked, deletable, updated = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("100")) for q in (blocked, deletable, updated)])
    run(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 10), (%s, 15)", [blocked, blocked])

    ingest(
        db,
        [
            titan_event(blocked, 2, "UPDATE", qty_t=Decimal("200")),  # same quota, lower version: applies
            titan_event(blocked, 3, "DELETE"),
            titan_event(deletable, 2, "DELETE"),
            titan_event(updated, 2, "UPDATE", qty_t=Decimal("222")),
        ],
    )
    counts = run(dsn)

    assert (counts.applied, counts.dead) == (3, 1)
    delete_row = inbox_row(db, blocked, 3, is_delete=True)
    assert delete_row["status"] == "dead"
    assert delete_row["attempts"] == 1
    assert "call-off" in delete_row["last_error"]
    letters = dead_letters_for(db, blocked)
    assert len(letters) == 1
    letter = letters[0]
    assert (letter["error_class"], letter["version"], letter["is_delete"]) == ("delete_blocked", 3, True)
    assert str(blocked) in letter["error_message"]
    assert "2 call-off(s) reference it" in letter["error_message"]
    assert letter["retry_count"] == 1
    # The quota and its call-offs stay; the lower update of the same batch is applied.
    row = quota(db, blocked)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (2, Decimal("200"))
    balance = db.execute(
        "SELECT called_off_qty_t, remaining_qty_t FROM public.v_quota_balance WHERE quota_id = %s", [blocked]
    ).fetchone()
    assert balance == {"called_off_qty_t": Decimal("25"), "remaining_qty_t": Decimal("175")}
    # Other quotas of the batch are unaffected.
    assert quota(db, deletable) is None
    updated_row = quota(db, updated)
    assert updated_row is not None
    assert updated_row["qty_t"] == Decimal("222")

    # Not retried: nothing is due any more, the attempt count and the dead letter stay as they were.
    again = run(dsn)
    assert again.claimed == 0
    assert inbox_row(db, blocked, 3, is_delete=True)["attempts"] == 1
    assert len(dead_letters_for(db, blocked)) == 1

    # The gate did not move: a newer update still applies.
    ingest(db, [titan_event(blocked, 4, "UPDATE", qty_t=Decimal("400"))])
    run(dsn)
    row = quota(db, blocked)
    assert row is not None
    assert row["source_version"] == 4


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"direction": "HOLD"}, "direction must be BUY or SELL", id="bad-direction"),
        pytest.param({"direction": "buy"}, "direction must be BUY or SELL", id="lowercase-direction"),
        pytest.param({"qty_t": Decimal("0")}, "qty_t must be positive", id="qty-zero"),
        pytest.param({"qty_t": Decimal("-1.5")}, "qty_t must be positive", id="qty-negative"),
        pytest.param({"qty_t": "NaN"}, "qty_t must be finite", id="qty-nan-string"),
        pytest.param({"qty_t": "Infinity"}, "qty_t must be finite", id="qty-infinity-string"),
        pytest.param({"qty_t": "-Infinity"}, "qty_t must be finite", id="qty-minus-infinity-string"),
        pytest.param({"qty_t": "12 t"}, "qty_t must be a number", id="qty-not-a-number"),
        pytest.param({"qty_t": None}, "qty_t is required", id="qty-null"),
        pytest.param(
            {"tolerance_pct": Decimal("-0.01")}, "tolerance_pct must be between 0 and 100", id="tol-neg"
        ),
        pytest.param(
            {"tolerance_pct": Decimal("100.5")}, "tolerance_pct must be between 0 and 100", id="tol-big"
        ),
        pytest.param({"tolerance_pct": "NaN"}, "tolerance_pct must be finite", id="tol-nan"),
        pytest.param({"metal_code": ""}, "metal_code is required", id="metal-empty"),
        pytest.param({"metal_code": None}, "metal_code is required", id="metal-null"),
        pytest.param({"period_month": "2026-02-30"}, "period_month is not a real date", id="feb-30"),
        pytest.param({"period_month": "03/2026"}, "period_month must be a date", id="period-format"),
    ],
)
def test_an_invalid_event_goes_straight_to_dead_letters(
    db: DictConnection, dsn: str, overrides: dict[str, Any], reason: str
) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", **overrides)])

    counts = run(dsn)

    assert (counts.claimed, counts.applied, counts.dead, counts.retried) == (1, 0, 1, 0)
    assert quota(db, qid) is None
    row = inbox_row(db, qid, 1)
    assert (row["status"], row["attempts"]) == ("dead", 1)
    letters = dead_letters_for(db, qid)
    assert len(letters) == 1
    assert letters[0]["error_class"] == "invalid"
    assert reason in letters[0]["error_message"], letters[0]["error_message"]
    assert letters[0]["event_data"] == row["payload"]
    # The gate did not move: the version stays free for a corrected event.
    assert db.execute("SELECT 1 FROM inbox.quota_versions WHERE quota_id = %s", [qid]).fetchone() is None


def test_a_missing_metal_code_is_invalid(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [without(titan_event(qid, 1, "INSERT"), "metal_code")])

    run(dsn)

    assert quota(db, qid) is None
    [letter] = dead_letters_for(db, qid)
    assert letter["error_class"] == "invalid"
    assert "metal_code is required" in letter["error_message"]


def test_a_bad_event_type_is_invalid(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "UPSERT"), titan_event(uuid.uuid4(), 1, "delete")])

    counts = run(dsn)

    assert (counts.applied, counts.dead) == (0, 2)
    assert db.execute("SELECT count(*) AS n FROM public.quota").fetchone() == {"n": 0}
    messages = [letter["error_message"] for letter in dead_letters(db)]
    assert len(messages) == 2
    assert all("eventType must be one of INSERT, UPDATE, DELETE" in m for m in messages)
    assert any("'UPSERT'" in m for m in messages)
    assert any("'delete'" in m for m in messages)


def test_an_invalid_event_lists_every_reason(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    event = titan_event(
        qid,
        1,
        "MERGE",
        counterparty_id="",
        direction="HOLD",
        period_month="2026-02-30",
        qty_t="NaN",
        tolerance_pct=Decimal("101"),
        incoterm_code=42,
    )
    ingest(db, [without(event, "metal_code")])

    run(dsn)

    [letter] = dead_letters_for(db, qid)
    message = letter["error_message"]
    expected = [
        "eventType must be one of",
        "counterparty_id is required",
        "direction must be BUY or SELL",
        "period_month is not a real date",
        "qty_t must be finite",
        "tolerance_pct must be between 0 and 100",
        "incoterm_code must be a string or null",
        "metal_code is required",
    ]
    missing = [reason for reason in expected if reason not in message]
    assert missing == [], message
    assert len(message.split("; ")) == len(expected), message
    assert inbox_row(db, qid, 1)["last_error"] == message


def test_an_event_without_a_uuid_quota_id_is_refused_with_its_whole_batch(db: DictConnection) -> None:
    good = titan_event(uuid.uuid4(), 1, "INSERT")
    bad = titan_event(uuid.uuid4(), 1, "INSERT")
    bad["data"]["quota_id"] = "Q-1"

    with pytest.raises(BadBatch) as refused:
        store_events(db, [to_json(good), to_json(bad)], "http")

    assert refused.value.problems == [(1, "data.quota_id must be a UUID string")]
    assert db.execute("SELECT count(*) AS n FROM inbox.quota_events").fetchone() == {"n": 0}


# -- exact values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "stored"),
    [
        pytest.param(Decimal("0.1") + Decimal("0.2"), "0.3", id="point-one-plus-point-two"),
        pytest.param(Decimal("1250.500"), "1250.500", id="scale-kept-number"),
        pytest.param("1250.500", "1250.500", id="scale-kept-string"),
        pytest.param(Decimal("0.30000000000000004"), "0.30000000000000004", id="float-artifact-kept-as-sent"),
        pytest.param(
            Decimal("12345678901234567890.123456789012345678"),
            "12345678901234567890.123456789012345678",
            id="beyond-float-precision",
        ),
        pytest.param(Decimal("0.000001"), "0.000001", id="tiny"),
        pytest.param(7, "7", id="integer"),
    ],
)
def test_quantities_stay_exact(db: DictConnection, dsn: str, qty: Any, stored: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", qty_t=qty)])

    run(dsn)

    row = db.execute(
        "SELECT qty_t::text AS qty_text, qty_t FROM public.quota WHERE quota_id = %s", [qid]
    ).fetchone()
    assert row is not None, dead_letters(db)
    assert row["qty_text"] == stored
    assert row["qty_t"] == Decimal(stored)
    assert str(row["qty_t"]) == stored


def test_tolerance_decimals_stay_exact(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", tolerance_pct="12.50")])

    run(dsn)

    row = db.execute(
        "SELECT tolerance_pct::text AS t FROM public.quota WHERE quota_id = %s", [qid]
    ).fetchone()
    assert row == {"t": "12.50"}


def test_falsy_but_valid_values_are_kept(db: DictConnection, dsn: str) -> None:
    zero_tol, empty_incoterm, null_both = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(
        db,
        [
            titan_event(zero_tol, 1, "INSERT", tolerance_pct=Decimal("0")),
            titan_event(empty_incoterm, 1, "INSERT", incoterm_code=""),
            titan_event(null_both, 1, "INSERT", tolerance_pct=None, incoterm_code=None),
        ],
    )

    counts = run(dsn)

    assert counts.applied == 3
    rows = {
        r["quota_id"]: r
        for r in db.execute(
            "SELECT q.quota_id, q.tolerance_pct, q.incoterm_code, b.min_qty_t, b.max_qty_t"
            " FROM public.quota q JOIN public.v_quota_balance b USING (quota_id)"
        ).fetchall()
    }
    assert rows[zero_tol]["tolerance_pct"] is not None
    assert rows[zero_tol]["tolerance_pct"] == 0
    # A tolerance of 0 means exactly the quantity, not "no tolerance given" (same bounds here, but kept).
    assert rows[zero_tol]["min_qty_t"] == rows[zero_tol]["max_qty_t"] == Decimal("100.000")
    assert rows[empty_incoterm]["incoterm_code"] == ""
    assert rows[null_both]["tolerance_pct"] is None
    assert rows[null_both]["incoterm_code"] is None


def test_a_missing_tolerance_is_null(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [without(titan_event(qid, 1, "INSERT"), "tolerance_pct", "incoterm_code")])

    run(dsn)

    row = quota(db, qid)
    assert row is not None
    assert (row["tolerance_pct"], row["incoterm_code"]) == (None, None)


@pytest.mark.parametrize(
    ("period", "month"),
    [
        pytest.param("2026-03-31T23:30:00-05:00", date(2026, 3, 1), id="late-evening-west-of-utc"),
        pytest.param("2026-01-01T00:30:00+14:00", date(2026, 1, 1), id="early-morning-east-of-utc"),
        pytest.param("2025-12-31T23:59:59Z", date(2025, 12, 1), id="year-end-utc"),
        pytest.param("2026-02-28", date(2026, 2, 1), id="plain-date"),
        pytest.param("2028-02-29", date(2028, 2, 1), id="leap-day"),
        pytest.param("2026-07-01", date(2026, 7, 1), id="already-first"),
    ],
)
def test_period_month_comes_from_the_dates_own_digits(
    db: DictConnection, dsn: str, period: str, month: date
) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", period_month=period)])

    run(dsn)

    row = quota(db, qid)
    assert row is not None, dead_letters(db)
    assert row["period_month"] == month


def test_created_at_is_set_once_and_updated_at_moves(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT")])
    run(dsn)
    first = quota(db, qid)
    assert first is not None
    assert first["created_at"] == first["updated_at"]

    ingest(db, [titan_event(qid, 2, "UPDATE", qty_t=Decimal("2"))])
    run(dsn)
    second = quota(db, qid)
    ingest(db, [titan_event(qid, 3, "INSERT", qty_t=Decimal("3"))])
    run(dsn)
    third = quota(db, qid)

    assert second is not None
    assert third is not None
    assert second["created_at"] == first["created_at"]
    assert third["created_at"] == first["created_at"]
    assert first["updated_at"] < second["updated_at"] < third["updated_at"]
    assert third["source_version"] == 3


# -- dead letters and the inbox row's final state --------------------------------------------------


def test_exactly_one_dead_letter_per_dead_event_and_none_for_the_others(db: DictConnection, dsn: str) -> None:
    with_call_off, plain = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(with_call_off, 1, "INSERT"), titan_event(plain, 5, "INSERT")])
    run(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [with_call_off])

    invalid = [uuid.uuid4() for _ in range(3)]
    ingest(
        db,
        [
            titan_event(with_call_off, 2, "DELETE"),  # dead: delete_blocked
            titan_event(plain, 3, "UPDATE"),  # stale
            titan_event(plain, 6, "UPDATE"),  # applied
            titan_event(invalid[0], 1, "INSERT", direction="LONG"),  # dead: invalid
            titan_event(invalid[1], 1, "INSERT", qty_t="Infinity"),  # dead: invalid
            titan_event(invalid[2], 1, "DELETE"),  # applied (a delete needs only its key)
            titan_event(invalid[2], 2, "UPDATE", metal_code=""),  # dead: invalid
        ],
    )
    counts = run(dsn)
    assert (counts.applied, counts.stale, counts.dead) == (2, 1, 4)
    # Processing again finds nothing and writes nothing.
    assert run(dsn).claimed == 0

    rows = keyed_rows(db)
    dead = {key for key, row in rows.items() if row["status"] == "dead"}
    letters = db.execute(
        "SELECT quota_id, version, is_delete, error_class FROM public.quota_processing_errors"
    )
    lettered = [(str(r["quota_id"]), r["version"], r["is_delete"]) for r in letters.fetchall()]
    assert sorted(lettered) == sorted(dead)
    assert len(lettered) == len(set(lettered)) == 4
    classes = db.execute(
        "SELECT error_class, count(*) AS n FROM public.quota_processing_errors GROUP BY error_class"
    ).fetchall()
    assert {r["error_class"]: r["n"] for r in classes} == {"invalid": 3, "delete_blocked": 1}
    assert rows[(str(plain), 3, False)]["status"] == "stale"
    assert rows[(str(plain), 6, False)]["status"] == "applied"


def test_no_dead_event_without_its_dead_letter_when_the_letter_cannot_be_written(
    db: DictConnection, dsn: str
) -> None:
    """The dead letter and the inbox row's final state commit together or not at all."""
    qid = uuid.uuid4()
    ingest(db, [titan_event(qid, 1, "INSERT", direction="SIDEWAYS")])
    db.execute(
        "ALTER TABLE public.quota_processing_errors"
        " ADD CONSTRAINT test_refuse_letters CHECK (false) NOT VALID"
    )
    conf = worker_settings(batch_size=1, lease_seconds=0.5, backoff_base_seconds=0.05)
    worker = Worker(dsn, conf, "doomed")
    try:
        counts = worker.process_once()  # the letter cannot be written: the event is given back
    finally:
        worker.close()

    assert (counts.dead, counts.retried) == (0, 1)
    row = inbox_row(db, qid, 1)
    assert (row["status"], row["attempts"]) == ("pending", 1)  # not dead, not lost: it comes back
    assert dead_letters(db) == []

    db.execute("ALTER TABLE public.quota_processing_errors DROP CONSTRAINT test_refuse_letters")
    wait_for(lambda: drain(dsn, conf).dead == 1, "the event dead-lettered")

    row = inbox_row(db, qid, 1)
    assert (row["status"], row["attempts"]) == ("dead", 2)
    [letter] = dead_letters(db)
    assert letter["error_class"] == "invalid"
    assert "direction must be BUY or SELL" in letter["error_message"]


# -- duplicates on ingest ---------------------------------------------------------------------------


def test_duplicates_are_counted_and_never_reset_an_applied_event(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    event = titan_event(qid, 1, "INSERT", qty_t=Decimal("10"))
    first = ingest(db, [event, event])
    assert (first.accepted, first.duplicates) == (1, 1)
    run(dsn)
    before = inbox_row(db, qid, 1)
    quota_before = quota(db, qid)
    assert before["status"] == "applied"

    # Redelivered, also with a different body for the same key (the stored one wins).
    again = ingest(db, [event, titan_event(qid, 1, "INSERT", qty_t=Decimal("99"))], source="kafka")
    assert (again.accepted, again.duplicates) == (0, 2)

    assert inbox_row(db, qid, 1) == before  # status, attempts, applied_at, payload, source: unchanged
    assert run(dsn).claimed == 0
    assert quota(db, qid) == quota_before
    assert db.execute("SELECT count(*) AS n FROM inbox.quota_events").fetchone() == {"n": 1}


def test_a_duplicate_of_a_dead_or_stale_event_does_not_revive_it(db: DictConnection, dsn: str) -> None:
    qid = uuid.uuid4()
    bad = titan_event(qid, 1, "INSERT", qty_t=Decimal("-1"))
    stale = titan_event(qid, 2, "UPDATE")
    ingest(db, [bad, stale, titan_event(qid, 3, "UPDATE")])
    run(dsn)

    result = ingest(db, [bad, stale])

    assert (result.accepted, result.duplicates) == (0, 2)
    assert run(dsn).claimed == 0
    assert event_status(db, qid, 1) == "dead"
    assert event_status(db, qid, 2) == "stale"
    assert len(dead_letters_for(db, qid)) == 1
