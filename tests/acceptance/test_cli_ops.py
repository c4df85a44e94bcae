"""The operator commands, run as a subprocess against a real PostgreSQL: status, dlq, replay."""

from __future__ import annotations

import json
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from inbox.db.connect import DictConnection
from tests.acceptance.conftest import UNREACHABLE_DSN
from tests.helpers import dead_letters, drain, event_status, ingest, quota, titan_event, to_json
from tests.processes import one_line_error, run_inbox

REPO = Path(__file__).resolve().parents[2]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def dead(db: DictConnection, dsn: str) -> dict[str, Any]:
    """One applied quota, two invalid events (one superseded later) and a delete blocked by a call-off."""
    kept, invalid, blocked = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(kept, 1), titan_event(invalid, 1, direction="HOLD"), titan_event(blocked, 1)])
    ingest(db, [titan_event(kept, 2, qty_t=Decimal("-1"))])
    drain(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [blocked])
    ingest(db, [titan_event(blocked, 2, "DELETE"), titan_event(kept, 3)])
    drain(dsn)
    letters = {(d["quota_id"], d["version"]): d["id"] for d in dead_letters(db)}
    return {
        "kept": kept,
        "invalid": invalid,
        "blocked": blocked,
        "kept_v2": letters[(kept, 2)],
        "invalid_v1": letters[(invalid, 1)],
        "blocked_v2": letters[(blocked, 2)],
    }


# -- status -------------------------------------------------------------------------------------


def test_status_shows_states_lag_and_dead_letters_by_class(dsn: str, dead: dict[str, Any]) -> None:
    out = ok(run_inbox("status", database_url=dsn))

    assert "inbox.quota_events by state" in out
    assert "applied" in out
    assert "oldest pending" in out
    assert "delete_blocked" in out
    assert "invalid" in out
    assert "rejects" in out


def test_status_json(dsn: str, dead: dict[str, Any], db: DictConnection) -> None:
    ingest(db, [titan_event(uuid.uuid4(), 1)])  # one pending

    status = json.loads(ok(run_inbox("status", "--json", database_url=dsn)))

    states = {s["status"]: s["events"] for s in status["states"]}
    assert states == {"pending": 1, "processing": 0, "applied": 3, "stale": 0, "dead": 3}
    assert status["lag"]["pending"] == 1
    assert status["lag"]["oldest_pending_age"] >= 0
    assert status["lag"]["applied_5m"] == 3
    by_class = {c["error_class"]: c["dead_letters"] for c in status["dead_letters_by_class"]}
    assert by_class == {"invalid": 2, "delete_blocked": 1}
    assert status["rejects"] == {"total": 0, "kafka": 0, "http": 0, "last_hour": 0}


def test_status_against_an_unreachable_database_is_one_line_exit_2() -> None:
    line = one_line_error(run_inbox("status", database_url=UNREACHABLE_DSN), 2)

    assert line.startswith("inbox: error: database unreachable")


def test_status_against_an_unmigrated_database_says_so(empty_dsn: str) -> None:
    line = one_line_error(run_inbox("status", database_url=empty_dsn), 1)

    assert "inbox migrate" in line


# -- dlq list / show ----------------------------------------------------------------------------


def test_dlq_list_and_its_filters(dsn: str, dead: dict[str, Any]) -> None:
    def listed(*filters: str) -> set[str]:
        rows = json.loads(ok(run_inbox("dlq", "list", "--json", *filters, database_url=dsn)))
        return {r["id"] for r in rows}

    every = {str(dead[k]) for k in ("kept_v2", "invalid_v1", "blocked_v2")}
    assert listed() == every
    assert listed("--error-class", "delete_blocked") == {str(dead["blocked_v2"])}
    assert listed("--quota-id", str(dead["kept"])) == {str(dead["kept_v2"])}
    assert listed("--since", "1h") == every
    assert listed("--since", "2999-01-01T00:00:00") == set()

    table = ok(run_inbox("dlq", "list", database_url=dsn))
    assert str(dead["blocked_v2"]) in table
    assert "cannot delete quota" in table


def test_dlq_list_marks_superseded_letters(dsn: str, dead: dict[str, Any]) -> None:
    rows = json.loads(ok(run_inbox("dlq", "list", "--json", database_url=dsn)))

    superseded = {r["id"]: r["superseded"] for r in rows}
    assert superseded[str(dead["kept_v2"])] is True  # v3 applied since
    assert superseded[str(dead["invalid_v1"])] is False


def test_dlq_show(dsn: str, dead: dict[str, Any]) -> None:
    out = ok(run_inbox("dlq", "show", str(dead["blocked_v2"]), database_url=dsn))
    shown = json.loads(ok(run_inbox("dlq", "show", "--json", str(dead["blocked_v2"]), database_url=dsn)))

    assert "delete_blocked" in out
    assert '"eventType": "DELETE"' in out
    assert shown["error_class"] == "delete_blocked"
    assert shown["event_data"]["data"]["quota_id"] == str(dead["blocked"])


def test_dlq_show_unknown_id_is_one_line_exit_1(dsn: str) -> None:
    unknown = uuid.uuid4()

    line = one_line_error(run_inbox("dlq", "show", str(unknown), database_url=dsn), 1)

    assert line == f"inbox: error: no dead letter with id {unknown}"


# -- dlq replay / resolve -----------------------------------------------------------------------


