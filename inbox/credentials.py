"""A credential a caller shows, compared with the configured one in constant time (the webhook's
bearer token, and /metrics on the API port and on INBOX_METRICS_PORT)."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, provided = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(provided.strip().encode("utf-8"), token.encode("utf-8"))
