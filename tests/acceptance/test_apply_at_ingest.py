"""Apply at ingest (issue 13, INBOX_HTTP_APPLY_AT_INGEST, on by default): the typed events of a POST
are applied in its transaction, before the 202, as their first attempt; what that apply cannot finish
is stored all the same and waits for the workers (sql/functions/inbox.ingest_typed_events.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from inbox.db.connect import DictConnection, connect
from inbox.ingest import parse_texts
from inbox.store import store
from tests.acceptance.conftest import LiveServer, StartServer
from tests.conftest import migrated_database
from tests.helpers import (
    apply_at_ingest_mix,
    count_of,
    dead_letters,
    drain,
    inbox_row,
    quota,
    status_counts,
    titan_event,
    to_json,
)


def _post(live: LiveServer, events: list[str]) -> httpx.Response:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        return client.post(
            "/events", content="\n".join(events), headers={"Content-Type": "application/x-ndjson"}
        )


# a trigger on the quota table that refuses lead: an apply that fails in the database
_REFUSE_LEAD = [
    "CREATE FUNCTION public.refuse_lead() RETURNS trigger LANGUAGE plpgsql"
    " SET search_path = pg_catalog, pg_temp AS $$"
    " BEGIN IF NEW.metal_code = 'PB' THEN RAISE EXCEPTION 'no lead here' USING ERRCODE = '22012'; END IF;"
    " RETURN NEW; END $$",
    "CREATE TRIGGER refuse_lead BEFORE INSERT ON public.quota"
    " FOR EACH ROW EXECUTE FUNCTION public.refuse_lead()",
]


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
    for statement in _REFUSE_LEAD:
        db.execute(statement)
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


@pytest.fixture
def other_dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A second freshly migrated database, for the same events with the apply at ingest off."""
    with migrated_database(pg_admin_dsn, template_db, "other") as made:
        yield made


def _end_state(dsn: str) -> dict[str, Any]:
    """Everything an apply leaves, but clock times: each event's row, the quota table, the gate, the
    dead letters, the outbox messages of each quota in order, the counters (the latency histogram by
    how many it observed)."""
    with connect(dsn, autocommit=True) as conn:

        def rows(statement: str) -> list[tuple[Any, ...]]:
            return [tuple(r.values()) for r in conn.execute(statement).fetchall()]

        return {
            "events": rows(
                "SELECT quota_id, version, is_delete, status, attempts, last_error,"
                " applied_at IS NOT NULL AS a, applied_at >= received_at AS b, typed, errors, error_class,"
                " source, payload"
                " FROM inbox.quota_events ORDER BY 1, 2, 3"
            ),
            "quota": rows(
                "SELECT quota_id, counterparty_id, direction, period_month, qty_t::text AS q,"
                " tolerance_pct::text AS t, incoterm_code, metal_code, source_version, source_updated_at"
                " FROM public.quota ORDER BY 1"
            ),
            "gate": rows(
                "SELECT quota_id, version, is_delete, previous_version, source_lsn, source"
                " FROM inbox.quota_versions ORDER BY 1"
            ),
            "dead_letters": rows(
                "SELECT quota_id, version, is_delete, error_class, error_message, retry_count, event_data,"
                " resolved_at IS NULL AS open FROM public.quota_processing_errors ORDER BY 1, 2, 3"
            ),
            "outbox": rows(
                "SELECT message->>'quota_id' AS q, array_agg(message - 'applied_at' #- '{quota,created_at}'"
                " #- '{quota,updated_at}' ORDER BY msg_id) AS m"
                " FROM pgmq.q_quota_changes GROUP BY 1 ORDER BY 1"
            ),
            "counters": rows(
                "SELECT metric, CASE WHEN metric LIKE 'apply_latency%' THEN '' ELSE label END AS label,"
                " sum(value) FILTER (WHERE metric <> 'apply_latency_sum') AS n"
                " FROM inbox.metric_counters GROUP BY 1, 2 ORDER BY 1, 2"
            ),
        }


def test_the_apply_at_ingest_ends_where_the_workers_end(
    start_server: StartServer, dsn: str, other_dsn: str
) -> None:
    """The same POSTs with the apply at ingest on, then a drain, and with it off, then a drain, end in
    the same state: new, superseded, stale, duplicate, applied and refused deletes, an invalid event
    and a value the quota table refuses (migration 023 stores the typed rows of an apply at ingest as
    applied and marks only the others: every outcome must still be the worker's)."""
    a, b, c, d, e, f, g, h, p = (uuid.UUID(int=n) for n in range(1, 10))
    before, mix, invalid, refused = apply_at_ingest_mix()
    answers = {}
    for name, target, apply_at_ingest in (("on", dsn, True), ("off", other_dsn, False)):
        with connect(target, autocommit=True) as conn:
            for statement in _REFUSE_LEAD:
                conn.execute(statement)
        live = start_server(target, http_apply_at_ingest=apply_at_ingest)
        assert _post(live, [to_json(x) for x in before]).status_code == 202
        drain(target)
        with connect(target, autocommit=True) as conn:
            conn.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [b])
        answers[name] = [_post(live, [to_json(x) for x in batch]).json() for batch in (mix, invalid, refused)]
        if apply_at_ingest:
            with connect(target, autocommit=True) as conn:
                # the mix finished at ingest; the invalid event and the refused POST wait
                assert status_counts(conn) == {"applied": 8, "stale": 3, "dead": 1, "pending": 3}
        drain(target)

    assert answers["on"] == [
        {"accepted": 8, "duplicates": 1, "finished": 8},
        {"accepted": 1, "duplicates": 0, "finished": 0},
        {"accepted": 2, "duplicates": 0, "finished": 0},
    ]
    assert answers["off"] == [
        {"accepted": 8, "duplicates": 1},
        {"accepted": 1, "duplicates": 0},
        {"accepted": 2, "duplicates": 0},
    ]
    on, off = _end_state(dsn), _end_state(other_dsn)
    assert on == off
    # and it is the state the rules call for
    assert {(r[0], r[1], r[2]): (r[3], r[4]) for r in on["events"]} == {
        (a, 3, False): ("applied", 1),
        (a, 2, False): ("stale", 1),
        (b, 1, False): ("applied", 1),
        (b, 1, True): ("dead", 1),
        (c, 1, False): ("applied", 1),
        (c, 1, True): ("applied", 1),
        (d, 1, False): ("stale", 1),
        (d, 2, False): ("applied", 1),
        (e, 1, False): ("applied", 1),
        (e, 1, True): ("stale", 1),
        (e, 2, False): ("applied", 1),
        (f, 1, False): ("dead", 1),
        (g, 1, False): ("applied", 1),
        (h, 1, False): ("applied", 1),
        (p, 1, False): ("dead", 1),
    }
    assert [r[:4] for r in on["events"] if r[6] != (r[3] == "applied") or r[7] is False] == []
    assert [(r[0], r[3]) for r in on["dead_letters"]] == [
        (b, "delete_blocked"),
        (f, "invalid"),
        (p, "apply_error"),
    ]
    stale_delete = next(r for r in on["events"] if (r[0], r[2]) == (e, True))
    assert "in the same batch took effect instead" in stale_delete[5]
