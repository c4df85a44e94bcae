"""The HTTP server around the app: uvicorn with the limits a port open to clients needs.

* a header deadline: uvicorn (h11) waits for a request's headers forever, so a client sending
  them a byte at a time holds a connection as long as it likes; here the headers must be complete
  within INBOX_HTTP_HEADER_TIMEOUT_SECONDS of the connection opening or of the previous response;
* INBOX_HTTP_MAX_CONCURRENCY connections and requests at once (uvicorn's limit_concurrency: 503
  beyond);
* headers of at most 16 KiB (h11's default, kept), idle keep-alive connections closed after 5 s;
* X-Forwarded-For and X-Forwarded-Proto believed only from INBOX_TRUSTED_PROXIES (uvicorn's default
  would believe them from 127.0.0.1);
* TCP_NODELAY on every connection: uvicorn writes a response's headers and its body apart, and
  with Nagle's algorithm on, the body waited for the client's delayed ACK of the headers (40 ms on
  Linux) before it left. asyncio sets the option itself only on sockets it made with proto
  IPPROTO_TCP, and `inbox serve` binds its port with socket.create_server (proto 0).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from inbox.settings import Settings

log = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 5


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are late."""

    header_timeout_seconds = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        no_delay(transport)
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _watch_headers(self) -> None:
        """Armed while the connection waits for a request's headers (not reset by each byte that
        arrives: that is how a slow client would keep it open); off once a request has begun."""
        if not self._waiting_for_headers():
            self._cancel_header_deadline()
        elif self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_seconds, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._waiting_for_headers():
            client = self.client[0] if self.client else None
            log.info(
                "closed a connection that sent no complete request headers in time",
                extra={"client": client, "seconds": self.header_timeout_seconds},
            )
            self.transport.close()


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a Unix socket has no such option)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def protocol_with_deadline(seconds: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_seconds": seconds})


def server_config(settings: Settings, dsn: str, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of `inbox serve`, `inbox run` and the tests' live server."""
    from inbox.http.app import create_app

    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "log_config": None,
        "access_log": False,
        "http": protocol_with_deadline(settings.http_header_timeout_seconds),
        "limit_concurrency": settings.http_max_concurrency,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # X-Forwarded-For and -Proto only from the proxies named in INBOX_TRUSTED_PROXIES
        "proxy_headers": bool(settings.trusted_proxies.strip()),
        "forwarded_allow_ips": settings.trusted_proxies.strip() or None,
        **overrides,
    }
    return uvicorn.Config(create_app(settings, dsn), **options)
