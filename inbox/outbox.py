"""The outbox seen from the operator's side: `inbox outbox tail [--follow] [--ack]`.

Without --ack it only looks (the queue table, by msg_id); with --ack it consumes like any pgmq
consumer would: read with a visibility timeout, then archive what it showed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from inbox.db.connect import DictConnection
from inbox.db.sqlfiles import query

QUEUE = "quota_changes"
VISIBILITY_SECONDS = 30


def _peek(conn: DictConnection, after: int, limit: int) -> list[dict[str, Any]]:
    return conn.execute(query("outbox_peek"), {"after": after, "limit": limit}).fetchall()


def _consume(conn: DictConnection, limit: int, vt_seconds: int) -> list[dict[str, Any]]:
    with conn.transaction():
        rows = conn.execute(query("outbox_read"), {"vt": vt_seconds, "limit": limit}).fetchall()
        if rows:
            conn.execute(query("outbox_archive"), {"msg_ids": [r["msg_id"] for r in rows]})
    return rows


def messages(
    conn: DictConnection,
    *,
    last: int,
    follow: bool,
    ack: bool,
    stop: threading.Event,
    poll_seconds: float = 0.5,
) -> Iterator[dict[str, Any]]:
    """Peek: the last `last` messages, then newer ones. Ack: every unread message, `last` at a time.

    With follow, keep going until stop is set; without, end when nothing more is there.
    """
    row = conn.execute(query("outbox_last_msg_ids"), {"limit": last}).fetchone()
    after = int(row["before_last"]) if row else 0
    while True:
        batch = _consume(conn, last, VISIBILITY_SECONDS) if ack else _peek(conn, after, last)
        if batch:
            after = batch[-1]["msg_id"]
            yield from batch
            continue
        if not follow or stop.wait(poll_seconds):
            return


def render(row: dict[str, Any], out: TextIO) -> None:
    """One JSON line; the message is printed as PostgreSQL holds it, so numbers keep their digits."""
    envelope = json.dumps({"msg_id": row["msg_id"], "enqueued_at": row["enqueued_at"].isoformat()})
    print(f'{envelope[:-1]}, "message": {row["message_text"]}}}', file=out, flush=True)
