"""POST /events, GET /health and GET /ready against the real uvicorn server and a real PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inbox.commands.status import print_status, read_status
from inbox.db.connect import DictConnection, connect
from inbox.db.queries import UNTYPED_HINT, Queries
from tests.acceptance.conftest import UNREACHABLE_DSN, LiveServer, StartServer
from tests.cdc_events import debezium_event
from tests.helpers import dead_letters, drain, event_status, inbox_rows, quota, titan_event, to_json


def _post(
    live: LiveServer, body: bytes | str, content_type: str = "application/json", **headers: str
) -> httpx.Response:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        return client.post("/events", content=raw, headers={"Content-Type": content_type, **headers})


def _events(n: int) -> list[dict[str, Any]]:
    return [titan_event(uuid.uuid4(), 1, "INSERT") for _ in range(n)]


def _problems(response: httpx.Response) -> dict[int | None, str]:
    body = response.json()
    assert body["error"] == "nothing was stored"
    return {p["index"]: p["reason"] for p in body["problems"]}


# -- accepted shapes --------------------------------------------------------------------------------


def test_one_object_is_accepted_and_stored(live: LiveServer, db: DictConnection) -> None:
    event = titan_event(uuid.uuid4(), 7, "INSERT")

    response = _post(live, to_json(event))

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "finished": 1}
    row = db.execute("SELECT version, source, status, payload FROM inbox.quota_events").fetchone()
    assert row is not None
    # applied before the answer (INBOX_HTTP_APPLY_AT_INGEST, on by default): no worker runs here
    assert (row["version"], row["source"], row["status"]) == (7, "http", "applied")
    assert row["payload"]["data"]["quota_id"] == event["data"]["quota_id"]


def test_json_array_is_accepted(live: LiveServer, db: DictConnection) -> None:
    events = _events(3)

    response = _post(live, "[" + ",".join(to_json(e) for e in events) + "]")

    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "duplicates": 0, "finished": 3}
    assert inbox_rows(db) == 3


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/json"])  # text/plain: 415
def test_ndjson_is_accepted_with_or_without_its_content_type(
    live: LiveServer, db: DictConnection, content_type: str
) -> None:
    events = _events(4)
    body = "\n".join(to_json(e) for e in events) + "\n"

    response = _post(live, body, content_type)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 4, "duplicates": 0, "finished": 4}
    stored = {str(r["quota_id"]) for r in db.execute("SELECT quota_id FROM inbox.quota_events")}
    assert stored == {e["data"]["quota_id"] for e in events}


def test_ndjson_with_blank_lines_and_crlf(live: LiveServer, db: DictConnection) -> None:
    events = _events(2)
    body = "\r\n" + to_json(events[0]) + "\r\n\r\n" + to_json(events[1]) + "\r\n"

    response = _post(live, body, "application/x-ndjson")

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 0, "finished": 2}
    assert inbox_rows(db) == 2


def test_pretty_printed_object_spanning_lines_is_one_event(live: LiveServer, db: DictConnection) -> None:
    event = titan_event(uuid.uuid4(), 1, "INSERT", qty_t="5.5", tolerance_pct="0")
    response = _post(live, json.dumps(event, indent=2))

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "finished": 1}
    assert inbox_rows(db) == 1


def test_redelivery_counts_duplicates(live: LiveServer, db: DictConnection) -> None:
    old = _events(2)
    new = _events(1)
    assert _post(live, "\n".join(to_json(e) for e in old)).json() == {
        "accepted": 2,
        "duplicates": 0,
        "finished": 2,
    }

    again = _post(live, "[" + ",".join(to_json(e) for e in [*old, *new]) + "]")

    assert again.status_code == 202
    assert again.json() == {"accepted": 1, "duplicates": 2, "finished": 1}
    single = _post(live, to_json(new[0]))
    assert single.json() == {"accepted": 0, "duplicates": 1, "finished": 0}
    assert inbox_rows(db) == 3


def test_duplicate_inside_one_request_is_counted_once(live: LiveServer, db: DictConnection) -> None:
    event = titan_event(uuid.uuid4(), 1, "INSERT")

    response = _post(live, "[" + to_json(event) + "," + to_json(event) + "]")

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 1, "finished": 1}
    assert inbox_rows(db) == 1


def test_delete_and_upsert_at_the_same_version_are_both_kept(live: LiveServer, db: DictConnection) -> None:
    quota_id = uuid.uuid4()
    upsert = titan_event(quota_id, 4, "UPDATE")
    delete = titan_event(quota_id, 4, "DELETE")

    response = _post(live, to_json(upsert) + "\n" + to_json(delete))

    assert response.json() == {"accepted": 2, "duplicates": 0, "finished": 2}
    rows = db.execute("SELECT is_delete FROM inbox.quota_events ORDER BY is_delete").fetchall()
    assert [r["is_delete"] for r in rows] == [False, True]


# -- atomic refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b'{"eventType": "INSERT", "data": {',
        b"[1, 2,]",
        b"",
        b"   \n  ",
    ],
    ids=["text", "truncated", "trailing-comma", "empty", "blank"],
)
def test_body_that_is_not_json_is_400_and_nothing_is_stored(
    live: LiveServer, db: DictConnection, body: bytes
) -> None:
    good = to_json(titan_event(uuid.uuid4(), 1, "INSERT"))

    response = _post(live, body)
    combined = _post(live, good.encode() + b"\n" + body + b"\nnot json either")

    assert response.status_code == 400, response.text
    assert None in _problems(response)
    if body.strip():
        assert combined.status_code == 400
        assert set(_problems(combined)) >= {2}
    assert inbox_rows(db) == 0


@pytest.mark.parametrize(
    "bad_number", ["NaN", "Infinity", "-Infinity", "1e999999999", "1e-99999"], ids=lambda s: s
)
def test_non_finite_or_unstorable_numbers_are_400(
    live: LiveServer, db: DictConnection, bad_number: str
) -> None:
    event = to_json(titan_event(uuid.uuid4(), 1, "INSERT", qty_t=Decimal(1)))
    bad = event.replace('"qty_t": 1', f'"qty_t": {bad_number}')
    assert bad != event
    fine = to_json(titan_event(uuid.uuid4(), 1, "INSERT"))

    response = _post(live, "[" + fine + "," + bad + "]")

    assert response.status_code == 400, response.text
    assert inbox_rows(db) == 0


def test_invalid_utf8_is_400(live: LiveServer, db: DictConnection) -> None:
    event = to_json(titan_event(uuid.uuid4(), 1, "INSERT", counterparty_id="CP-X"))
    body = event.encode("utf-8").replace(b"CP-X", b"CP-\xff\xfe")

    response = _post(live, body)

    assert response.status_code == 400
    assert "UTF-8" in _problems(response)[None]
    assert inbox_rows(db) == 0


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"], ids=["nul", "lone-surrogate"])
def test_strings_postgresql_cannot_hold_are_refused_whole(
    live: LiveServer, db: DictConnection, escape: str
) -> None:
    fine = to_json(titan_event(uuid.uuid4(), 1, "INSERT"))
    bad = to_json(titan_event(uuid.uuid4(), 1, "INSERT", counterparty_id="CP-@@")).replace("@@", escape)

    response = _post(live, "[" + fine + "," + bad + "]")

    assert response.status_code in (400, 422), response.text
    assert response.json()["error"].lower().count("nothing") == 1
    assert inbox_rows(db) == 0


def test_unkeyable_items_are_named_and_the_rest_stored(live: LiveServer, db: DictConnection) -> None:
    def with_version(version: Any) -> dict[str, Any]:
        event = titan_event(uuid.uuid4(), 1, "INSERT")
        event["metadata"]["version"] = version
        return event

    no_quota_id = titan_event(uuid.uuid4(), 1, "INSERT")
    del no_quota_id["data"]["quota_id"]
    items = [
        to_json(titan_event(uuid.uuid4(), 1, "INSERT")),  # 0: fine
        to_json(no_quota_id),  # 1
        to_json(titan_event("not-a-uuid", 1, "INSERT")),  # 2
        to_json(with_version(Decimal("1.5"))),  # 3
        to_json(with_version("3")),  # 4
        to_json(with_version(True)),  # 5
        to_json(titan_event(uuid.uuid4(), 2, "UPDATE")),  # 6: fine
        '"just a string"',  # 7
        to_json(with_version(-1)),  # 8
    ]

    response = _post(live, "[" + ",".join(items) + "]")

    # one bad event never refuses the rest of a request (issue 11)
    assert response.status_code == 202, response.text
    problems = {p["index"]: p["reason"] for p in response.json()["rejected"]}
    assert set(problems) == {1, 2, 3, 4, 5, 7, 8}
    for index in (1, 2):
        assert "quota_id" in problems[index]
    for index in (3, 4, 5, 8):
        assert "version" in problems[index]
    assert "object" in problems[7]
    assert inbox_rows(db) == 2
    # nothing is dropped in silence: a sender that ignores the answer still finds them (issue 11)
    kept = http_rejects(db)
    assert [raw for raw, _ in kept] == [items[i] for i in sorted(problems)]
    assert [reason for _, reason in kept] == [f"item {i}: {problems[i]}" for i in sorted(problems)]
    status = io.StringIO()
    print_status(read_status(Queries(db)), status)
    assert "7 HTTP" in status.getvalue()


def test_unkeyable_line_of_ndjson_is_named_and_the_rest_stored(live: LiveServer, db: DictConnection) -> None:
    bad = titan_event(uuid.uuid4(), 1, "INSERT")
    del bad["metadata"]
    lines = [to_json(e) for e in _events(2)] + [to_json(bad)]

    response = _post(live, "\n".join(lines), "application/x-ndjson")

    assert response.status_code == 202
    assert [p["index"] for p in response.json()["rejected"]] == [2]
    assert inbox_rows(db) == 2
    # nothing storable at all: still 202, the item kept (a sender that stops on an error would stall
    # on it for ever, as Debezium Server's HTTP sink does)
    only_bad = _post(live, to_json(bad), "application/x-ndjson")
    assert only_bad.status_code == 202, only_bad.text
    assert only_bad.json()["accepted"] == 0
    assert [p["index"] for p in only_bad.json()["rejected"]] == [0]
    assert [raw for raw, _ in http_rejects(db)] == [to_json(bad)] * 2
    assert inbox_rows(db) == 2


def http_rejects(db: DictConnection) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT raw, reason, topic FROM inbox.rejects WHERE source = 'http' ORDER BY id"
    ).fetchall()
    assert all(r["topic"] is None for r in rows)
    return [(bytes(r["raw"]).decode("utf-8"), r["reason"]) for r in rows]


def test_business_rule_violations_are_accepted_then_dead_lettered(
    live: LiveServer, db: DictConnection, dsn: str
) -> None:
    good_id, bad_id = uuid.uuid4(), uuid.uuid4()
    good = titan_event(good_id, 1, "INSERT")
    bad = titan_event(bad_id, 1, "INSERT", direction="HOLD", qty_t=Decimal("-5"), metal_code="")

    response = _post(live, to_json(good) + "\n" + to_json(bad))
    assert response.status_code == 202
    # the good one applied before the answer; the invalid one is typed (every reason) by a worker
    assert response.json() == {"accepted": 2, "duplicates": 0, "finished": 1}
    assert event_status(db, good_id, 1) == "applied"

    counts = drain(dsn)

    assert (counts.applied, counts.dead) == (0, 1)
    assert quota(db, good_id) is not None
    assert quota(db, bad_id) is None
    assert event_status(db, bad_id, 1) == "dead"
    [letter] = dead_letters(db)
    assert letter["quota_id"] == bad_id
    assert letter["version"] == 1
    assert letter["error_class"] == "invalid"
    for reason in ("direction", "qty_t", "metal_code"):
        assert reason in letter["error_message"]
    assert letter["event_data"]["data"]["direction"] == "HOLD"


# -- bearer token -----------------------------------------------------------------------------------


@pytest.fixture
def guarded(start_server: StartServer, dsn: str) -> LiveServer:
    return start_server(dsn, api_token=SecretStr("s3cret-token"))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer s3cret-token-and-more"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic s3cret-token"},
        {"Authorization": "s3cret-token"},
    ],
    ids=["none", "wrong", "longer", "empty", "basic", "no-scheme"],
)
def test_token_required_when_set(guarded: LiveServer, db: DictConnection, headers: dict[str, str]) -> None:
    response = _post(guarded, to_json(titan_event(uuid.uuid4(), 1, "INSERT")), **headers)

    assert response.status_code == 401
    assert inbox_rows(db) == 0


def test_right_token_is_accepted(guarded: LiveServer, db: DictConnection) -> None:
    response = _post(
        guarded, to_json(titan_event(uuid.uuid4(), 1, "INSERT")), Authorization="Bearer s3cret-token"
    )

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "finished": 1}
    assert inbox_rows(db) == 1


def test_probes_need_no_token(guarded: LiveServer) -> None:
    with httpx.Client(base_url=guarded.base_url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200


def test_no_token_configured_means_open(live: LiveServer, db: DictConnection) -> None:
    response = _post(live, to_json(titan_event(uuid.uuid4(), 1, "INSERT")), Authorization="Bearer anything")

    assert response.status_code == 202
    assert inbox_rows(db) == 1


# -- body size --------------------------------------------------------------------------------------


@pytest.fixture
def small(start_server: StartServer, dsn: str) -> LiveServer:
    return start_server(dsn, max_body_bytes=2000)


def _body_of_size(size: int) -> bytes:
    events: list[str] = []
    while len(("\n".join(events)).encode()) < size:
        events.append(to_json(titan_event(uuid.uuid4(), 1, "INSERT")))
    return "\n".join(events).encode()


def test_oversized_body_with_content_length_is_413(small: LiveServer, db: DictConnection) -> None:
    body = _body_of_size(5000)

    response = _post(small, body)

    assert response.status_code == 413
    assert inbox_rows(db) == 0


def test_oversized_chunked_body_is_413(small: LiveServer, db: DictConnection) -> None:
    body = _body_of_size(5000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 300):
            yield body[start : start + 300]

    with httpx.Client(base_url=small.base_url, timeout=30) as client:
        request = client.build_request(
            "POST", "/events", content=chunks(), headers={"Content-Type": "application/x-ndjson"}
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = client.send(request)

    assert response.status_code == 413
    assert inbox_rows(db) == 0


def test_chunked_body_within_the_limit_is_accepted(small: LiveServer, db: DictConnection) -> None:
    body = "\n".join(to_json(e) for e in _events(3)).encode()
    assert len(body) < 2000

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    with httpx.Client(base_url=small.base_url, timeout=30) as client:
        response = client.post("/events", content=chunks())

    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "duplicates": 0, "finished": 3}
    assert inbox_rows(db) == 3


def test_body_of_exactly_the_limit_is_accepted(
    start_server: StartServer, dsn: str, db: DictConnection
) -> None:
    body = to_json(titan_event(uuid.uuid4(), 1, "INSERT")).encode()
    exact = start_server(dsn, max_body_bytes=len(body))

    assert _post(exact, body).status_code == 202
    assert _post(exact, body + b" ").status_code == 413


# -- probes -----------------------------------------------------------------------------------------


def test_health(live: LiveServer) -> None:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


def test_ready_on_a_migrated_database(live: LiveServer) -> None:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        response = client.get("/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_not_ready_on_an_unmigrated_database(start_server: StartServer, empty_dsn: str) -> None:
    server = start_server(empty_dsn)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.get("/ready")
        health = client.get("/health")

    assert response.status_code == 503
    assert "010_baseline" in response.json()["detail"]
    assert health.status_code == 200


def test_post_to_an_unmigrated_database_is_503_not_500(start_server: StartServer, empty_dsn: str) -> None:
    """A database that answers but has no inbox yet cannot take events: retry later, never a 500."""
    response = _post(start_server(empty_dsn), to_json(titan_event(uuid.uuid4(), 1, "INSERT")))

    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["Retry-After"]) > 0


def test_not_ready_when_an_applied_migration_is_unknown(live: LiveServer, db: DictConnection) -> None:
    db.execute(
        "INSERT INTO inbox.schema_migrations (version, name, checksum) VALUES (999, 'from_the_future', 'x')"
    )
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        response = client.get("/ready")

    assert response.status_code == 503
    assert "999" in response.json()["detail"]


def test_database_down_is_503_with_retry_after(start_server: StartServer) -> None:
    server = start_server(UNREACHABLE_DSN)
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        posted = client.post(
            "/events",
            content=to_json(titan_event(uuid.uuid4(), 1, "INSERT")),
            headers={"Content-Type": "application/json"},
        )
        ready = client.get("/ready")
        health = client.get("/health")

    assert posted.status_code == 503
    assert int(posted.headers["Retry-After"]) > 0
    assert "retry" in posted.json()["error"]
    assert ready.status_code == 503
    assert health.status_code == 200


# -- exact values -----------------------------------------------------------------------------------


def test_exact_decimals_survive_the_http_path(live: LiveServer, db: DictConnection, dsn: str) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    template = (
        '{{"eventType": "INSERT", "data": {{"quota_id": "{id}", "counterparty_id": "CP-1", '
        '"direction": "BUY", "period_month": "2026-03-17", "qty_t": {qty}, "tolerance_pct": {tol}, '
        '"incoterm_code": null, "metal_code": "CU"}}, "metadata": {{"version": 1}}}}'
    )
    body = "\n".join(
        [
            template.format(id=a, qty="1250.500", tol="0.1"),
            template.format(id=b, qty="0.1", tol="0"),
            template.format(id=c, qty="12345678901234567890.123456789012345678", tol="99.99999999999999999"),
        ]
    )

    response = _post(live, body)
    assert response.status_code == 202, response.text
    stored = db.execute(
        "SELECT payload #>> '{data,qty_t}' AS qty FROM inbox.quota_events WHERE quota_id = %s", [a]
    ).fetchone()
    assert stored is not None
    assert stored["qty"] == "1250.500"

    assert response.json()["finished"] == 3  # applied before the answer

    rows = {
        r["quota_id"]: r
        for r in db.execute(
            "SELECT quota_id, qty_t::text AS qty, tolerance_pct::text AS tol FROM public.quota"
        ).fetchall()
    }
    assert (rows[a]["qty"], rows[a]["tol"]) == ("1250.500", "0.1")
    assert (rows[b]["qty"], rows[b]["tol"]) == ("0.1", "0")
    assert (rows[c]["qty"], rows[c]["tol"]) == (
        "12345678901234567890.123456789012345678",
        "99.99999999999999999",
    )
    row_a = quota(db, a)
    assert row_a is not None
    assert row_a["qty_t"] == Decimal("1250.500")


@pytest.mark.parametrize("apply_at_ingest", [False, True])
def test_a_post_wakes_the_workers_after_its_commit(
    start_server: StartServer, dsn: str, apply_at_ingest: bool
) -> None:
    """The HTTP pool's ingest does not notify inside its transaction (inbox.ingest_typed_events): the route
    sends the hint itself once the events are stored, 'untyped' when a worker must type one first,
    none when nothing was new, nor when the POST applied all it stored (INBOX_HTTP_APPLY_AT_INGEST)."""
    live = start_server(dsn, http_apply_at_ingest=apply_at_ingest)
    # a Debezium change: a worker types it (a Titan event, a delete included, is typed at the edge)
    delete = to_json(debezium_event(uuid.uuid4(), 2))
    with connect(live.dsn, autocommit=True) as listener:
        listener.execute("LISTEN inbox_quota_events")
        typed = _post(live, to_json(titan_event(uuid.uuid4(), 1, "INSERT")))
        typed_hints = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
        untyped = _post(live, delete)
        untyped_hints = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
        again = _post(live, delete)
        duplicate_hints = [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)]
    assert [typed.status_code, untyped.status_code, again.status_code] == [202, 202, 202]
    assert again.json()["duplicates"] == 1
    assert typed.json()["accepted"] == 1
    assert (typed_hints, untyped_hints, duplicate_hints) == (
        [] if apply_at_ingest else [""],
        [UNTYPED_HINT],
        [],
    )
