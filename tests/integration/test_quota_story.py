"""`inbox quota show`: the story of one quota from every table, read by key on a large-ish inbox."""

from __future__ import annotations

import io
import json
import uuid
from decimal import Decimal
from typing import Any

from inbox import quota_story, reconcile
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import Queries
from inbox.ingest import stream_values
from tests.helpers import dead_letters_for, drain, ingest, titan_event, to_json
from tests.integration.test_query_plans import plans, wide_reads  # noqa: F401 (the fixture)

STORY_TABLES = {
    "quota",
    "quota_versions",
    "quota_events",
    "quota_processing_errors",
    "q_quota_changes",
    "a_quota_changes",
    "reconcile_repairs",
}


def a_story(db: DictConnection, dsn: str) -> uuid.UUID:
    """v1 (http) applied, v3 (kafka) applied, v2 late and stale, v4 dead, v5 dead and resolved,
    v6 pending; v1's outbox message archived by a consumer."""
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 1, "INSERT")])
    drain(dsn)
    ingest(db, [titan_event(quota_id, 3, qty_t=Decimal("300.500"))], source="kafka")
    drain(dsn)
    ingest(db, [titan_event(quota_id, 2), titan_event(quota_id, 4, direction="HOLD")])
    ingest(db, [titan_event(quota_id, 5, qty_t=Decimal("0"))])
    drain(dsn)
    resolved = [d["id"] for d in dead_letters_for(db, quota_id) if d["version"] == 5]
    db.execute("SELECT inbox.resolve_dead_letter(%s, 'Titan fixed it in v6')", resolved)
    first = db.execute(
        "SELECT msg_id FROM pgmq.q_quota_changes WHERE message ->> 'quota_id' = %s ORDER BY msg_id LIMIT 1",
        [str(quota_id)],
    ).fetchone()
    assert first is not None
    db.execute("SELECT pgmq.archive('quota_changes', %s::bigint)", [first["msg_id"]])
    ingest(db, [titan_event(quota_id, 6)])
    return quota_id


def test_the_story_tells_every_table_in_order(db: DictConnection, dsn: str) -> None:
    quota_id = a_story(db, dsn)
    story = quota_story.read_story(Queries(db), quota_id)

    assert story.quota is not None and story.quota["qty_t"] == Decimal("300.500")
    assert story.gate is not None
    assert (story.gate["version"], story.gate["previous_version"]) == (3, 1)
    assert [(e["version"], e["source"], e["status"]) for e in story.events] == [
        (1, "http", "applied"),
        (2, "http", "stale"),
        (3, "kafka", "applied"),
        (4, "http", "dead"),
        (5, "http", "dead"),
        (6, "http", "pending"),
    ]
    assert story.events[0]["op"] == "INSERT"
    letters = {d["version"]: d for d in story.dead_letters}
    assert letters[4]["resolved_at"] is None and letters[4]["error_class"] == "invalid"
    assert letters[5]["resolution_note"] == "Titan fixed it in v6"
    assert [(m["place"], m["message"]["version"]) for m in story.outbox] == [("archive", 1), ("queue", 3)]
    assert story.truncated == []

    verdict = quota_story.verdict(story)
    assert verdict.startswith("at v3 from kafka, applied ")
    assert "v2 (http) was stale" in verdict
    assert "v4 is a dead letter (invalid): direction must be BUY or SELL" in verdict
    assert "v5 is a dead letter" not in verdict  # resolved
    assert "v6 is pending" in verdict

    text = io.StringIO()
    quota_story.render(story, text)
    lines = text.getvalue().splitlines()
    assert lines[0] == f"quota {quota_id}: {verdict}"
    assert lines[1:4] == ["", "public.quota:", f"  {'quota_id':<18} {quota_id}"]
    gate = lines.index("version gate (inbox.quota_versions):")
    assert lines[gate + 1].startswith("  v3 from kafka, previous v1, applied "), lines[gate + 1]
    assert "resolved" in text.getvalue() and "Titan fixed it in v6" in text.getvalue()


def test_the_json_form_is_stable(db: DictConnection, dsn: str) -> None:
    quota_id = a_story(db, dsn)
    document = quota_story.read_story(Queries(db), quota_id, limit=2).as_json()
    assert list(document) == [
        "format",
        "quota_id",
        "verdict",
        "quota",
        "gate",
        "events",
        "dead_letters",
        "outbox",
        "repairs",
        "truncated",
    ]
    assert document["format"] == "inbox.quota_story/1"
    # newest kept when a list is cut, told oldest first
    assert [e["version"] for e in document["events"]] == [5, 6]
    assert document["truncated"] == ["events"]


