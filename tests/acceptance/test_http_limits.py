"""Issue 12 M7 (and H1 over HTTP) on the real server: a slow client cannot hold a connection, the
server takes a bounded number at once, a request holds a bounded number of events, and a big body
is parsed off the event loop, so /health is answered meanwhile."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

import inbox.http.routes as app_module
from inbox.commands.service import listen
from inbox.db.connect import DictConnection
from inbox.http.server import server_config
from inbox.ingest import parse_body
from inbox.settings import Settings
from tests.acceptance.conftest import LiveServer, StartServer
from tests.helpers import inbox_rows, titan_event, to_json

GIVE_UP_SECONDS = 30.0  # a failure guard only: every assertion here is about what happens, not when


def _address(live: LiveServer) -> tuple[str, int]:
    host, port = live.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextmanager
def _partial_requests(live: LiveServer, count: int) -> Iterator[list[socket.socket]]:
    """Connections that sent the start of a request's headers and then nothing more."""
    sockets = [socket.create_connection(_address(live), timeout=GIVE_UP_SECONDS) for _ in range(count)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/js")
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_connection_that_never_finishes_its_headers_is_closed(start_server: StartServer, dsn: str) -> None:
    """Issue 12 M7: a partial-header connection stayed open 30 s and more (uvicorn has no header
    deadline of its own)."""
    live = start_server(dsn, http_header_timeout_seconds=0.5)

    with _partial_requests(live, 1) as (sock,):
        closed = sock.recv(1024)  # blocks until the server closes (or GIVE_UP_SECONDS: a failure)

    assert closed == b""
    assert httpx.get(f"{live.base_url}/health", timeout=GIVE_UP_SECONDS).status_code == 200


def test_a_connection_that_sends_nothing_at_all_is_closed(start_server: StartServer, dsn: str) -> None:
    live = start_server(dsn, http_header_timeout_seconds=0.5)

    with socket.create_connection(_address(live), timeout=GIVE_UP_SECONDS) as sock:
        assert sock.recv(1024) == b""


def test_beyond_the_concurrency_limit_the_server_answers_503(start_server: StartServer, dsn: str) -> None:
    live = start_server(dsn, http_max_concurrency=3, http_header_timeout_seconds=GIVE_UP_SECONDS)

    with _partial_requests(live, 3):
        answers = _until(
            lambda: httpx.get(f"{live.base_url}/health", timeout=GIVE_UP_SECONDS).status_code, 503
        )
    assert answers[-1] == 503
    assert _until(lambda: httpx.get(f"{live.base_url}/health", timeout=GIVE_UP_SECONDS).status_code, 200)


def _until(probe: Any, wanted: int) -> list[int]:
    """Probe until it answers wanted (the server registers connections as its loop gets to them)."""
    answers: list[int] = []
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while not answers or answers[-1] != wanted:
        assert time.monotonic() < deadline, f"never answered {wanted}: {answers[-5:]}"
        answers.append(probe())
    return answers


def test_more_events_than_the_limit_get_413_and_store_nothing(
    start_server: StartServer, dsn: str, db: DictConnection
) -> None:
    live = start_server(dsn, max_events_per_request=3)
    events = [to_json(titan_event(uuid.uuid4(), 1)) for _ in range(4)]

    refused = httpx.post(f"{live.base_url}/events", content="\n".join(events), timeout=GIVE_UP_SECONDS)
    taken = httpx.post(f"{live.base_url}/events", content="[" + ",".join(events[:3]) + "]", timeout=30)

    assert refused.status_code == 413
    assert "INBOX_MAX_EVENTS_PER_REQUEST (3)" in refused.json()["error"]
    assert taken.status_code == 202 and taken.json()["accepted"] == 3
    assert inbox_rows(db) == 3


def test_health_is_answered_while_a_big_body_is_being_parsed(
    start_server: StartServer, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 M7: a 10 MiB body blocked /health for 1.2 s, parsed on the event loop. Here the parse
    of a big body is held open until /health has answered: on the loop it could not be."""
    parsing, health_answered = threading.Event(), threading.Event()
    real_parse = parse_body

    def held_parse(body: bytes, **options: Any) -> Any:
        parsing.set()
        health_answered.wait(GIVE_UP_SECONDS)
        return real_parse(body, **options)

    monkeypatch.setattr(app_module, "parse_body", held_parse)
    live = start_server(dsn)
    body = "\n".join(to_json(titan_event(uuid.uuid4(), 1)) for _ in range(400)).encode()
    posted: list[httpx.Response] = []
    poster = threading.Thread(
        target=lambda: posted.append(httpx.post(f"{live.base_url}/events", content=body, timeout=60))
    )
    poster.start()
    try:
        assert parsing.wait(GIVE_UP_SECONDS)
        health = httpx.get(f"{live.base_url}/health", timeout=GIVE_UP_SECONDS / 3)
        assert not posted  # the POST is still waiting for its parse
    finally:
        health_answered.set()
        poster.join(60)

    assert health.status_code == 200
    assert posted[0].status_code == 202 and posted[0].json()["accepted"] == 400


@pytest.mark.parametrize("number", ["1e9999999999999999999", "1e-99999999999999999999", "1e131071"])
def test_a_number_beyond_the_limits_is_a_400_naming_its_item_never_a_500(
    live: LiveServer, db: DictConnection, number: str
) -> None:
    """Issue 12 H1: decimal.InvalidOperation made this a 500; H2: 1e131071 was stored."""
    odd = to_json(titan_event(uuid.uuid4(), 1)).replace('"qty_t": 100.000', f'"qty_t": {number}')
    body = "\n".join([to_json(titan_event(uuid.uuid4(), 1)), odd])

    response = httpx.post(f"{live.base_url}/events", content=body, timeout=GIVE_UP_SECONDS)

    assert response.status_code == 400, response.text
    (problem,) = response.json()["problems"]
    assert problem["index"] == 1 and f"number {number}" in problem["reason"]
    assert inbox_rows(db) == 0


def test_a_lone_surrogate_is_a_400_naming_its_item(live: LiveServer, db: DictConnection) -> None:
    """It was a 422 carrying PostgreSQL's message, without the item's index."""
    bad = to_json(titan_event(uuid.uuid4(), 1, counterparty_id="@@")).replace("@@", "\\ud800")
    body = "\n".join([to_json(titan_event(uuid.uuid4(), 1)), bad])

    response = httpx.post(f"{live.base_url}/events", content=body, timeout=GIVE_UP_SECONDS)

    assert response.status_code == 400, response.text
    (problem,) = response.json()["problems"]
    assert problem["index"] == 1 and "lone UTF-16 surrogate" in problem["reason"]
    assert inbox_rows(db) == 0


def test_every_connection_of_inbox_serve_sends_without_nagle(dsn: str) -> None:
    """uvicorn writes a response's headers and its body apart: with Nagle's algorithm on, the body
    waited for the client's delayed ACK of the headers, 40 ms a response on Linux. `inbox serve` and
    `inbox run` bind their port themselves (socket.create_server, proto 0), and asyncio sets
    TCP_NODELAY only on sockets made with proto IPPROTO_TCP: the server sets it on each connection."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(server_config(Settings(api_token=None), dsn))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(sock.getsockname()[:2], timeout=GIVE_UP_SECONDS) as client:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
            connections = list(server.server_state.connections)
            options = [
                c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for c in connections
            ]
        assert options and all(options), f"TCP_NODELAY per connection: {options}"
    finally:
        server.should_exit = True
        thread.join(15)
