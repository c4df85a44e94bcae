"""`inbox status`: inbox state, lag, dead letters and rejects.

Every figure comes from SQL a DBA can run too (sql/queries.sql: status_*; inbox.v_status, inbox.v_lag
and the counters of migration 006). The states are counted exactly unless counting takes longer
than COUNT_BUDGET; then they are the planner's estimates, shown with the age of the statistics
behind them. What was processed comes from the database's own counters, exact.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO, cast

from inbox.commands.config import database
from inbox.commands.output import print_json, print_table, seconds
from inbox.db.errors import QueryCanceled
from inbox.db.queries import Queries, StateRow
from inbox.settings import Settings

COUNT_BUDGET = "5s"
NO_WORKER = "no worker connected: start `inbox work` or `inbox run`"


def read_states(queries: Queries) -> list[StateRow]:
    try:
        with queries.conn.transaction():
            queries.set_local_statement_timeout(COUNT_BUDGET)
            return queries.status_exact_counts()
    except QueryCanceled:
        pass
    statistics = queries.status_statistics()
    return [r if r["exact"] else cast(StateRow, {**r, **statistics}) for r in queries.status_by_state()]


def read_status(queries: Queries) -> dict[str, Any]:
    lag = queries.status_lag()
    # The pace of the last 5 minutes says nothing about when the backlog drains if nobody works on it.
    lag["workers_connected"] = bool(lag["worker_sessions"])
    if not lag["workers_connected"]:
        lag["drain_eta_seconds"] = None
    return {
        "states": read_states(queries),
        "processed": queries.status_processed(),
        "lag": lag,
        "dead_letters_by_class": queries.status_dead_letters_by_class(),
        "rejects": queries.status_rejects(),
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as queries:
        status = read_status(queries)
    if args.json:
        print_json(status, sys.stdout)
    else:
        print_status(status, sys.stdout)


def print_status(status: dict[str, Any], out: TextIO) -> None:
    lag = status["lag"]
    print("inbox.quota_events by state:", file=out)
    states = [
        {"status": r["status"], "events": _count(r["events"], r["exact"]), "how": _how(r)}
        for r in status["states"]
    ]
    print_table(states, ["status", "events", "how"], out)
    print("\nprocessed (exact, from the database's counters):", file=out)
    processed = [{**r, "metric": _METRICS.get(r["metric"], r["metric"])} for r in status["processed"]]
    print_table(processed, ["metric", "last_hour", "since_install"], out)
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
        ("drain estimate", _drain(lag)),
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
        f"\nrejects (Kafka messages and HTTP items that could not be keyed, in inbox.rejects): "
        f"{rejects['total']} ({rejects['kafka']} Kafka, {rejects['http']} HTTP; "
        f"{rejects['last_hour']} in the last hour)",
        file=out,
    )


_METRICS = {
    "ingested": "received",
    "applied": "applied",
    "stale": "stale (version gate)",
    "dead": "dead-lettered",
    "retried": "retried",
}


def _how(row: dict[str, Any]) -> str:
    if row["exact"]:
        return "exact"
    if row.get("analyzed_at") is None:
        return "planner estimate; the table was never analyzed"
    return (
        f"planner estimate from statistics of {row['analyzed_at']:%Y-%m-%d %H:%M:%S %Z} "
        f"({row['changed_since']} rows changed since)"
    )


def _drain(lag: dict[str, Any]) -> str:
    if not lag["workers_connected"]:
        return f"- ({NO_WORKER})"
    if lag["drain_eta_seconds"] is None:
        return "- (nothing processed in the last 5 min)"
    return f"{lag['drain_eta_seconds']}s at the last 5 minutes' pace"


def _count(events: int | None, exact: bool) -> str:
    if events is None:
        return "unknown (not analyzed yet)"
    return str(events) if exact else f"~{events}"


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="inbox state, lag, dead letters and rejects")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
