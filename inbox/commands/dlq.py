"""`inbox dlq list|show|replay|resolve`: find, show, replay or resolve dead letters.

Every figure comes from SQL a DBA can run too (inbox.v_dead_letters, inbox.replay_dead_letters,
inbox.resolve_dead_letter; migration 006).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from inbox.commands.config import database
from inbox.commands.errors import CliError
from inbox.commands.output import jsonable, print_json, print_table, shorten
from inbox.db.connect import DictConnection
from inbox.db.sqlfiles import query
from inbox.settings import Settings, parse_duration

REPLAY_NOTE = "replayed with inbox dlq replay"


def since_arg(text: str) -> datetime:
    """--since: an ISO 8601 time (UTC when it has no offset) or an age such as 30m, 2h, 7d, P1D."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time or an age (like 2026-03-01T10:00, 30m, 2h, 7d): {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


LIST_COLUMNS = [
    "id",
    "quota_id",
    "version",
    "event_type",
    "error_class",
    "retry_count",
    "created_at",
    "inbox_status",
    "superseded",
    "error_message",
]


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"quota_id": args.quota_id, "error_class": args.error_class, "since": args.since}


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> None:
    params = {**_filters(args), "include_resolved": args.include_resolved, "limit": args.limit}
    with database(settings) as conn:
        rows = conn.execute(query("dlq_list"), params).fetchall()
    if args.json:
        print_json(rows, sys.stdout)
        return
    shown = [{**r, "error_message": shorten(r["error_message"], 60)} for r in rows]
    print_table(shown, LIST_COLUMNS, sys.stdout)
    if len(rows) == args.limit:
        print(f"(first {args.limit}; narrow the filters or raise --limit)", file=sys.stderr)


def _find(conn: DictConnection, dead_letter_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(query("dlq_show"), {"id": dead_letter_id}).fetchone()
    if row is None:
        raise CliError(f"no dead letter with id {dead_letter_id}")
    return row


def cmd_dlq_show(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as conn:
        row = _find(conn, args.id)
    if args.json:
        print_json(row, sys.stdout)
        return
    for name, value in row.items():
        if name != "event_data":
            print(f"{name:<16} {'NULL' if value is None else value}")
    print("event_data:")
    print(json.dumps(jsonable(row["event_data"]), indent=2))


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> None:
    if bool(args.ids) == args.all_matching:
        raise CliError("give dead letter ids, or --all-matching with filters, not both and not neither")
    if not args.all_matching and any(_filters(args).values()):
        raise CliError("--quota-id, --error-class and --since go with --all-matching")
    with database(settings) as conn:
        rows = _replay_matching(conn, args) if args.all_matching else _replay_ids(conn, args.ids, args.note)
    if args.json:
        print_json(rows, sys.stdout)
    else:
        print_table(rows, ["id", "quota_id", "version", "is_delete", "outcome"], sys.stdout)
    outcomes = {o: sum(1 for r in rows if r["outcome"] == o) for o in ("requeued", "reinserted", "in_inbox")}
    print(
        f"replayed {len(rows)} dead letter(s): {outcomes['requeued']} requeued, "
        f"{outcomes['reinserted']} reinserted, {outcomes['in_inbox']} already in the inbox",
        file=sys.stderr,
    )


def _replay_ids(conn: DictConnection, ids: Sequence[uuid.UUID], note: str) -> list[dict[str, Any]]:
    """All of them or none: an unknown or already resolved id rolls the whole replay back."""
    wanted = list(dict.fromkeys(ids))
    with conn.transaction():
        rows = conn.execute(query("dlq_replay"), {"ids": wanted, "note": note}).fetchall()
        missing = set(wanted) - {r["id"] for r in rows}
        if missing:
            raise CliError(
                "nothing replayed: no open dead letter with id " + ", ".join(sorted(str(m) for m in missing))
            )
    return rows


def _replay_matching(conn: DictConnection, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Batch by batch, each atomic; only dead letters that existed when the command started."""
    until = conn.execute(query("database_now")).fetchone()["now"]  # type: ignore[index]
    replayed: list[dict[str, Any]] = []
    while True:
        params = {**_filters(args), "until": until, "limit": args.batch_size, "note": args.note}
        batch = conn.execute(query("dlq_replay_matching"), params).fetchall()
        replayed.extend(batch)
        if len(batch) < args.batch_size:
            break
    if not replayed:
        raise CliError("no open dead letter matches")
    return replayed


def cmd_dlq_resolve(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as conn:
        row = conn.execute(query("dlq_resolve"), {"id": args.id, "note": args.note}).fetchone()
        if row is None or row["resolved_at"] is None:
            existing = _find(conn, args.id)
            raise CliError(f"dead letter {args.id} was already resolved at {existing['resolved_at']}")
    print(f"resolved {args.id} at {row['resolved_at'].isoformat()}")


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="find, show, replay or resolve dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    listing = dlq_sub.add_parser("list", help="open dead letters, oldest first")
    _add_filters(listing)
    listing.add_argument("--include-resolved", action="store_true", help="resolved ones too")
    listing.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_dlq_list)

    show = dlq_sub.add_parser("show", help="one dead letter with its event")
    show.add_argument("id", type=uuid.UUID, help="dead letter id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_dlq_show)

    replay = dlq_sub.add_parser(
        "replay",
        help="put dead letters back through the inbox (the version gate still applies) and resolve them",
    )
    replay.add_argument("ids", nargs="*", type=uuid.UUID, metavar="ID", help="dead letter ids (all or none)")
    replay.add_argument(
        "--all-matching", action="store_true", help="every open dead letter matching the filters"
    )
    _add_filters(replay)
    replay.add_argument("--note", default=REPLAY_NOTE, help="resolution note")
    replay.add_argument("--batch-size", type=int, default=1000, help="dead letters per transaction")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(func=cmd_dlq_replay)

    resolve = dlq_sub.add_parser("resolve", help="close a dead letter without replaying it")
    resolve.add_argument("id", type=uuid.UUID, help="dead letter id")
    resolve.add_argument("--note", required=True, help="why it needs no replay")
    resolve.set_defaults(func=cmd_dlq_resolve)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quota-id", type=uuid.UUID, default=None, help="one quota")
    parser.add_argument("--error-class", default=None, help="invalid, delete_blocked, apply_error, ...")
    parser.add_argument(
        "--since", type=since_arg, default=None, help="created at or after: ISO time or 30m/2h/7d"
    )
