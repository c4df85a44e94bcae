"""What a request must show before any route sees it: a browser's page may not post (Origin), a name
that is not this machine may not reach an unauthenticated service (Host: DNS rebinding), and events
come as JSON or NDJSON (a form or text/plain body is what a cross-site page can send unasked).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
EVENT_TYPES = ("application/json", *NDJSON_TYPES)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def split_list(text: str) -> set[str]:
    return {item.strip().lower().rstrip("/") for item in text.split(",") if item.strip()}


def _host_name(host_header: str) -> str:
    """The name in a Host header, without the port; an IPv6 literal without its brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_this_machine(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware; check_host is on when the service runs without a credential (loopback)."""

    def __init__(
        self, app: ASGIApp, *, check_host: bool, allowed_hosts: set[str], allowed_origins: set[str]
    ) -> None:
        self.app = app
        self.check_host = check_host and "*" not in allowed_hosts
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, message = refusal
                client = scope.get("client")
                log.warning(
                    "refused a request", extra={"reason": message, "client": client[0] if client else None}
                )
                await _answer(send, status, message)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and origin.strip().lower().rstrip("/") not in self.allowed_origins:
            return 403, "cross-origin request refused: its Origin is not in INBOX_ALLOWED_ORIGINS"
        if self.check_host:
            name = _host_name(headers.get("host", ""))
            if not (is_this_machine(name) or name in self.allowed_hosts):
                return 403, (
                    "Host does not name this machine; without INBOX_API_TOKEN or INBOX_HMAC_SECRET only "
                    "localhost, 127.0.0.0/8, [::1] and INBOX_ALLOWED_HOSTS are served"
                )
        if scope["method"] == "POST" and scope["path"] == "/events":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            # No Content-Type reads as JSON (curl --data-binary, most webhook senders); a browser that
            # sends none cross-site also sends an Origin, refused above.
            if content_type and content_type not in EVENT_TYPES:
                return 415, f"events must be sent as {' or '.join(EVENT_TYPES)} (Content-Type)"
        return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
