"""The sample stream of `inbox run --demo` (inbox/commands/demo.py) and how it is fed and awaited."""

from __future__ import annotations

import json
import time
import urllib.request
from importlib.resources import files
from typing import Any

from inbox.db.connect import connect
from inbox.db.queries import Queries
from inbox.http.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


def sample_lines() -> list[str]:
    text = files("inbox.demo").joinpath("sample.ndjson").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def post(
    base_url: str, body: bytes, content_type: str, token: str | None, hmac_secret: bytes | None = None
) -> dict[str, Any]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if hmac_secret:  # signed as any sender must when INBOX_HMAC_SECRET is set (SECURITY.md)
        timestamp = str(int(time.time()))
        headers[SIGNATURE_HEADER] = sign(hmac_secret, timestamp, body)
        headers[TIMESTAMP_HEADER] = timestamp
    request = urllib.request.Request(f"{base_url}/events", data=body, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own loopback server)
        result: dict[str, Any] = json.loads(response.read())
        return result


def wait_until_settled(dsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            counts = Queries(conn).inbox_counts()
            if not counts.get("pending") and not counts.get("processing"):
                return
            time.sleep(0.05)
    raise TimeoutError("the demo events were not all processed in time")
