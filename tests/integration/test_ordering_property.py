"""Property: any shuffling and duplication of an event stream ends in each quota's highest version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox.apply.worker import Worker
from inbox.db.connect import DictConnection
from tests.helpers import QUOTA_AS_TEXT, drain, ingest, titan_event, worker_settings

RESET = """
TRUNCATE public.call_off, public.quota, inbox.quota_events, inbox.quota_versions,
         public.quota_processing_errors
"""


@dataclass
class Scenario:
    events: list[dict[str, Any]]  # the distinct events
    arrival: list[dict[str, Any]]  # shuffled, with duplicates
    steps: list[tuple[int, list[int]]] = field(default_factory=list)  # (ingest chunk, batch sizes to run)


@st.composite
def quota_history(draw: st.DrawFn, qid: uuid.UUID) -> list[dict[str, Any]]:
    versions = draw(st.lists(st.integers(0, 60), min_size=1, max_size=8, unique=True))
    events = []
    for version in versions:
        kind = draw(st.sampled_from(["INSERT", "UPDATE", "UPDATE", "DELETE"]))
        day = draw(st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)))
        period = draw(
            st.sampled_from(
                [day.isoformat(), f"{day.isoformat()}T23:30:00-05:00", f"{day.isoformat()}T00:15:00+14:00"]
            )
        )
        events.append(
            titan_event(
                qid,
                version,
                kind,
                counterparty_id=draw(st.sampled_from(["CP-1", "CP-2"])),
                direction=draw(st.sampled_from(["BUY", "SELL"])),
                period_month=period,
                qty_t=Decimal(draw(st.integers(1, 10**12))).scaleb(-3),
                tolerance_pct=draw(st.none() | st.integers(0, 10_000).map(lambda n: Decimal(n).scaleb(-2))),
                incoterm_code=draw(st.sampled_from([None, "", "CIF", "FOB"])),
                metal_code=draw(st.sampled_from(["CU", "AL", "ZN"])),
            )
        )
        # Debezium-style: a delete that carries the version of the last upsert ranks above it.
        if kind != "DELETE" and draw(st.integers(0, 9)) == 0:
            events.append(titan_event(qid, version, "DELETE"))
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    quota_ids = draw(st.lists(st.uuids(version=4), min_size=1, max_size=5, unique=True))
    events = [e for qid in quota_ids for e in draw(quota_history(qid))]
    duplicates = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    arrival = draw(st.permutations(events + duplicates))
    steps = []
    remaining = len(arrival)
    while remaining > 0:
        chunk = draw(st.integers(1, max(1, min(remaining, 12))))
        batches = draw(st.lists(st.integers(1, 8), max_size=3))
        steps.append((chunk, batches))
        remaining -= chunk
    return Scenario(events=events, arrival=arrival, steps=steps)


def highest(events: list[dict[str, Any]]) -> dict[uuid.UUID, dict[str, Any]]:
    best: dict[uuid.UUID, dict[str, Any]] = {}

    def rank(e: dict[str, Any]) -> tuple[int, bool]:
        return (e["metadata"]["version"], e["eventType"] == "DELETE")

    for event in events:
        qid = uuid.UUID(event["data"]["quota_id"])
        if qid not in best or rank(event) > rank(best[qid]):
            best[qid] = event
    return best


def expected_row(event: dict[str, Any]) -> dict[str, Any]:
    data = event["data"]
    year, month = int(data["period_month"][:4]), int(data["period_month"][5:7])
    return {
        "counterparty_id": data["counterparty_id"],
        "direction": data["direction"],
        "period_month": date(year, month, 1),
        "qty_t": str(data["qty_t"]),
        "tolerance_pct": None if data["tolerance_pct"] is None else str(data["tolerance_pct"]),
        "incoterm_code": data["incoterm_code"],
        "metal_code": data["metal_code"],
        "source_version": event["metadata"]["version"],
    }


@pytest.mark.timeout(300)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_any_arrival_order_ends_in_each_quotas_highest_version(
    db: DictConnection, dsn: str, scenario: Scenario
) -> None:
    db.execute(RESET)
    workers: dict[int, Worker] = {}
    try:
        position = 0
        for chunk, batch_sizes in scenario.steps:
            ingest(db, scenario.arrival[position : position + chunk])
            position += chunk
            for size in batch_sizes:
                if size not in workers:
                    workers[size] = Worker(dsn, worker_settings(batch_size=size), f"prop-{size}")
                workers[size].process_once()
        assert position == len(scenario.arrival)
    finally:
        for worker in workers.values():
            worker.close()
    drain(dsn, worker_settings(batch_size=5))

    expected = highest(scenario.events)
    rows = {
        r["quota_id"]: r
        for r in db.execute(f"SELECT quota_id, {QUOTA_AS_TEXT}, source_version FROM public.quota").fetchall()
    }
    want = {qid: expected_row(event) for qid, event in expected.items() if event["eventType"] != "DELETE"}
    got = {qid: {k: v for k, v in row.items() if k != "quota_id"} for qid, row in rows.items()}
    assert got == want

    gates = {
        r["quota_id"]: (r["version"], r["is_delete"])
        for r in db.execute("SELECT quota_id, version, is_delete FROM inbox.quota_versions").fetchall()
    }
    assert gates == {
        qid: (e["metadata"]["version"], e["eventType"] == "DELETE") for qid, e in expected.items()
    }
    statuses = db.execute("SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY status").fetchall()
    counts = {r["status"]: r["n"] for r in statuses}
    assert set(counts) <= {"applied", "stale"}, counts
    assert sum(counts.values()) == len(scenario.events)  # duplicates stored once
    errors = db.execute("SELECT count(*) AS n FROM public.quota_processing_errors").fetchone()
    assert errors == {"n": 0}
