"""`inbox reconcile` against a real PostgreSQL: the comparison (inbox.quota_drift), the source in
every format the inbox accepts or as Titan's table, and repairs filed through the inbox."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest

from inbox import reconcile
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import Queries
from inbox.ingest import stream_values
from tests.cdc_events import FORMATS, Format, encode_event, quota_columns
from tests.helpers import dead_letters_for, drain, ingest, quota, titan_event, to_json


def source(events: Iterable[Any]) -> Iterable[Any]:
    """A source file of Titan events (NDJSON), read as the command reads it."""
    body = "\n".join(e if isinstance(e, str) else to_json(e) for e in events).encode()
    return stream_values(io.BytesIO(body))


def run(dsn: str, events: Iterable[Any]) -> tuple[reconcile.Summary, dict[uuid.UUID, dict[str, Any]]]:
    """Compare on a session of its own (the temp tables live as long as it)."""
    with connect(dsn, autocommit=True) as conn:
        loaded = reconcile.load_source(Queries(conn), source(events))
        summary = reconcile.compare(Queries(conn), loaded)
        return summary, {row["quota_id"]: row for row in reconcile.drift_rows(Queries(conn))}


def run_and_repair(dsn: str, events: Iterable[Any]) -> reconcile.Repaired:
    with connect(dsn, autocommit=True) as conn:
        reconcile.compare(Queries(conn), reconcile.load_source(Queries(conn), source(events)))
        return reconcile.repair(Queries(conn), batch_size=3)


def applied(db: DictConnection, dsn: str, events: list[dict[str, Any]]) -> None:
    ingest(db, events)
    drain(dsn)


@pytest.fixture
def drifted(db: DictConnection, dsn: str) -> dict[str, Any]:
    """A CSLA that drifted from Titan in every way, and Titan's truth (one event per quota)."""
    names = ("same", "edited", "behind", "ahead", "gone", "extra", "dropped", "bad")
    ids = {name: uuid.uuid4() for name in names}
    applied(
        db,
        dsn,
        [
            titan_event(ids["same"], 3, "INSERT"),
            titan_event(ids["edited"], 7, "INSERT", qty_t=Decimal("100.000")),
            titan_event(ids["behind"], 2, "INSERT"),
            titan_event(ids["ahead"], 9, "INSERT"),
            titan_event(ids["gone"], 4, "INSERT"),
            titan_event(ids["extra"], 5, "INSERT"),
            titan_event(ids["dropped"], 6, "INSERT"),
            titan_event(ids["bad"], 1, "INSERT"),
        ],
    )
    # outside the pipeline: a DBA's hand edit at the same version, a row deleted by hand
    db.execute("UPDATE public.quota SET qty_t = 90, direction = 'SELL' WHERE quota_id = %s", [ids["edited"]])
    db.execute("DELETE FROM public.quota WHERE quota_id = %s", [ids["gone"]])
    missing = uuid.uuid4()  # an event lost before the inbox existed
    ids["missing"] = missing
    truth = [
        titan_event(ids["same"], 3, "UPDATE"),
        titan_event(ids["edited"], 7, "UPDATE", qty_t=Decimal("100.000")),
        titan_event(ids["behind"], 5, "UPDATE", metal_code="AL"),
        titan_event(ids["ahead"], 8, "UPDATE"),
        titan_event(ids["gone"], 4, "UPDATE"),
        titan_event(ids["dropped"], 6, "DELETE"),  # deleted at Titan, the delete never arrived
        titan_event(ids["bad"], 2, "UPDATE", qty_t=Decimal("-1")),
        titan_event(missing, 1, "INSERT", qty_t=Decimal("12.500")),
        titan_event(missing, 3, "UPDATE", qty_t=Decimal("12.5000")),  # repeated: the highest version counts
    ]
    return {"ids": ids, "truth": truth}


def test_an_equal_database_reconciles_clean(db: DictConnection, dsn: str) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    applied(db, dsn, [titan_event(a, 1, "INSERT"), titan_event(b, 2, "INSERT", tolerance_pct=None)])
    # Titan's period_month may be any day of the month; CSLA keeps the first, and they agree
    summary, rows = run(dsn, [titan_event(a, 1), titan_event(b, 2, tolerance_pct=None)])
    assert rows == {}
    assert (summary.source_quotas, summary.csla_quotas, summary.drifting) == (2, 2, 0)


