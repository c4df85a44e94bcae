"""`inbox status`: inbox state, lag, dead letters and rejects.

Every figure comes from SQL a DBA can run too (inbox.v_status, inbox.v_lag; migration 006).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from inbox.commands.config import database
from inbox.commands.output import print_json, print_table, seconds
from inbox.db.connect import DictConnection
from inbox.db.sqlfiles import query
from inbox.settings import Settings


def read_status(conn: DictConnection) -> dict[str, Any]:
    return {
        "states": conn.execute(query("status_by_state")).fetchall(),
        "lag": conn.execute(query("status_lag")).fetchone(),
        "dead_letters_by_class": conn.execute(query("status_dead_letters_by_class")).fetchall(),
        "rejects": conn.execute(query("status_rejects")).fetchone(),
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as conn:
        status = read_status(conn)
    if args.json:
        print_json(status, sys.stdout)
    else:
        print_status(status, sys.stdout)


def print_status(status: dict[str, Any], out: TextIO) -> None:
    lag = status["lag"]
    print("inbox.quota_events by state:", file=out)
    states = [
        {
            "status": r["status"],
            "events": _count(r["events"], r["exact"]),
            "how": "exact" if r["exact"] else "estimate",
        }
        for r in status["states"]
    ]
    print_table(states, ["status", "events", "how"], out)
    print("\nlag:", file=out)
    lines = [
        ("pending", f"{lag['pending']} (due {lag['due']}, waiting for a retry {lag['waiting_retry']})"),
        ("processing", f"{lag['processing']} (leases expired {lag['expired_leases']})"),
        ("oldest pending", f"{seconds(lag['oldest_pending_age'])} since received"),
        ("oldest due waited", seconds(lag["oldest_due_wait"])),
        ("received", f"{lag['received_1m']} in 1 min, {lag['received_5m']} in 5 min"),
        ("applied", f"{lag['applied_1m']} in 1 min, {lag['applied_5m']} in 5 min"),
        ("rejected as stale", f"{lag['stale_5m']} in 5 min (the version gate)"),
        ("dead-lettered", f"{lag['dead_5m']} in 5 min"),
        ("drain estimate", "-" if lag["drain_eta_seconds"] is None else f"{lag['drain_eta_seconds']}s"),
        ("workers", f"{lag['worker_sessions']} sessions, {lag['lease_holders']} holding leases"),
        ("oldest transaction", seconds(lag["oldest_xact_age"])),
        ("inbox dead tuples", f"{lag['dead_tuples']} (last vacuum {lag['last_vacuum_at'] or 'never'})"),
    ]
    for label, text in lines:
        print(f"  {label:<19} {text}", file=out)
    print("\nunresolved dead letters by error class:", file=out)
    print_table(status["dead_letters_by_class"], ["error_class", "dead_letters", "oldest"], out)
    rejects = status["rejects"]
    print(
        f"\nrejects (Kafka messages that could not be keyed): {rejects['total']} "
        f"({rejects['last_hour']} in the last hour)",
        file=out,
    )


def _count(events: int | None, exact: bool) -> str:
    if events is None:
        return "unknown (not analyzed yet)"
    return str(events) if exact else f"~{events}"


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="inbox state, lag, dead letters and rejects")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
