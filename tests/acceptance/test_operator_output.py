"""Issue 12 M8: stored strings from outside, printed by the operator commands, cannot drive the
terminal, forge rows or flood the screen: every one goes through inbox.text.printable."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from inbox.db.connect import DictConnection
from tests.acceptance.test_cli_ops import ok
from tests.helpers import dead_letters, drain, ingest, titan_event
from tests.processes import run_inbox

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


def _titles(out: str) -> list[str]:
    """The lines at column 0: one title per dead letter; anything else there would be a forged one."""
    return [line for line in out.splitlines() if line and not line[0].isspace()]


def test_dlq_list_escapes_stored_strings_and_forges_no_row(dsn: str, hostile_letters: dict[str, Any]) -> None:
    out = ok(run_inbox("dlq", "list", database_url=dsn))

    assert not any(char in out for char in UNSAFE)
    assert len(_titles(out)) == 4  # one block per dead letter: no forged one
    assert "\\x1b[2J" in out and "\\u202eDELETE" in out
    assert len(out) < 20_000  # the 2 MB eventType is cut, saying how much
    assert "more characters]" in out


def test_dlq_show_escapes_stored_strings_and_cuts_a_huge_one(
    dsn: str, hostile_letters: dict[str, Any]
) -> None:
    for name in ("escapes", "forged", "bidi"):
        out = ok(run_inbox("dlq", "show", str(hostile_letters[name]), database_url=dsn))
        assert not any(char in out for char in UNSAFE), name
        assert len(_titles(out)) == 1, name

    huge = ok(run_inbox("dlq", "show", str(hostile_letters["huge"]), database_url=dsn))
    block, _, event = huge.partition("event (as stored):")
    assert len(block) < 5_000 and "more characters]" in block
    assert not any(char in event for char in UNSAFE)  # the event itself is shown in full, as JSON
