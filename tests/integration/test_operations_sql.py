"""Migration 006 against a real PostgreSQL: the DBA views, dead-letter replay and resolve,
retention, alerts, the database-kept counters, and the per-event dead-letter log lines."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from inbox.apply import jobs
from inbox.apply.jobs import DatabaseWatch, check_alerts, purge_finished
from inbox.apply.worker import reap_abandoned_claims
from inbox.db.connect import DictConnection, connect
from inbox.settings import Settings
from tests.acceptance.conftest import UNREACHABLE_DSN
from tests.helpers import dead_letters, dead_letters_for, drain, event_status, ingest, quota, titan_event


def _one(conn: DictConnection, sql: str, params: Any = None) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row


def counters(conn: DictConnection) -> dict[tuple[str, str], float]:
    rows = conn.execute("SELECT metric, label, sum(value) AS v FROM inbox.metric_counters GROUP BY 1, 2")
    return {(r["metric"], r["label"]): float(r["v"]) for r in rows}


def blocked_delete(db: DictConnection, dsn: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Quota v1 with a call-off, then DELETE v2: a delete_blocked dead letter. -> (quota, letter)"""
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 1, "INSERT")])
    drain(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [quota_id])
    ingest(db, [titan_event(quota_id, 2, "DELETE")])
    drain(dsn)
    [letter] = dead_letters(db)
    assert letter["error_class"] == "delete_blocked"
    return quota_id, letter["id"]


def replay(conn: DictConnection, ids: list[uuid.UUID], note: str = "replayed") -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM inbox.replay_dead_letters(%s::uuid[], %s)", [ids, note]).fetchall()


# -- views --------------------------------------------------------------------------------------


def test_v_status_counts_each_state(db: DictConnection, dsn: str) -> None:
    kept, invalid = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(kept, 2), titan_event(kept, 1), titan_event(invalid, 1, direction="HOLD")])
    drain(dsn)
    ingest(db, [titan_event(uuid.uuid4(), 1)])  # left pending

    rows = {r["status"]: (r["events"], r["exact"]) for r in db.execute("SELECT * FROM inbox.v_status")}

    assert rows == {
        "pending": (1, True),
        "processing": (0, True),
        "applied": (1, True),
        "stale": (1, True),
        "dead": (1, True),
    }


def test_finished_states_are_estimated_from_statistics_on_a_big_table(db: DictConnection, dsn: str) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1) for _ in range(300)])
    drain(dsn)
    stale_quota = uuid.uuid4()
    ingest(db, [titan_event(stale_quota, 1000)])
    ingest(db, [titan_event(stale_quota, v) for v in range(1, 101)])
    drain(dsn)
    db.execute("ANALYZE inbox.quota_events")

    # p_count_below 0: treat the table as big, as the view does past 8 MiB
    rows = {r["status"]: r for r in db.execute("SELECT * FROM inbox.status_counts(0)")}

    assert not rows["applied"]["exact"]
    assert abs(rows["applied"]["events"] - 301) <= 30
    assert abs(rows["stale"]["events"] - 100) <= 10
    assert (rows["pending"]["events"], rows["pending"]["exact"]) == (0, True)


def test_v_lag_shows_backlog_age_flow_and_retries(db: DictConnection, dsn: str) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1) for _ in range(3)])
    drain(dsn)
    waiting = [uuid.uuid4() for _ in range(4)]
    ingest(db, [titan_event(q, 1) for q in waiting])
    db.execute(
        "UPDATE inbox.quota_events SET received_at = now() - interval '90 seconds' WHERE status = 'pending'"
    )
    db.execute(
        "UPDATE inbox.quota_events SET attempts = 1, next_attempt_at = now() + interval '1 hour' "
        "WHERE quota_id = %s",
        [waiting[0]],
    )

    lag = _one(db, "SELECT * FROM inbox.v_lag")

    assert (lag["pending"], lag["due"], lag["waiting_retry"], lag["processing"]) == (4, 3, 1, 0)
    assert lag["oldest_pending_age"] >= timedelta(seconds=90)
    assert lag["received_5m"] == 7
    assert lag["applied_5m"] == 3
    assert lag["drain_eta_seconds"] is not None


