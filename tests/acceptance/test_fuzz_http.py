"""POST /events on the real server, fed hostile bodies by hypothesis: every answer is a clear 202 or
4xx, never a 5xx; a refused request writes nothing; and once the workers are done, every valid event
of the stream is applied and everything else is finished (applied, stale or a dead letter)."""

from __future__ import annotations

from collections import Counter

import httpx
from hypothesis import HealthCheck, given, settings

from inbox.db.connect import DictConnection
from tests.acceptance.conftest import StartServer
from tests.fuzz_strategies import EXAMPLES, Body, Item, bodies
from tests.helpers import dead_letters, drain, inbox_rows, quota, status_counts

BODY_LIMIT = 256 * 1024  # room for 100 000 nested brackets (400); two long tokens are too much (413)
ANSWERS = {202, 400, 413, 422}


def test_hostile_bodies_get_clear_answers_and_the_valid_events_are_applied(
    start_server: StartServer, dsn: str, db: DictConnection
) -> None:
    live = start_server(dsn, max_body_bytes=BODY_LIMIT)
    answered: Counter[int] = Counter()
    stored_intact: list[Item] = []

    with httpx.Client(base_url=live.base_url, timeout=60) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(bodies())
        def post(body: Body) -> None:
            before = inbox_rows(db)
            response = client.post("/events", content=body.raw, headers={"Content-Type": body.content_type})
            written = inbox_rows(db) - before

            answered[response.status_code] += 1
            assert response.status_code in ANSWERS, (response.status_code, response.text[:2000])
            if response.status_code != 202:
                assert written == 0  # all or nothing
                assert response.json()["error"]
                return
            result = response.json()
            assert written == result["accepted"]
            assert result["accepted"] + result["duplicates"] >= sum(item.intact for item in body.items)
            stored_intact.extend(item for item in body.items if item.intact)

        post()

    # The strategies reach every kind of answer, so each check above was put to work.
    assert set(answered) == ANSWERS, answered
    assert stored_intact
    drain(dsn)
    assert set(status_counts(db)) <= {"applied", "stale", "dead"}  # nothing stuck, nothing half-done
    assert {letter["error_class"] for letter in dead_letters(db)} <= {"invalid"}  # never a crash
    for item in stored_intact:
        row = quota(db, item.quota_id)
        assert row is not None and row["source_version"] == item.version, item
