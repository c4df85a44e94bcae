"""Apply at ingest (issue 13, INBOX_HTTP_APPLY_AT_INGEST, on by default): the typed events of a POST
are applied in its transaction, before the 202, as their first attempt; what that apply cannot finish
is stored all the same and waits for the workers (sql/functions/inbox.ingest_typed_events.sql)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import psycopg
import pytest

from inbox.db.connect import DictConnection
from inbox.ingest import parse_texts
from inbox.store import store
from tests.acceptance.conftest import LiveServer, StartServer
from tests.helpers import count_of, dead_letters, drain, inbox_row, quota, titan_event, to_json


def _post(live: LiveServer, events: list[str]) -> httpx.Response:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        return client.post(
            "/events", content="\n".join(events), headers={"Content-Type": "application/x-ndjson"}
        )


def _outbox(db: DictConnection) -> int:
    return count_of(db, "SELECT count(*) AS n FROM pgmq.q_quota_changes")


def test_a_post_is_applied_before_its_answer(live: LiveServer, db: DictConnection) -> None:
    """No worker runs: the answer says every event is finished, and the quota, the gate's order, the
    statuses and the outbox show it, as a worker's apply would."""
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [
        titan_event(a, 1, "INSERT"),
        titan_event(a, 2, "UPDATE", qty_t=Decimal("12345678901234567890.123456789")),
        titan_event(b, 1, "INSERT"),
    ]

    response = _post(live, [to_json(e) for e in events])

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "duplicates": 0, "finished": 3}
    statuses = {(q, v): inbox_row(db, q, v) for q, v in [(a, 1), (a, 2), (b, 1)]}
    assert {k: (r["status"], r["attempts"]) for k, r in statuses.items()} == {
        (a, 1): ("stale", 1),  # superseded in the same batch
        (a, 2): ("applied", 1),
        (b, 1): ("applied", 1),
    }
    row = quota(db, a)
    assert row is not None
    assert (row["source_version"], row["qty_t"]) == (2, Decimal("12345678901234567890.123456789"))
    assert quota(db, b) is not None
    assert _outbox(db) == 2


def test_an_apply_that_fails_at_ingest_leaves_the_events_to_the_workers(
    live: LiveServer, db: DictConnection, dsn: str
) -> None:
    """A value the quota table refuses (a trigger raises) fails the apply at ingest: it is rolled back
    alone, the POST still stores every event (202, none finished) and the workers bisect as always:
    the neighbour is applied, the culprit alone is a dead letter."""
    db.execute(
        "CREATE FUNCTION public.refuse_lead() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path = pg_catalog, pg_temp AS $$"
        " BEGIN IF NEW.metal_code = 'PB' THEN RAISE EXCEPTION 'no lead here' USING ERRCODE = '22012'; END IF;"
        " RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_lead BEFORE INSERT ON public.quota"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_lead()"
    )
    good, poison = uuid.uuid4(), uuid.uuid4()

    response = _post(
        live,
        [to_json(titan_event(good, 1, "INSERT")), to_json(titan_event(poison, 1, "INSERT", metal_code="PB"))],
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0, "finished": 0}
    for q in (good, poison):
        row = inbox_row(db, q, 1)
        assert (row["status"], row["attempts"]) == ("pending", 0)
    assert (quota(db, good), _outbox(db)) == (None, 0)

    counts = drain(dsn)

    assert (counts.applied, counts.dead) == (1, 1)
    assert quota(db, good) is not None
    [letter] = dead_letters(db)
    assert (letter["quota_id"], letter["error_class"]) == (poison, "apply_error")
    assert "no lead here" in letter["error_message"]


def test_with_apply_at_ingest_off_every_event_waits_for_the_workers(
    start_server: StartServer, dsn: str, db: DictConnection
) -> None:
    live = start_server(dsn, http_apply_at_ingest=False)
    q = uuid.uuid4()

    response = _post(live, [to_json(titan_event(q, 1, "INSERT"))])

    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert inbox_row(db, q, 1)["status"] == "pending"
    assert drain(dsn).applied == 1


def test_an_apply_at_ingest_needs_at_least_one_attempt(db: DictConnection) -> None:
    """The attempts an apply at ingest may reach: fewer than one would make every event it stores a
    dead letter unseen by any worker, so the function refuses the call and stores nothing."""
    with pytest.raises(psycopg.errors.RaiseException, match="at least one attempt"):
        store(db, parse_texts([to_json(titan_event(uuid.uuid4(), 1, "INSERT"))]), "http", apply_attempts=0)
    db.rollback()
    assert count_of(db, "SELECT count(*) AS n FROM inbox.quota_events") == 0