def test_v_dead_letters_tells_whether_a_replay_would_be_stale(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 2, qty_t=Decimal("-1"))])
    drain(dsn)
    before = _one(db, "SELECT * FROM inbox.v_dead_letters WHERE quota_id = %s", [quota_id])
    ingest(db, [titan_event(quota_id, 3)])
    drain(dsn)
    after = _one(db, "SELECT * FROM inbox.v_dead_letters WHERE quota_id = %s", [quota_id])

    assert (before["event_type"], before["error_class"], before["inbox_status"]) == (
        "UPDATE",
        "invalid",
        "dead",
    )
    assert (before["superseded"], before["applied_version"]) == (False, None)
    assert (after["superseded"], after["applied_version"]) == (True, 3)


# -- replay and resolve -------------------------------------------------------------------------


def test_replay_requeues_the_event_and_resolves_the_letter_in_one_transaction(
    db: DictConnection, dsn: str
) -> None:
    quota_id, letter = blocked_delete(db, dsn)

    with connect(dsn) as other:  # not autocommit: the replay stays uncommitted until we say so
        [row] = replay(other, [letter], "call-off cancelled")
        assert row["outcome"] == "requeued"
        # nothing is visible outside the transaction yet
        assert event_status(db, quota_id, 2) == "dead"
        assert len(dead_letters(db)) == 1
        other.commit()

    event = _one(db, "SELECT * FROM inbox.quota_events WHERE quota_id = %s AND version = 2", [quota_id])
    assert (event["status"], event["attempts"], event["source"], event["last_error"]) == (
        "pending",
        0,
        "replay",
        None,
    )
    closed = _one(db, "SELECT * FROM public.quota_processing_errors WHERE id = %s", [letter])
    assert closed["resolved_at"] is not None
    assert closed["resolution_note"] == "call-off cancelled"


def test_a_rolled_back_replay_changes_nothing(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)

    with connect(dsn) as other:
        replay(other, [letter])
        other.rollback()

    assert event_status(db, quota_id, 2) == "dead"
    assert [d["id"] for d in dead_letters(db)] == [letter]


def test_replayed_delete_applies_once_its_blocker_is_gone(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)
    db.execute("DELETE FROM public.call_off WHERE quota_id = %s", [quota_id])

    replay(db, [letter])
    counts = drain(dsn)

    assert counts.applied == 1
    assert quota(db, quota_id) is None


def test_version_gate_still_applies_after_replay(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)
    db.execute("DELETE FROM public.call_off WHERE quota_id = %s", [quota_id])
    ingest(db, [titan_event(quota_id, 3, qty_t=Decimal("33"))])
    drain(dsn)

    replay(db, [letter])
    counts = drain(dsn)

    assert (counts.applied, counts.stale) == (0, 1)
    assert event_status(db, quota_id, 2) == "stale"
    row = quota(db, quota_id)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (3, Decimal("33"))


def test_replay_reinserts_an_event_whose_inbox_row_is_gone(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)
    db.execute("DELETE FROM public.call_off WHERE quota_id = %s", [quota_id])
    db.execute("DELETE FROM inbox.quota_events WHERE quota_id = %s AND version = 2", [quota_id])

    [row] = replay(db, [letter])
    drain(dsn)

    assert row["outcome"] == "reinserted"
    assert event_status(db, quota_id, 2) == "applied"
    assert quota(db, quota_id) is None


def test_replay_leaves_an_event_already_back_in_the_inbox_alone(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)
    # redelivered and applied meanwhile (as after retention removed the dead row)
    db.execute(
        "UPDATE inbox.quota_events SET status = 'applied', applied_at = now() "
        "WHERE quota_id = %s AND version = 2",
        [quota_id],
    )

    [row] = replay(db, [letter])

    assert row["outcome"] == "in_inbox"
    assert event_status(db, quota_id, 2) == "applied"
    assert dead_letters(db) == []


