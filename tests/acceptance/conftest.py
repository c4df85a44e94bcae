"""The real HTTP server: uvicorn serving create_app(settings, dsn) on a free loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from inbox.http.server import server_config
from inbox.settings import Settings

# A DSN where nothing listens: connections are refused at once.
UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    settings: Settings
    dsn: str


StartServer = Callable[..., LiveServer]


def _start(dsn: str, settings: Settings) -> tuple[LiveServer, uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(server_config(settings, dsn, host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.run, name="test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the HTTP server thread ended before it started serving")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the HTTP server did not start within 30 s")
        time.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return LiveServer(f"http://{host}:{port}", settings, dsn), server, thread


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Factory: start_server(dsn, **settings_fields) -> LiveServer; every server stops after the test."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(dsn: str, **settings_fields: Any) -> LiveServer:
        # Explicit values win over INBOX_* variables of the environment running the tests.
        settings_fields.setdefault("api_token", None)
        live, server, thread = _start(dsn, Settings(**settings_fields))
        running.append((server, thread))
        return live

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, thread in running:
        thread.join(15)
        assert not thread.is_alive(), "the HTTP server did not shut down"


@pytest.fixture
def live(start_server: StartServer, dsn: str) -> LiveServer:
    """The server with default settings on this test's migrated database."""
    return start_server(dsn)
