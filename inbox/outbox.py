"""The outbox seen from the operator's side: `inbox outbox tail [--follow] [--ack]`.

Without --ack it only looks (the queue table, by msg_id); with --ack it consumes like any pgmq
consumer would: read with a visibility timeout, then archive what it showed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import TextIO

from inbox.db.queries import OutboxRow, Queries

QUEUE = "quota_changes"
VISIBILITY_SECONDS = 30


def _consume(queries: Queries, limit: int, vt_seconds: int) -> list[OutboxRow]:
    with queries.conn.transaction():
        rows = queries.outbox_read(vt=vt_seconds, limit=limit)
        if rows:
            queries.outbox_archive([r["msg_id"] for r in rows])
    return rows


def messages(
    queries: Queries,
    *,
    last: int,
    follow: bool,
    ack: bool,
    stop: threading.Event,
    poll_seconds: float = 0.5,
) -> Iterator[OutboxRow]:
    """Peek: the last `last` messages, then newer ones. Ack: every unread message, `last` at a time.

    With follow, keep going until stop is set; without, end when nothing more is there.
    """
    after = queries.outbox_last_msg_ids(last)
    while True:
        batch = (
            _consume(queries, last, VISIBILITY_SECONDS)
            if ack
            else queries.outbox_peek(after=after, limit=last)
        )
        if batch:
            after = batch[-1]["msg_id"]
            yield from batch
            continue
        if not follow or stop.wait(poll_seconds):
            return


def render(row: OutboxRow, out: TextIO) -> None:
    """One JSON line; the message is printed as PostgreSQL holds it, so numbers keep their digits."""
    envelope = json.dumps({"msg_id": row["msg_id"], "enqueued_at": row["enqueued_at"].isoformat()})
    print(f'{envelope[:-1]}, "message": {row["message_text"]}}}', file=out, flush=True)