def test_replay_skips_resolved_and_unknown_ids(db: DictConnection, dsn: str) -> None:
    _, letter = blocked_delete(db, dsn)
    assert len(replay(db, [letter])) == 1

    assert replay(db, [letter, uuid.uuid4()]) == []


def test_resolve_closes_a_dead_letter_once_with_its_note(db: DictConnection, dsn: str) -> None:
    quota_id, letter = blocked_delete(db, dsn)

    first = _one(db, "SELECT inbox.resolve_dead_letter(%s, 'quota kept on purpose') AS at", [letter])
    second = _one(db, "SELECT inbox.resolve_dead_letter(%s, 'again') AS at", [letter])

    assert first["at"] is not None
    assert second["at"] is None
    closed = _one(db, "SELECT * FROM public.quota_processing_errors WHERE id = %s", [letter])
    assert closed["resolution_note"] == "quota kept on purpose"
    assert event_status(db, quota_id, 2) == "dead"  # resolving does not replay


# -- retention ----------------------------------------------------------------------------------


def _finished_rows_aged(db: DictConnection, dsn: str) -> dict[str, uuid.UUID]:
    """13 purgeable old rows (10 applied, 2 stale, 1 dead with a resolved letter), plus an old dead
    row whose letter is open, an old pending row and a young applied row, which must all stay."""
    ingest(db, [titan_event(uuid.uuid4(), 1) for _ in range(10)])
    stale_quota, open_dead, closed_dead = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(stale_quota, 9)])
    ingest(db, [titan_event(stale_quota, 1), titan_event(stale_quota, 2)])
    ingest(db, [titan_event(open_dead, 1, direction="X"), titan_event(closed_dead, 1, direction="X")])
    drain(dsn)
    db.execute(
        "SELECT inbox.resolve_dead_letter(id, 'fixed upstream') FROM public.quota_processing_errors "
        "WHERE quota_id = %s",
        [closed_dead],
    )
    pending = uuid.uuid4()
    ingest(db, [titan_event(pending, 1)])
    db.execute("UPDATE inbox.quota_events SET received_at = now() - interval '8 days'")
    db.execute("UPDATE inbox.quota_events SET received_at = now() WHERE quota_id = %s", [stale_quota])
    db.execute(
        "UPDATE inbox.quota_events SET received_at = now() - interval '8 days' "
        "WHERE quota_id = %s AND version IN (1, 2)",
        [stale_quota],
    )
    return {"young": stale_quota, "open_dead": open_dead, "pending": pending}


def test_retention_deletes_old_finished_rows_in_bounded_batches(db: DictConnection, dsn: str) -> None:
    kept = _finished_rows_aged(db, dsn)

    batches = [_one(db, "SELECT inbox.purge_finished_events('7 days', 4) AS n")["n"] for _ in range(5)]

    assert batches == [4, 4, 4, 1, 0]
    left = db.execute("SELECT quota_id, version, status FROM inbox.quota_events ORDER BY status").fetchall()
    assert {(r["quota_id"], r["status"]) for r in left} == {
        (kept["young"], "applied"),
        (kept["open_dead"], "dead"),
        (kept["pending"], "pending"),
    }


def test_retention_job_loops_until_done(db: DictConnection, dsn: str) -> None:
    _finished_rows_aged(db, dsn)

    purged = purge_finished(dsn, Settings(retention=timedelta(days=7), retention_batch_size=3), 60)

    assert purged == 13


