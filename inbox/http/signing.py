"""Webhook request signatures: HMAC-SHA256 of the body, bound to a timestamp so a capture goes stale.

A sender signs f"{timestamp}.{body}" (timestamp: Unix seconds, as sent in X-Signature-Timestamp; body:
the exact bytes of the request) with the shared secret and sends X-Signature: sha256=<hex digest>.
The inbox refuses a request whose timestamp is further than the tolerance from its own clock. Within
the window a captured request can be sent again, but an event stored twice is a duplicate: a no-op.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
PREFIX = "sha256="
_TIMESTAMP = re.compile(r"^\d{1,12}$")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Signature value of a body sent at timestamp."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return PREFIX + mac.hexdigest()


def signature_problem(
    secret: bytes,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int,
) -> str | None:
    """Why the request's signature does not hold, or None when it does. The reasons name no secret
    and no expected value; the digests are compared in constant time."""
    if not signature or not timestamp:
        return f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
    if not _TIMESTAMP.match(timestamp):
        return f"{TIMESTAMP_HEADER} must be Unix seconds"
    if abs(now - int(timestamp)) > tolerance_seconds:
        return f"{TIMESTAMP_HEADER} is more than {tolerance_seconds} s away from the server's clock"
    provided = signature.strip().lower()
    if not provided.startswith(PREFIX) or not _HEX_DIGEST.match(provided.removeprefix(PREFIX)):
        return f"{SIGNATURE_HEADER} must be {PREFIX}<64 hex digits>"
    if not hmac.compare_digest(provided.encode("ascii"), sign(secret, timestamp, body).encode("ascii")):
        return f"{SIGNATURE_HEADER} does not match the body"
    return None