def test_dlq_replay_by_id_goes_back_through_the_inbox(
    db: DictConnection, dsn: str, dead: dict[str, Any]
) -> None:
    db.execute("DELETE FROM public.call_off WHERE quota_id = %s", [dead["blocked"]])

    rows = json.loads(ok(run_inbox("dlq", "replay", "--json", str(dead["blocked_v2"]), database_url=dsn)))
    drain(dsn)

    assert [(r["id"], r["outcome"]) for r in rows] == [(str(dead["blocked_v2"]), "requeued")]
    assert event_status(db, dead["blocked"], 2) == "applied"
    assert quota(db, dead["blocked"]) is None
    assert str(dead["blocked_v2"]) not in {str(d["id"]) for d in dead_letters(db)}


def test_dlq_replay_of_an_unknown_id_replays_nothing(
    db: DictConnection, dsn: str, dead: dict[str, Any]
) -> None:
    result = run_inbox("dlq", "replay", str(dead["blocked_v2"]), str(uuid.uuid4()), database_url=dsn)

    line = one_line_error(result, 1)
    assert "nothing replayed" in line
    assert event_status(db, dead["blocked"], 2) == "dead"
    assert len(dead_letters(db)) == 3


def test_dlq_replay_all_matching(db: DictConnection, dsn: str, dead: dict[str, Any]) -> None:
    result = run_inbox("dlq", "replay", "--all-matching", "--error-class", "invalid", database_url=dsn)
    ok(result)
    drain(dsn)

    assert "replayed 2 dead letter(s)" in result.stdout
    # still invalid (validation comes before the version gate): each dies again as a new letter
    open_letters = {d["id"]: (d["quota_id"], d["error_class"]) for d in dead_letters(db)}
    assert sorted(open_letters.values()) == sorted(
        [(dead["kept"], "invalid"), (dead["invalid"], "invalid"), (dead["blocked"], "delete_blocked")]
    )
    assert dead["kept_v2"] not in open_letters
    assert dead["invalid_v1"] not in open_letters
    assert dead["blocked_v2"] in open_letters


def test_dlq_replay_needs_ids_or_all_matching(dsn: str) -> None:
    line = one_line_error(run_inbox("dlq", "replay", database_url=dsn), 1)

    assert "--all-matching" in line


def test_dlq_replay_all_matching_with_no_match_fails(dsn: str, dead: dict[str, Any]) -> None:
    result = run_inbox("dlq", "replay", "--all-matching", "--error-class", "apply_error", database_url=dsn)

    assert "no open dead letter matches" in one_line_error(result, 1)


def test_dlq_resolve_with_a_note(db: DictConnection, dsn: str, dead: dict[str, Any]) -> None:
    letter = str(dead["invalid_v1"])

    out = ok(run_inbox("dlq", "resolve", letter, "--note", "bad test data", database_url=dsn))
    again = run_inbox("dlq", "resolve", letter, "--note", "twice", database_url=dsn)
    unknown = run_inbox("dlq", "resolve", str(uuid.uuid4()), "--note", "x", database_url=dsn)

    assert out.startswith(f"resolved {letter}")
    row = db.execute(
        "SELECT resolution_note FROM public.quota_processing_errors WHERE id = %s", [letter]
    ).fetchone()
    assert row == {"resolution_note": "bad test data"}
    assert "already resolved" in one_line_error(again, 1)
    assert "no dead letter" in one_line_error(unknown, 1)


# -- replay FILE --------------------------------------------------------------------------------


def test_replay_ndjson_file_with_progress_and_summary(db: DictConnection, dsn: str, tmp_path: Path) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(to_json(titan_event(q, 1, qty_t=Decimal("1.250"))) for q in ids) + "\n")

    first = run_inbox("replay", str(path), "--batch-size", "2", database_url=dsn)
    second = run_inbox("replay", str(path), database_url=dsn)
    drain(dsn)

    assert ok(first).strip() == "replayed 5 events: 5 new, 0 already in the inbox (duplicates)"
    assert [line for line in first.stderr.splitlines() if line.startswith("replay:")] == [
        "replay: 2/5 events stored (40%)",
        "replay: 4/5 events stored (80%)",
        "replay: 5/5 events stored (100%)",
    ]
    assert ok(second).strip() == "replayed 5 events: 0 new, 5 already in the inbox (duplicates)"
    sources = {r["source"] for r in db.execute("SELECT source FROM inbox.quota_events")}
    assert sources == {"replay"}
    for q in ids:
        row = quota(db, q)
        assert row is not None
        assert str(row["qty_t"]) == "1.250"


def test_replay_json_array_from_stdin(db: DictConnection, dsn: str) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    body = "[\n" + ",\n".join(to_json(titan_event(q, 2, qty_t=Decimal("0.1"))) for q in ids) + "\n]"

    summary = json.loads(ok(run_inbox("replay", "-", "--json", database_url=dsn, stdin=body)))

    assert summary == {"events": 3, "accepted": 3, "duplicates": 0}
    stored = db.execute("SELECT payload->'data'->>'qty_t' AS qty FROM inbox.quota_events").fetchall()
    assert [r["qty"] for r in stored] == ["0.1", "0.1", "0.1"]


def test_replay_file_with_an_unkeyable_event_stores_nothing(
    db: DictConnection, dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    good = to_json(titan_event(uuid.uuid4(), 1))
    path.write_text("\n".join([good, good.replace('"version": 1', '"version": "one"'), good]))

    line = one_line_error(run_inbox("replay", str(path), database_url=dsn), 1)

    assert line.startswith("inbox: error: nothing replayed: event 1:")
    assert db.execute("SELECT count(*) AS n FROM inbox.quota_events").fetchone() == {"n": 0}


def test_replay_of_a_missing_file_is_one_line(dsn: str, tmp_path: Path) -> None:
    line = one_line_error(run_inbox("replay", str(tmp_path / "nope.ndjson"), database_url=dsn), 1)

    assert "cannot read" in line
