"""`inbox run --demo`: feed a bundled sample stream through the real HTTP path and show the outcome."""

from __future__ import annotations

from typing import TextIO

from inbox.commands.output import print_table
from inbox.db.connect import connect
from inbox.db.queries import Queries
from inbox.demo import post, sample_lines, wait_until_settled
from inbox.formats import QUOTA_COLUMNS

SHOWN = ["quota_id", "source_version", *QUOTA_COLUMNS]


def run_demo(
    base_url: str, dsn: str, token: str | None, out: TextIO, hmac_secret: bytes | None = None
) -> None:
    lines = sample_lines()
    half = len(lines) // 2
    first = post(base_url, "\n".join(lines[:half]).encode(), "application/x-ndjson", token, hmac_secret)
    second = post(
        base_url, ("[" + ",".join(lines[half:]) + "]").encode(), "application/json", token, hmac_secret
    )
    print(f"POST /events (NDJSON, {half} events)     -> 202 {first}", file=out)
    print(f"POST /events (JSON array, {len(lines) - half} events) -> 202 {second}", file=out)
    wait_until_settled(dsn)
    with connect(dsn, autocommit=True) as conn:
        queries = Queries(conn)
        print("\ninbox.quota_events by status:", file=out)
        for status, events in queries.inbox_counts().items():
            print(f"  {status:<10} {events}", file=out)
        print("\npublic.quota:", file=out)
        print_table(queries.quota_states(), SHOWN, out)
        print("\npublic.quota_processing_errors (unresolved dead letters):", file=out)
        print_table(
            queries.unresolved_dead_letters(),
            ["quota_id", "version", "error_class", "error_message"],
            out,
        )