def test_every_kind_of_drift_is_reported_with_both_values(dsn: str, drifted: dict[str, Any]) -> None:
    ids = drifted["ids"]
    summary, rows = run(dsn, drifted["truth"])

    found = {name: (rows[i]["drift"], rows[i]["versions"]) for name, i in ids.items() if i in rows}
    assert found == {
        "edited": ("differs", "same"),
        "behind": ("differs", "behind"),
        "ahead": ("differs", "ahead"),
        "gone": ("missing", "same"),
        "extra": ("extra", None),
        "dropped": ("extra", "behind"),
        "bad": ("invalid", "behind"),
        "missing": ("missing", "behind"),
    }
    edited = rows[ids["edited"]]
    assert edited["columns"] == ["direction", "qty_t"]
    # exact digits on both sides: Titan's 100.000, the hand-typed 90
    assert str(edited["source"]["qty_t"]) == "100.000" and str(edited["csla"]["qty_t"]) == "90"
    assert (edited["source_version"], edited["csla_version"], edited["gate_version"]) == (7, 7, 7)
    behind = rows[ids["behind"]]
    assert behind["columns"] == ["metal_code"]
    assert (behind["source_version"], behind["csla_version"]) == (5, 2)
    assert str(rows[ids["missing"]]["source"]["qty_t"]) == "12.5000"
    assert rows[ids["dropped"]]["source_deleted"] is True
    assert "qty_t must be positive" in rows[ids["bad"]]["invalid"]
    assert summary.source_rows == 9 and summary.source_quotas == 8
    assert summary.by_drift() == {"missing": 2, "extra": 2, "differs": 3, "invalid": 1}
    assert "qty_t source 100.000, CSLA 90" in reconcile.drift_line(edited)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_the_inbox_accepts_is_a_source(db: DictConnection, dsn: str, fmt: Format) -> None:
    quota_id = uuid.uuid4()
    row = quota_columns(quota_id, 4)
    applied(db, dsn, [json.loads(encode_event("titan", quota_id, 4, False, row), parse_float=Decimal)])
    same = encode_event(fmt, quota_id, 4, False, row).decode()
    changed = encode_event(fmt, quota_id, 4, False, {**row, "qty_t": Decimal("42.124")}).decode()

    assert run(dsn, [same])[1] == {}
    drift = run(dsn, [changed])[1][quota_id]
    assert drift["columns"] == ["qty_t"] and str(drift["source"]["qty_t"]) == "42.124"


