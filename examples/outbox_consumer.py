"""A downstream consumer of the outbox: keeps a replica of public.quota from the pgmq queue quota_changes.

Run: python examples/outbox_consumer.py "$(inbox dsn)"   (the database `inbox` uses, migrated; or any DSN;
`--follow` keeps going)

Each page is read with a visibility timeout, applied with a version gate (so a redelivered or
out-of-order message changes nothing) and archived in the same transaction: exactly once downstream.
Numbers are read as Decimal, so quantities stay exact.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from functools import partial
from typing import Any, TextIO

import psycopg
from pgmq import SyncPGMQueue
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from inbox.formats import QUOTA_COLUMNS

QUEUE = "quota_changes"

FIELDS = QUOTA_COLUMNS  # the quota columns a message carries besides its key

CREATE_REPLICA = """
CREATE TABLE IF NOT EXISTS downstream_quota (
    quota_id        uuid PRIMARY KEY,
    version         bigint NOT NULL,
    deleted         boolean NOT NULL,
    counterparty_id text, direction text, period_month date, qty_t numeric, tolerance_pct numeric,
    incoterm_code   text, metal_code text
)"""

APPLY_CHANGE = """
INSERT INTO downstream_quota AS d (quota_id, version, deleted, counterparty_id, direction, period_month,
                                   qty_t, tolerance_pct, incoterm_code, metal_code)
VALUES (%(quota_id)s, %(version)s, %(deleted)s, %(counterparty_id)s, %(direction)s, %(period_month)s,
        %(qty_t)s, %(tolerance_pct)s, %(incoterm_code)s, %(metal_code)s)
ON CONFLICT (quota_id) DO UPDATE
    SET version = excluded.version, deleted = excluded.deleted,
        counterparty_id = excluded.counterparty_id, direction = excluded.direction,
        period_month = excluded.period_month, qty_t = excluded.qty_t,
        tolerance_pct = excluded.tolerance_pct, incoterm_code = excluded.incoterm_code,
        metal_code = excluded.metal_code
    WHERE excluded.version > d.version"""


def exact_json(conn: psycopg.Connection[Any]) -> None:
    set_json_loads(partial(json.loads, parse_float=Decimal), conn)


def consume_page(queue: SyncPGMQueue, pool: ConnectionPool[Any], page: int = 100) -> int:
    """Apply and archive one page of messages; returns how many there were."""
    with pool.connection() as conn, conn.transaction():
        messages = queue.read_batch(QUEUE, vt=30, batch_size=page, conn=conn)
        for message in messages:
            change = message.message
            state = change["quota"] or {}  # null on delete
            conn.execute(
                APPLY_CHANGE,
                {
                    "quota_id": change["quota_id"],
                    "version": change["version"],
                    "deleted": change["op"] == "delete",
                    **{field: state.get(field) for field in FIELDS},
                },
            )
        if messages:
            queue.archive_batch(QUEUE, [m.msg_id for m in messages], conn=conn)
    return len(messages)


def main(dsn: str, out: TextIO | None = None) -> int:
    """Drain the queue into downstream_quota; returns how many messages were applied."""
    # Connect once first, with a short timeout: a wrong DSN is one error at once, not a pool that
    # retries in the background until its 30 s timeout.
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute(CREATE_REPLICA)
    total = 0
    with ConnectionPool(dsn, configure=exact_json, open=True) as pool:
        queue = SyncPGMQueue(pool=pool, init_extension=False)
        while applied := consume_page(queue, pool):
            total += applied
            if out:
                print(f"applied {applied} message(s) to downstream_quota ({total} so far)", file=out)
    return total


def cli(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print(
            'usage: python examples/outbox_consumer.py DSN  (e.g. "$(inbox dsn)" or '
            "postgresql://user@host:5432/db): copies the outbox queue quota_changes into the table "
            "downstream_quota of that database, then exits",
            file=sys.stderr,
        )
        return 2
    print(f"reading the outbox queue {QUEUE} into downstream_quota", file=sys.stdout, flush=True)
    try:
        total = main(argv[0], sys.stdout)
    except psycopg.OperationalError as exc:
        print(f"outbox_consumer: error: cannot connect: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except psycopg.errors.UndefinedTable:
        print("outbox_consumer: error: no queue quota_changes here: run `inbox migrate`", file=sys.stderr)
        return 1
    except psycopg.ProgrammingError as exc:
        # libpq quotes the pieces it stumbles on, which may be the password: never shown
        reason = re.sub(r'"[^"]*"', '"…"', " ".join(str(exc).split()))
        print(f"outbox_consumer: error: not a PostgreSQL connection string: {reason}", file=sys.stderr)
        return 1
    print(f"done: {total} message(s) applied; the queue is empty", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