def test_retention_job_gives_the_inbox_three_quarters_of_its_interval(
    db: DictConnection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the interval capped retention at half its speed: in the soak the finished rows piled up
    faster than it deleted them. The history still gets a batch after it."""
    _finished_rows_aged(db, dsn)
    budgets: dict[str, float] = {}

    def recorded(real: Any, name: str) -> Any:
        def call(dsn: str, settings: Settings, budget_seconds: float) -> Any:
            budgets[name] = budget_seconds
            return real(dsn, settings, budget_seconds)

        return call

    monkeypatch.setattr(jobs, "purge_finished", recorded(jobs.purge_finished, "finished"))
    monkeypatch.setattr(jobs, "purge_history", recorded(jobs.purge_history, "history"))
    settings = Settings(retention=timedelta(days=7), retention_batch_size=3, retention_interval_seconds=40)

    jobs.retention_job(dsn, settings)

    assert budgets["finished"] == 30
    assert 0 < budgets["history"] <= 40  # what the inbox's purge left of the interval
    assert _one(db, "SELECT count(*) AS n FROM inbox.quota_events")["n"] == 3  # young, open dead, pending


def test_inbox_and_claim_ledger_vacuum_unthrottled(db: DictConnection) -> None:
    """Migration 017: a throttled autovacuum fell behind the inbox's churn and its files grew."""
    options = {
        r["relname"]: set(r["reloptions"])
        for r in db.execute(
            "SELECT relname, reloptions FROM pg_class"
            " WHERE oid IN ('inbox.quota_events'::regclass, 'inbox.claim_ledger'::regclass)"
        )
    }
    assert "autovacuum_vacuum_cost_delay=0" in options["quota_events"]
    assert {"autovacuum_vacuum_cost_delay=0", "autovacuum_vacuum_threshold=100"} <= options["claim_ledger"]


def test_retention_skips_rows_another_transaction_holds(db: DictConnection, dsn: str) -> None:
    _finished_rows_aged(db, dsn)
    with connect(dsn) as holder:
        holder.execute(
            "SELECT 1 FROM inbox.quota_events "
            "WHERE status = 'applied' AND received_at < now() - interval '7 days' "
            "ORDER BY received_at LIMIT 5 FOR UPDATE"
        )
        # would fail with lock_timeout if the purge waited for the held rows
        db.execute("SET lock_timeout = '2s'")
        purged = _one(db, "SELECT inbox.purge_finished_events('7 days', 100) AS n")["n"]
        holder.rollback()

    assert purged == 8


# -- alerts -------------------------------------------------------------------------------------


def alerts(conn: DictConnection) -> list[dict[str, Any]]:
    return [r["message"] for r in conn.execute("SELECT message FROM pgmq.q_inbox_alerts ORDER BY msg_id")]


def test_dead_letter_rate_over_threshold_is_published_once_per_window(
    db: DictConnection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(alert_dead_letter_threshold=3, alert_window_seconds=300)
    ingest(db, [titan_event(uuid.uuid4(), 1, direction="X") for _ in range(2)])
    drain(dsn)
    assert check_alerts(dsn, settings, DatabaseWatch()) is None  # 2 < 3

    ingest(db, [titan_event(uuid.uuid4(), 1, "DELETE", metal_code=None)])
    ingest(db, [titan_event(uuid.uuid4(), 1, qty_t=Decimal("0"))])
    drain(dsn)
    with caplog.at_level(logging.ERROR, logger="inbox.apply.jobs"):
        first = check_alerts(dsn, settings, DatabaseWatch())
        second = check_alerts(dsn, settings, DatabaseWatch())

    assert first is not None
    assert second is None
    [message] = alerts(db)
    assert message["alert"] == "dead_letter_rate"
    assert message["dead_letters"] == 3
    assert message["by_class"] == {"invalid": 3}
    [record] = [r for r in caplog.records if r.getMessage() == "dead-letter rate over threshold"]
    assert record.levelno == logging.ERROR


def test_database_unreachable_is_logged_at_once_and_published_when_it_is_back(
    db: DictConnection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    watch = DatabaseWatch()
    settings = Settings()
    with caplog.at_level(logging.INFO, logger="inbox.apply.jobs"):
        check_alerts(UNREACHABLE_DSN, settings, watch)
        assert watch.down_since is not None
        assert alerts(db) == []
        check_alerts(dsn, settings, watch)

    assert watch.down_since is None
    [message] = alerts(db)
    assert message["alert"] == "database_unreachable"
    assert message["seconds"] >= 0
    assert "Connection refused" in message["error"]
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["database unreachable"] == logging.ERROR
    assert levels["database reachable again"] == logging.INFO


# -- counters -----------------------------------------------------------------------------------


def test_counters_follow_every_outcome(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(
        db, [titan_event(quota_id, 2), titan_event(quota_id, 1), titan_event(uuid.uuid4(), 1, direction="X")]
    )
    ingest(db, [titan_event(quota_id, 2)])  # a duplicate
    drain(dsn)

    seen = counters(db)

    assert seen[("ingested", "http")] == 3
    assert seen[("duplicate", "")] == 1
    assert seen[("applied", "")] == 1
    assert seen[("stale", "")] == 1
    assert seen[("dead", "invalid")] == 1
    buckets = {label: v for (metric, label), v in seen.items() if metric == "apply_latency_bucket"}
    assert sum(buckets.values()) == 1
    assert seen[("apply_latency_sum", "")] >= 0


def test_the_mark_fires_no_trigger_and_each_batch_counts_once(db: DictConnection, dsn: str) -> None:
    """Migration 016: no trigger on the inbox's updates (it captured every marked row twice); the
    worker's batch writes its own counts."""
    triggers = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'inbox.quota_events'::regclass AND NOT tgisinternal"
        " AND tgtype & 16 <> 0"  # TRIGGER_TYPE_UPDATE
    ).fetchall()
    assert triggers == []
    ingest(db, [titan_event(uuid.uuid4(), 1) for _ in range(5)])
    drain(dsn)
    seen = counters(db)
    assert (seen[("applied", "")], seen.get(("stale", ""))) == (5, None)
    assert sum(v for (metric, _), v in seen.items() if metric == "apply_latency_bucket") == 5


def test_no_trigger_counts_the_inbox_and_each_writer_counts_its_own_new_rows(
    db: DictConnection, dsn: str
) -> None:
    """Migration 018: no trigger on the inbox at all (016 took the one on updates, 018 the one on
    inserts); the ingest and a replay count what they stored, a new row and a finished row pending
    again alike, and nothing else (reconcile's repair: tests/integration/test_reconcile.py)."""
    triggers = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'inbox.quota_events'::regclass AND NOT tgisinternal"
    ).fetchall()
    assert triggers == []
    gone, gone_letter = blocked_delete(db, dsn)  # 2 events ingested
    invalid = uuid.uuid4()
    ingest(db, [titan_event(invalid, 1, direction="X"), titan_event(uuid.uuid4(), 1)])  # 2 more
    drain(dsn)
    [dead] = dead_letters_for(db, invalid)
    assert counters(db)[("ingested", "http")] == 4

    ingest(db, [titan_event(uuid.uuid4(), 1) for _ in range(3)] + [titan_event(gone, 1)])  # 3 new, 1 dup
    seen = counters(db)
    assert (seen[("ingested", "http")], seen[("duplicate", "")]) == (7, 1)

    db.execute("DELETE FROM inbox.quota_events WHERE quota_id = %s AND version = 2", [gone])
    outcomes = sorted(r["outcome"] for r in replay(db, [gone_letter, dead["id"]]))
    assert outcomes == ["reinserted", "requeued"]
    assert replay(db, [gone_letter]) == []  # resolved: nothing stored, nothing counted
    seen = counters(db)
    assert (seen[("ingested", "http")], seen[("ingested", "replay")]) == (7, 2)


def test_retries_and_replays_are_counted(db: DictConnection, dsn: str) -> None:
    _, letter = blocked_delete(db, dsn)
    other = uuid.uuid4()
    ingest(db, [titan_event(other, 1)])
    abandon_claim(db, other)
    reap_abandoned_claims(db, Settings())
    replay(db, [letter])

    seen = counters(db)

    assert seen[("retried", "")] == 1
    assert seen[("ingested", "replay")] == 1
    assert seen[("dead", "delete_blocked")] == 1


def abandon_claim(db: DictConnection, quota_id: uuid.UUID) -> None:
    """The claim ledger row of a worker that died holding this quota's events: its session token is
    held by no session (no advisory lock on it)."""
    db.execute(
        "INSERT INTO inbox.claim_ledger (worker, backend_pid, session_token, quota_ids, versions, is_delete)"
        " SELECT 'gone', 0, 42, array_agg(quota_id), array_agg(version), array_agg(is_delete)"
        " FROM inbox.quota_events WHERE quota_id = %s",
        [quota_id],
    )


def test_folding_keeps_the_totals_and_shrinks_the_table(db: DictConnection) -> None:
    db.execute(
        "INSERT INTO inbox.metric_counters (metric, label, minute, backend, value) VALUES "
        "('applied', '', date_trunc('minute', now() - interval '2 days'), 101, 5), "
        "('applied', '', date_trunc('minute', now() - interval '3 days'), 102, 7), "
        "('applied', '', date_trunc('minute', now() - interval '10 minutes'), 103, 11), "
        "('applied', '', date_trunc('minute', now() - interval '10 minutes'), 104, 13)"
    )

    folded = _one(db, "SELECT inbox.fold_counters() AS n")["n"]

    assert folded == 4
    rows = db.execute(
        "SELECT minute = '-infinity' AS history, backend, value FROM inbox.metric_counters "
        "WHERE metric = 'applied' ORDER BY value"
    ).fetchall()
    assert [(r["history"], r["backend"], r["value"]) for r in rows] == [(True, 0, 12.0), (False, 0, 24.0)]


# -- per-event log lines ------------------------------------------------------------------------


def _dead_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    fields = ("quota_id", "version", "event_type", "attempt", "error_class")
    return [
        {f: getattr(r, f) for f in fields} for r in caplog.records if r.getMessage() == "event dead-lettered"
    ]


def test_each_dead_event_gets_one_log_line_without_its_payload(
    db: DictConnection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [uuid.uuid4(), uuid.uuid4()]
    ingest(db, [titan_event(bad[0], 4, direction="X", counterparty_id="SECRET-CP")])
    ingest(db, [titan_event(bad[1], 7, qty_t=Decimal("-2")), titan_event(uuid.uuid4(), 1)])

    with caplog.at_level(logging.INFO, logger="inbox.apply.worker"):
        drain(dsn)

    lines = sorted(_dead_lines(caplog), key=lambda line: line["version"])
    assert lines == [
        {
            "quota_id": str(bad[0]),
            "version": 4,
            "event_type": "UPDATE",
            "attempt": 1,
            "error_class": "invalid",
        },
        {
            "quota_id": str(bad[1]),
            "version": 7,
            "event_type": "UPDATE",
            "attempt": 1,
            "error_class": "invalid",
        },
    ]
    assert "SECRET-CP" not in json.dumps([r.__dict__ for r in caplog.records], default=str)


def test_events_exhausted_by_the_reaper_get_their_log_line(
    db: DictConnection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 3, "INSERT")])
    db.execute("UPDATE inbox.quota_events SET attempts = 1")  # one attempt spent already
    abandon_claim(db, quota_id)

    with caplog.at_level(logging.INFO, logger="inbox.apply.worker"):
        counts = reap_abandoned_claims(db, Settings(max_attempts=2))

    assert counts.dead == 1
    assert _dead_lines(caplog) == [
        {
            "quota_id": str(quota_id),
            "version": 3,
            "event_type": "INSERT",
            "attempt": 2,
            "error_class": "retries_exhausted",
        }
    ]
