"""Issue 12 M8: stored strings from outside, printed by the operator commands, cannot drive the
terminal, forge rows or flood the screen: every one goes through inbox.text.printable."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from inbox.db.connect import DictConnection
from tests.acceptance.test_cli_ops import ok, run_inbox
from tests.helpers import dead_letters, drain, ingest, titan_event

ESCAPES = "\x1b[2J\x1b]0;owned\x07"
FORGED_ROW = "UPDATE\r\n  00000000-0000-0000-0000-000000000000  1  UPDATE  forged"
BIDI = "\u202eDELETE"
UNSAFE = ("\x1b", "\x07", "\r", "\u202e")


@pytest.fixture
def hostile_letters(db: DictConnection, dsn: str) -> dict[str, Any]:
    ids = {"escapes": uuid.uuid4(), "forged": uuid.uuid4(), "bidi": uuid.uuid4(), "huge": uuid.uuid4()}
    ingest(
        db,
        [
            titan_event(ids["escapes"], 1, ESCAPES),
            titan_event(ids["forged"], 1, FORGED_ROW),
            titan_event(ids["bidi"], 1, BIDI),
            titan_event(ids["huge"], 1, "A" * 2_000_000),
        ],
    )
    drain(dsn)
    letters = {d["quota_id"]: d["id"] for d in dead_letters(db)}
    assert set(letters) == set(ids.values())
    return {name: letters[quota_id] for name, quota_id in ids.items()}


def test_dlq_list_escapes_stored_strings_and_forges_no_row(dsn: str, hostile_letters: dict[str, Any]) -> None:
    out = ok(run_inbox("dlq", "list", database_url=dsn))

    assert not any(char in out for char in UNSAFE)
    lines = out.splitlines()
    assert len(lines) == 1 + 4  # the header and one line per dead letter: no forged row
    assert "\\x1b[2J" in out and "\\u202eDELETE" in out
    assert max(len(line) for line in lines) < 2_000


def test_dlq_show_escapes_stored_strings_and_cuts_a_huge_one(
    dsn: str, hostile_letters: dict[str, Any]
) -> None:
    for name in ("escapes", "forged", "bidi"):
        out = ok(run_inbox("dlq", "show", str(hostile_letters[name]), database_url=dsn))
        assert not any(char in out for char in UNSAFE), name

    huge = ok(run_inbox("dlq", "show", str(hostile_letters["huge"]), database_url=dsn))
    (event_type,) = [line for line in huge.splitlines() if line.startswith("event_type")]
    assert len(event_type) < 2_000 and "more characters]" in event_type
