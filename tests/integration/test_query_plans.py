"""Query-plan regressions of the hot path, read from the plans PostgreSQL really runs.

The claim and the apply run inside SQL functions, so plain EXPLAIN shows only a function scan.
auto_explain (log_nested_statements, sent to this session as notices) shows the plan of each
statement inside. Both tests set up the case that once went wrong: a backlog the statistics have
not seen yet, and a full batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from inbox.apply.prepare import typed_columns
from inbox.db.connect import DictConnection
from inbox.db.queries import ApplyCounts, Queries
from inbox.db.sqlfiles import query
from inbox.store import store_events
from tests.cdc_events import debezium_event
from tests.helpers import ingest, titan_event, to_json

BATCH = 500
# a statement of inbox.process_batch, as auto_explain logs it
APPLY = "unnest(p_quota_ids, p_versions, p_is_delete)"


@pytest.fixture
def plans(db: DictConnection) -> Iterator[list[dict[str, Any]]]:
    """The plans of the statements this session runs from now on (JSON, as auto_explain logs them)."""
    try:
        db.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:  # not installed, or not allowed for this role
        # The query-plan guarantee cannot be checked without it: say so loudly, never pass silently.
        pytest.fail(f"auto_explain is needed for the query-plan tests (INBOX_TEST_DSN server): {exc}")
    for setting in (
        "log_min_duration = 0",
        "log_nested_statements = on",
        "log_format = json",
        "log_level = notice",
    ):
        db.execute(f"SET auto_explain.{setting}")
    logged: list[dict[str, Any]] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        if "plan:" in message:
            logged.append(json.loads(message.split("plan:", 1)[1]))

    db.add_notice_handler(collect)
    yield logged
    db.execute("SET auto_explain.log_min_duration = -1")


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def plan_of(logged: list[dict[str, Any]], text: str) -> dict[str, Any]:
    found = [entry["Plan"] for entry in logged if text in entry.get("Query Text", "")]
    assert found, f"no plan logged for a statement containing {text!r}"
    plan: dict[str, Any] = found[0]
    return plan


def backlog(db: DictConnection, events: int) -> None:
    """A backlog the statistics have not seen: analyzed while empty, then filled."""
    db.execute("ANALYZE inbox.quota_events")
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(events)])


def claim_and_apply(db: DictConnection, limit: int) -> ApplyCounts:
    """Claim and apply in one transaction, as the worker does (its claim ledger row aside)."""
    with db.transaction():
        keys = Queries(db).claim_batch(limit)
        return Queries(db).process_batch(ledger=None, keys=keys, max_attempts=5)


def test_claim_reads_the_due_index_in_order_and_stops_at_the_limit(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    backlog(db, 3 * BATCH)
    with db.transaction():
        assert len(Queries(db).claim_batch(BATCH)) == BATCH

    claim = plan_of(plans, "FOR UPDATE SKIP LOCKED")
    kinds = [node["Node Type"] for node in nodes(claim)]
    scans = [node for node in nodes(claim) if node.get("Index Name") == "quota_events_due_idx"]
    assert [node["Node Type"] for node in scans] == ["Index Scan"], kinds
    assert "Limit" in kinds
    # a bitmap scan reads every pending row and a sort orders them all, to keep BATCH of them
    assert "Bitmap Heap Scan" not in kinds
    assert "Sort" not in kinds


def test_apply_joins_its_steps_in_linear_time(db: DictConnection, plans: list[dict[str, Any]]) -> None:
    backlog(db, BATCH)
    assert claim_and_apply(db, BATCH).applied == BATCH

    apply = plan_of(plans, APPLY)
    quadratic = [
        node
        for node in nodes(apply)
        if node["Node Type"] == "Nested Loop" and node["Plans"][1]["Node Type"] == "CTE Scan"
    ]
    # a nested loop over a CTE scan compares every row with every row: 250,000 times per join at 500
    assert quadratic == [], [
        (n["Plans"][0].get("CTE Name"), n["Plans"][1].get("CTE Name")) for n in quadratic
    ]


HOT_TABLES = {"quota_events", "quota_versions", "quota", "call_off", "quota_processing_errors"}


def wide_reads(logged: list[dict[str, Any]], tables: set[str], most: int) -> list[tuple[str, str, float]]:
    """Scans of these tables (from plans logged with log_analyze) that are seq scans or return more
    than `most` rows over all their loops."""
    return [
        (node["Node Type"], node["Relation Name"], node["Actual Rows"] * node["Actual Loops"])
        for entry in logged
        for node in nodes(entry["Plan"])
        if node.get("Relation Name") in tables
        and (node["Node Type"] == "Seq Scan" or node["Actual Rows"] * node["Actual Loops"] > most)
    ]


def test_a_small_batch_reads_only_its_own_rows(db: DictConnection, plans: list[dict[str, Any]]) -> None:
    """Claim and apply, 10 events. The planner takes the input of process_batch for 100 rows,
    whatever its size. Against tables of a few thousand rows it found a hash join over a seq scan
    cheaper than 100 index lookups, so each small batch (the light-load case) read the whole inbox
    to mark its few events."""
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3000)])
    db.execute("ANALYZE")
    db.execute("SET auto_explain.log_analyze = on")
    plans.clear()  # the claim's and the apply's statements only
    result = claim_and_apply(db, 10)
    assert result.applied == 10 and result.published == 10

    assert plan_of(plans, APPLY) is not None
    # each table is read by key: at most one row per event of the batch, never a whole table
    too_wide = wide_reads(plans, HOT_TABLES, most=10)
    assert too_wide == [], too_wide


def test_the_counter_trigger_stays_linear_after_a_small_first_batch(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    """A PL/pgSQL trigger plans its statement once per session, for the first batch it sees. The
    status counter joins the old and new transition tables: planned for 2 rows, that was a nested
    loop, which then compared 500 x 500 rows on every full batch (19 ms instead of 1 ms)."""
    backlog(db, BATCH + 2)
    for limit in (2, BATCH):  # a session whose first batch is small, as a worker's often is
        assert claim_and_apply(db, limit).applied == limit

    counting = [entry["Plan"] for entry in plans if "new_rows" in entry.get("Query Text", "")]
    assert counting, "no plan of the counter triggers was logged"
    quadratic = [
        node
        for plan in counting
        for node in nodes(plan)
        if node["Node Type"] == "Nested Loop"
        and all(child["Node Type"] == "Named Tuplestore Scan" for child in nodes(node["Plans"][1]))
    ]
    assert quadratic == []


def test_a_retention_batch_reads_only_the_rows_it_deletes(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    """The first version joined the picked keys back to the inbox: a hash join over a seq scan of
    the whole table for every batch, 400-600 ms per 5,000 rows in the soak, growing with the table."""
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3000)])
    db.execute(
        "UPDATE inbox.quota_events SET status = 'applied', applied_at = now(),"
        " received_at = now() - interval '1 hour'"
    )
    db.execute("ANALYZE inbox.quota_events")
    db.execute("SET auto_explain.log_analyze = on")
    plans.clear()
    purged = db.execute(query("purge_finished_events"), {"older_than": timedelta(minutes=1), "limit": 100})
    row = purged.fetchone()
    purge_plans = list(plans)
    assert row is not None and row["purged"] == 100
    assert db.execute("SELECT count(*) AS n FROM inbox.quota_events").fetchone() == {"n": 2900}

    too_wide = wide_reads(purge_plans, {"quota_events"}, most=100)
    assert too_wide == [], too_wide


def test_the_apply_looks_its_events_up_by_primary_key_however_few_are_pending(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    """process_batch locks its events by primary key. Its lookup also asks for status = 'pending',
    the predicate of quota_events_due_idx: when the statistics said few rows were pending, the
    generic plan (the one a pooled session keeps) read that whole partial index once per event,
    dead entries and all, filtering on the key: the HTTP path fell to a quarter of its rate in the
    benchmark once the index held the entries of every event applied since the last vacuum."""
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3000)])
    db.execute("UPDATE inbox.quota_events SET status = 'applied', applied_at = now()")
    db.execute("ANALYZE inbox.quota_events")  # the statistics: nothing pending
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(10)])
    db.execute("SET plan_cache_mode = force_generic_plan")
    plans.clear()
    assert claim_and_apply(db, 10).applied == 10

    lookups = [
        node
        for entry in plans
        if APPLY in entry.get("Query Text", "")
        for node in nodes(entry["Plan"])
        if node.get("Relation Name") == "quota_events" and node["Node Type"] != "ModifyTable"
    ]
    assert lookups, "no read of quota_events in the apply's plans"
    found = [(n["Node Type"], n.get("Index Name"), n.get("Index Cond")) for n in lookups]
    assert all(name == "quota_events_pkey" and "quota_id" in (cond or "") for _, name, cond in found), found


def test_the_typing_of_untyped_events_reads_them_by_primary_key(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    """The worker types events stored without typed columns (sink, replay, upgrade): it reads their
    payloads and stores their columns by key. The same trap as the apply's lookup, with
    quota_events_untyped_idx: a filter on status and typed beside the key let a generic plan made
    when few rows were untyped read that whole index per key."""
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(3000)])
    db.execute("UPDATE inbox.quota_events SET status = 'applied', applied_at = now()")
    db.execute("ANALYZE inbox.quota_events")  # the statistics: nothing untyped, nothing pending
    fresh = [uuid.uuid4() for _ in range(10)]
    ingest(db, [titan_event(quota_id, 1, "INSERT") for quota_id in fresh])
    db.execute("UPDATE inbox.quota_events SET typed = false WHERE quota_id = ANY(%s)", [fresh])
    db.execute("SET plan_cache_mode = force_generic_plan")
    plans.clear()
    with db.transaction():
        queries = Queries(db)
        keys = queries.untyped_keys(BATCH)
        assert len(keys) == 10
        rows = [dict(row) for row in queries.untyped_payloads(keys=keys, max_bytes=1 << 20)]
        assert len(rows) == 10 and all(row["payload"] for row in rows)
        queries.type_events([typed_columns(row) for row in rows])
    assert db.execute("SELECT count(*) AS n FROM inbox.quota_events WHERE NOT typed").fetchone() == {"n": 0}

    lookups = [
        (node["Node Type"], node.get("Index Name"), node.get("Index Cond"))
        for entry in plans
        if "jsonb_to_recordset" in entry.get("Query Text", "")
        for node in nodes(entry["Plan"])
        if node.get("Relation Name") == "quota_events" and node["Node Type"] != "ModifyTable"
    ]
    assert len(lookups) >= 2, lookups  # the payloads' read and the typing's update
    # An index is read by the key, never walked whole with the key as a filter (a seq scan of a
    # table this small is the planner's fair choice: it knows the table's size, not a stale share).
    walks = [
        (kind, name) for kind, name, cond in lookups if name is not None and "quota_id" not in (cond or "")
    ]
    assert walks == [], lookups
    assert ("Index Scan", "quota_events_pkey") in [(kind, name) for kind, name, _ in lookups], lookups


def test_an_ingest_with_source_lsns_reads_only_its_own_open_dead_letters(
    db: DictConnection, plans: list[dict[str, Any]]
) -> None:
    """A change that reuses a stored key (a higher source LSN) resolves that key's open dead letter.
    As a step of the store's statement this was planned for the whole batch: with 20,000 open dead
    letters every ingest of events carrying LSNs (Debezium, the sink) read all of them (a hash join
    over a seq scan), also when no key was reused. Now: no read without a reused key, and a reused
    key's letter is looked up by its key."""

    def delivery(ids: list[uuid.UUID], lsn: int) -> list[str]:
        events = []
        for quota_id in ids:
            event = debezium_event(quota_id, 1, "u")
            event["source"]["lsn"] = lsn
            events.append(to_json(event))
        return events

    first = [uuid.uuid4() for _ in range(BATCH)]
    store_events(db, delivery(first, 100), "kafka")
    reused = first[:5]
    db.execute(
        "INSERT INTO public.quota_processing_errors (event_data, error_message, quota_id, version,"
        " is_delete, error_class)"
        " SELECT '{}', 'poison', coalesce(k, gen_random_uuid()), 1, false, 'apply_error'"
        " FROM generate_series(1, 20000) g"
        " LEFT JOIN unnest(%s::uuid[]) WITH ORDINALITY AS r(k, n) ON r.n = g",
        [reused],
    )
    db.execute("ANALYZE public.quota_processing_errors")
    db.execute("SET auto_explain.log_analyze = on")

    plans.clear()
    store_events(db, delivery([uuid.uuid4() for _ in range(BATCH)], 150), "kafka")  # no key reused
    assert wide_reads(plans, {"quota_processing_errors"}, most=0) == []

    plans.clear()
    store_events(db, delivery(reused + [uuid.uuid4() for _ in range(BATCH - 5)], 200), "kafka")
    too_wide = wide_reads(plans, {"quota_processing_errors"}, most=5)
    assert too_wide == [], too_wide
    resolved = db.execute(
        "SELECT count(*) AS n FROM public.quota_processing_errors"
        " WHERE resolution_note LIKE 'superseded by a newer change%%(source LSN 200)'"
    ).fetchone()
    assert resolved == {"n": 5}  # the step ran, for the reused keys only