def test_tombstones_and_truncates_are_skipped(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    applied(db, dsn, [titan_event(quota_id, 1, "INSERT")])
    truncate = '{"op": "t", "before": null, "after": null}'
    summary, rows = run(dsn, [to_json(titan_event(quota_id, 1)), "null", truncate])
    assert rows == {} and summary.skipped == 2


def test_an_unkeyable_event_stops_the_comparison_and_names_it(db: DictConnection, dsn: str) -> None:
    with connect(dsn, autocommit=True) as conn, pytest.raises(reconcile.SourceUnreadable) as caught:
        reconcile.load_source(
            Queries(conn), source([titan_event(uuid.uuid4(), 1), {"data": {"quota_id": "x"}}])
        )
    assert caught.value.problems[0][0] == 1
    assert "data.quota_id must be a UUID" in str(caught.value)


def test_a_dba_compares_against_titans_table_and_the_command_reads_it(
    db: DictConnection, dsn: str, drifted: dict[str, Any]
) -> None:
    """Titan's own table (Titan's columns, no delete flag: a deleted quota is simply absent)."""
    ids = drifted["ids"]
    db.execute(
        """CREATE SCHEMA titan;
           CREATE TABLE titan.quota (quota_id uuid PRIMARY KEY, version bigint NOT NULL,
               counterparty_id text, direction text, period_month date, qty_t numeric(18,3),
               tolerance_pct numeric(5,2), incoterm_code text, metal_code text, updated_at timestamptz)"""
    )
    for name in ("same", "edited"):
        db.execute(
            "INSERT INTO titan.quota SELECT quota_id, source_version, counterparty_id, direction,"
            " period_month + 14, qty_t, tolerance_pct, incoterm_code, metal_code, source_updated_at"
            " FROM public.quota WHERE quota_id = %s",
            [ids[name]],
        )
    db.execute("UPDATE titan.quota SET qty_t = 100 WHERE quota_id = %s", [ids["edited"]])

    by_sql = {
        r["quota_id"]: (r["drift"], r["columns"])
        for r in db.execute("SELECT * FROM inbox.quota_drift('titan.quota')").fetchall()
    }
    assert by_sql[ids["edited"]] == ("differs", ["qty_t"])
    assert ids["same"] not in by_sql
    assert by_sql[ids["extra"]][0] == "extra"

    with connect(dsn, autocommit=True) as conn:
        loaded = reconcile.load_source(Queries(conn), reconcile.table_values(dsn, "titan.quota", fetch=1))
        reconcile.compare(Queries(conn), loaded)
        by_command = {r["quota_id"]: (r["drift"], r["columns"]) for r in reconcile.drift_rows(Queries(conn))}
    assert by_command == by_sql


def test_a_missing_source_table_is_one_clear_line(dsn: str) -> None:
    with connect(dsn, autocommit=True) as conn, pytest.raises(reconcile.SourceUnreadable) as caught:
        reconcile.load_source(Queries(conn), reconcile.table_values(dsn, "titan.nope"))
    assert "titan.nope" in str(caught.value) and "it needs the columns" in str(caught.value)


# -- repair ---------------------------------------------------------------------------------------


def test_a_repair_goes_through_the_inbox_and_a_second_reconcile_finds_nothing(
    db: DictConnection, dsn: str, drifted: dict[str, Any]
) -> None:
    ids = drifted["ids"]
    repaired = run_and_repair(dsn, drifted["truth"])
    # ahead: never filed (an older truth); bad: the source breaks CSLA's rules
    assert repaired.not_repaired == 2
    assert repaired.filed + repaired.refiled == 6
    # each new row and each finished row taken over counted once as ingested (migration 018)
    assert repaired.filed > 0 and repaired.refiled > 0
    counted = db.execute(
        "SELECT sum(value) AS n FROM inbox.metric_counters WHERE metric = 'ingested' AND label = 'reconcile'"
    ).fetchone()
    assert counted == {"n": 6.0}
    sources = db.execute("SELECT DISTINCT source FROM inbox.quota_events WHERE status = 'pending'").fetchall()
    assert sources == [{"source": "reconcile"}]
    counts = drain(dsn)
    assert counts.applied == 6 and counts.dead == 0

    _, rows = run(dsn, drifted["truth"])
    assert {rows[i]["drift"] for i in rows} == {"differs", "invalid"}
    assert set(rows) == {ids["ahead"], ids["bad"]}
    edited = quota(db, ids["edited"])
    assert edited is not None and (edited["qty_t"], edited["direction"]) == (Decimal("100.000"), "BUY")
    assert str(quota(db, ids["missing"])["qty_t"]) == "12.5000"  # type: ignore[index]
    assert quota(db, ids["extra"]) is None and quota(db, ids["dropped"]) is None

    # each repair published its change: the hand edit is corrected at the same version
    messages = db.execute(
        "SELECT message FROM pgmq.q_quota_changes WHERE message ->> 'quota_id' = %s ORDER BY msg_id",
        [str(ids["edited"])],
    ).fetchall()
    last = messages[-1]["message"]
    assert (last["op"], last["version"], last["previous_version"]) == ("upsert", 7, 7)
    assert last["quota"]["qty_t"] == Decimal("100.000")


def test_a_repair_over_an_applied_event_keeps_what_it_replaced(
    db: DictConnection, dsn: str, drifted: dict[str, Any]
) -> None:
    ids = drifted["ids"]
    run_and_repair(dsn, drifted["truth"])
    logged = db.execute(
        "SELECT drift, versions, outcome, version, is_delete, csla, replaced FROM inbox.reconcile_repairs"
        " WHERE quota_id = %s",
        [ids["edited"]],
    ).fetchone()
    assert logged is not None
    assert (logged["drift"], logged["versions"], logged["outcome"]) == ("differs", "same", "refiled")
    assert logged["replaced"]["source"] == "http" and logged["replaced"]["status"] == "applied"
    assert logged["csla"]["qty_t"] == Decimal("90")
    ahead = db.execute(
        "SELECT outcome, note FROM inbox.reconcile_repairs WHERE quota_id = %s", [ids["ahead"]]
    ).fetchone()
    assert ahead is not None and ahead["outcome"] == "not_repaired" and "CSLA is ahead" in ahead["note"]


def test_a_repair_leaves_an_event_in_flight_to_the_workers(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 2, "INSERT", qty_t=Decimal("7"))])  # pending, not applied yet
    repaired = run_and_repair(dsn, [titan_event(quota_id, 2, qty_t=Decimal("7"))])
    assert (repaired.filed, repaired.in_flight) == (0, 1)
    row = db.execute(
        "SELECT source, status FROM inbox.quota_events WHERE quota_id = %s", [quota_id]
    ).fetchone()
    assert row == {"source": "http", "status": "pending"}


def test_a_repair_delete_blocked_by_call_offs_is_a_dead_letter(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    applied(db, dsn, [titan_event(quota_id, 3, "INSERT")])
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [quota_id])
    run_and_repair(dsn, [])
    drain(dsn)
    letters = dead_letters_for(db, quota_id)
    found = [(d["version"], d["is_delete"], d["error_class"]) for d in letters]
    assert found == [(3, True, "delete_blocked")]
    assert quota(db, quota_id) is not None