def test_out_of_pipeline_edits_and_repairs_show_in_the_verdict(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 2, "INSERT")])
    drain(dsn)
    db.execute("DELETE FROM public.quota WHERE quota_id = %s", [quota_id])
    assert "yet the row is missing: deleted outside the pipeline" in quota_story.verdict(
        quota_story.read_story(Queries(db), quota_id)
    )
    with connect(dsn, autocommit=True) as conn:
        body = to_json(titan_event(quota_id, 3)).encode()
        reconcile.compare(
            Queries(conn), reconcile.load_source(Queries(conn), stream_values(io.BytesIO(body)))
        )
        reconcile.repair(Queries(conn))
    drain(dsn)
    story = quota_story.read_story(Queries(db), quota_id)
    assert [r["outcome"] for r in story.repairs] == ["filed"]
    assert story.events[-1]["source"] == "reconcile"
    verdict = quota_story.verdict(story)
    assert verdict.startswith("at v3 from reconcile") and "reconcile filed missing" in verdict


def test_an_unknown_quota_says_so(db: DictConnection) -> None:
    story = quota_story.read_story(Queries(db), uuid.uuid4())
    assert not story.known and quota_story.verdict(story).startswith("unknown quota")
    assert json.loads(json.dumps(story.as_json(), default=str))["quota"] is None


def test_every_read_is_by_key_on_a_large_inbox(
    db: DictConnection,
    dsn: str,
    plans: list[dict[str, Any]],  # noqa: F811
) -> None:
    """3,000 other quotas with events, outbox messages (half archived), dead letters and repairs:
    the story of one quota reads its own rows through indexes, never a table."""
    others = [uuid.uuid4() for _ in range(3000)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in others])
    ingest(db, [titan_event(q, 2, direction="HOLD") for q in others[:500]])
    drain(dsn)
    db.execute(
        "SELECT pgmq.archive('quota_changes', array_agg(msg_id)) FROM"
        " (SELECT msg_id FROM pgmq.q_quota_changes ORDER BY msg_id LIMIT 1500) m"
    )
    db.execute(
        "INSERT INTO inbox.reconcile_repairs (run_id, quota_id, drift, outcome)"
        " SELECT gen_random_uuid(), q, 'missing', 'not_repaired' FROM unnest(%s::uuid[]) q",
        [others],
    )
    quota_id = a_story(db, dsn)
    db.execute("ANALYZE")
    db.execute("SET auto_explain.log_analyze = on")
    plans.clear()

    # the queue (1,500 others' messages, then this quota's) has no index by quota (migration 020):
    # its newest `queue_scan` messages are read by msg_id, and the story says it searched no further
    story = quota_story.read_story(Queries(db), quota_id, queue_scan=1000)

    assert len(story.events) == 6 and len(story.outbox) == 2
    assert story.truncated == ["outbox_queue"]
    read = [entry for entry in plans if "quota_id" in entry.get("Query Text", "")]
    assert len(read) == 6, [entry.get("Query Text") for entry in plans]
    too_wide = wide_reads(read, STORY_TABLES - {"q_quota_changes"}, most=10)
    assert too_wide == [], too_wide
    queue = [(node, rows) for node, table, rows in wide_reads(plans, {"q_quota_changes"}, most=0)]
    assert queue and all(node != "Seq Scan" and rows <= 1001 for node, rows in queue), queue


def test_the_queue_is_searched_only_as_far_as_told_and_says_so(db: DictConnection, dsn: str) -> None:
    """A consumer far behind: this quota's unconsumed message is older than the queue's newest
    `queue_scan` messages. The archive is searched whole (by its index); the queue's older part is
    not, and both the JSON (`truncated`) and the text say that it was not."""
    quota_id = a_story(db, dsn)
    drain(dsn)  # v6: the queue holds its v3 and v6 messages
    ingest(db, [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(5)])
    drain(dsn)  # and after them 5 messages of other quotas

    whole = quota_story.read_story(Queries(db), quota_id, queue_scan=7)
    assert [(m["place"], m["message"]["version"]) for m in whole.outbox] == [
        ("archive", 1),
        ("queue", 3),
        ("queue", 6),
    ]
    assert whole.truncated == []

    bounded = quota_story.read_story(Queries(db), quota_id, queue_scan=6)
    assert [(m["place"], m["message"]["version"]) for m in bounded.outbox] == [("archive", 1), ("queue", 6)]
    assert bounded.truncated == ["outbox_queue"]
    out = io.StringIO()
    quota_story.render(bounded, out)
    assert "only the queue's newest unconsumed messages were searched" in out.getvalue()


def test_publishing_maintains_no_index_by_quota_on_the_queue(db: DictConnection) -> None:
    """Every message the apply publishes is one row in the queue's table: its primary key and pgmq's
    vt index only (migration 020 dropped the expression index of 013); the archive keeps its own."""
    indexes = {
        row["indexname"]
        for row in db.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'pgmq' AND tablename LIKE '%%quota_changes'"
        ).fetchall()
    }
    assert "q_quota_changes_quota_id_idx" not in indexes
    assert {"q_quota_changes_pkey", "q_quota_changes_vt_idx", "a_quota_changes_quota_id_idx"} <= indexes
