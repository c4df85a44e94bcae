"""What the operator screens say: status exact (or how old its estimate is), dead letters that fit
a terminal and keep stored values, replay reporting where each event ended. CLI as a subprocess."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from inbox.apply.pool import WorkerPool
from inbox.db.connect import DictConnection, connect
from inbox.settings import Settings
from tests.acceptance.test_cli_ops import dead, ok
from tests.helpers import dead_letters, drain, event_status, ingest, titan_event
from tests.processes import one_line_error, run_inbox

__all__ = ["dead"]  # the fixture, shared with test_cli_ops

WIDTH = 80
LONG_MESSAGE = "the quantity does not fit the contract: " + "qty_t exceeds the tolerance band; " * 5


def fits(text: str, width: int = WIDTH) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide


# -- status -------------------------------------------------------------------------------------


def test_status_counts_exactly_after_a_burst_the_statistics_have_not_seen(
    dsn: str, db: DictConnection
) -> None:
    """The 006 view estimates the finished states of a table over 8 MB from statistics that lag a
    burst (the issue saw ~885 against 50,009); status counts them, and the counters agree."""
    db.execute("ALTER TABLE inbox.quota_events SET (autovacuum_enabled = false)")
    db.execute(
        "INSERT INTO inbox.quota_events (quota_id, version, is_delete, payload, source, status, applied_at) "
        "SELECT gen_random_uuid(), 1, false, jsonb_build_object('pad', repeat('x', 400)), 'replay', "
        "'applied', now() FROM generate_series(1, 20000)"
    )
    # counted as the inbox's writers count what they store (no trigger counts inserts: migration 018)
    db.execute("SELECT inbox.add_counters(ARRAY['ingested'], ARRAY['replay'], ARRAY[20000]::float8[])")
    size = db.execute("SELECT pg_relation_size('inbox.quota_events') AS bytes").fetchone()
    assert size is not None and size["bytes"] > 8 * 1024 * 1024  # where v_status estimates

    status = json.loads(ok(run_inbox("status", "--json", database_url=dsn)))
    states = {s["status"]: (s["events"], s["exact"]) for s in status["states"]}
    assert states["applied"] == (20000, True)
    assert states["dead"] == (0, True)
    processed = {p["metric"]: p["since_install"] for p in status["processed"]}
    assert processed["ingested"] == 20000

    shown = ok(run_inbox("status", database_url=dsn))
    assert "20000" in shown
    assert "~" not in shown.split("processed")[0]


def test_status_gives_no_drain_estimate_without_a_worker(dsn: str, dead: dict[str, Any]) -> None:
    ingest_pending = run_inbox("replay", "-", database_url=dsn, stdin=json.dumps(_event(uuid.uuid4())))
    ok(ingest_pending)

    alone = json.loads(ok(run_inbox("status", "--json", database_url=dsn)))
    assert alone["lag"]["pending"] == 1 and alone["lag"]["applied_5m"] == 3
    assert alone["lag"]["workers_connected"] is False
    assert alone["lag"]["drain_eta_seconds"] is None
    assert "no worker connected" in ok(run_inbox("status", database_url=dsn))

    # A session named as a worker's (quota-inbox host:pid:n) is what tells that a worker runs.
    with connect(dsn, autocommit=True, application_name="quota-inbox test:1:0"):
        working = json.loads(ok(run_inbox("status", "--json", database_url=dsn)))
    assert working["lag"]["workers_connected"] is True
    assert working["lag"]["drain_eta_seconds"] is not None


def _event(quota_id: uuid.UUID, version: int = 1, **data: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(json.dumps(titan_event(quota_id, version, **data), default=str))
    return event


# -- dead letters -------------------------------------------------------------------------------


@pytest.fixture
def long_letter(db: DictConnection, dsn: str) -> dict[str, Any]:
    """A dead letter with a long message and an event whose numbers have trailing zeros."""
    q = uuid.uuid4()
    ingest(db, [titan_event(q, 1, direction="HOLD", qty_t=Decimal("1.250"))])
    drain(dsn)
    [letter] = [d for d in dead_letters(db) if d["quota_id"] == q]
    db.execute(
        "UPDATE public.quota_processing_errors SET error_message = %s WHERE id = %s",
        [LONG_MESSAGE, letter["id"]],
    )
    return {"id": letter["id"], "quota_id": q}


def test_dlq_list_fits_the_terminal_and_wraps_the_whole_message(
    dsn: str, long_letter: dict[str, Any]
) -> None:
    out = ok(run_inbox("dlq", "list", database_url=dsn, COLUMNS=str(WIDTH)))

    fits(out)
    assert str(long_letter["id"]) in out
    assert " ".join(LONG_MESSAGE.split()) in " ".join(out.split())  # wrapped, not cut


def test_dlq_list_include_resolved_shows_when_and_the_note(dsn: str, long_letter: dict[str, Any]) -> None:
    ok(
        run_inbox(
            "dlq", "resolve", str(long_letter["id"]), "--note", "fixed upstream in TIT-42", database_url=dsn
        )
    )

    open_only = ok(run_inbox("dlq", "list", database_url=dsn, COLUMNS=str(WIDTH)))
    everything = ok(run_inbox("dlq", "list", "--include-resolved", database_url=dsn, COLUMNS=str(WIDTH)))

    assert str(long_letter["id"]) not in open_only
    [title] = [line for line in everything.splitlines() if line.startswith(str(long_letter["id"]))]
    assert title.endswith("resolved")
    assert "fixed upstream in TIT-42" in everything
    rows = json.loads(ok(run_inbox("dlq", "list", "--include-resolved", "--json", database_url=dsn)))
    [row] = [r for r in rows if r["id"] == str(long_letter["id"])]
    assert row["resolution_note"] == "fixed upstream in TIT-42"
    assert row["resolved_at"] is not None


def test_dlq_show_is_one_block_with_the_event_as_stored(dsn: str, long_letter: dict[str, Any]) -> None:
    out = ok(run_inbox("dlq", "show", str(long_letter["id"]), database_url=dsn, COLUMNS=str(WIDTH)))

    fits(out)
    assert out.splitlines()[0].startswith(str(long_letter["id"]))
    assert '"qty_t": 1.250' in out  # the number as stored: not "1.250", not 1.25

    raw = ok(run_inbox("dlq", "show", "--json", str(long_letter["id"]), database_url=dsn))
    assert '"qty_t": 1.250' in raw
    assert json.loads(raw, parse_float=Decimal)["event_data"]["data"]["qty_t"] == Decimal("1.250")


@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "replay", "--all-matching"]])
def test_an_unknown_error_class_is_refused_with_the_known_ones(
    dsn: str, dead: dict[str, Any], command: list[str]
) -> None:
    line = one_line_error(run_inbox(*command, "--error-class", "invlaid", database_url=dsn), 1)

    assert "unknown --error-class 'invlaid'" in line
    for known in ("invalid", "delete_blocked", "apply_error", "retries_exhausted"):
        assert known in line


def test_replay_all_matching_dry_run_lists_and_changes_nothing(
    db: DictConnection, dsn: str, dead: dict[str, Any]
) -> None:
    before = dead_letters(db)

    out = ok(
        run_inbox(
            "dlq", "replay", "--all-matching", "--error-class", "invalid", "--dry-run", database_url=dsn
        )
    )

    assert "dry run: would replay 2 dead letter(s); nothing changed" in out
    assert str(dead["invalid_v1"]) in out and str(dead["kept_v2"]) in out
    assert str(dead["blocked_v2"]) not in out
    assert dead_letters(db) == before
    assert event_status(db, dead["invalid"], 1) == "dead"


def test_replay_reports_where_each_event_ended_even_dead_again_under_a_new_id(
    db: DictConnection, dsn: str, dead: dict[str, Any]
) -> None:
    db.execute("DELETE FROM public.call_off WHERE quota_id = %s", [dead["blocked"]])
    ids = [str(dead["invalid_v1"]), str(dead["blocked_v2"])]

    with WorkerPool(dsn, Settings(poll_seconds=0.2), concurrency=1):
        rows = json.loads(ok(run_inbox("dlq", "replay", "--json", *ids, database_url=dsn)))

    ended = {r["id"]: r for r in rows}
    again = ended[str(dead["invalid_v1"])]
    assert again["inbox_status"] == "dead"
    assert again["dead_letter_id"] not in (None, str(dead["invalid_v1"]))
    assert again["ended"] == f"dead again: {again['dead_letter_id']}"
    assert {str(d["id"]) for d in dead_letters(db) if d["quota_id"] == dead["invalid"]} == {
        again["dead_letter_id"]
    }
    assert ended[str(dead["blocked_v2"])]["ended"] == "applied"


def test_replay_without_a_worker_says_the_events_wait(dsn: str, dead: dict[str, Any]) -> None:
    out = ok(run_inbox("dlq", "replay", str(dead["invalid_v1"]), database_url=dsn, COLUMNS=str(WIDTH)))

    fits(out)
    assert "pending: no worker connected" in out
    assert "replayed 1 dead letter(s): 1 requeued" in out
