"""`inbox dlq list|show|replay|resolve`: find, show, replay or resolve dead letters.

Every figure comes from SQL a DBA can run too (inbox.v_dead_letters, inbox.replay_dead_letters,
inbox.resolve_dead_letter; migration 006).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from inbox.commands.config import database
from inbox.commands.errors import CliError
from inbox.commands.output import print_block, print_json, print_wrapped_json
from inbox.db.queries import (
    DeadLetterFilter,
    DeadLetterRow,
    EventKeyRow,
    Queries,
    ReplayedRow,
    ReplayEndedRow,
)
from inbox.settings import Settings, parse_duration, positive_int

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


# The classes the service writes (inbox/apply/prepare.py, inbox/apply/worker.py, migration 003); the
# database may hold others (a sink or an older version): those it holds are accepted too.
ERROR_CLASSES = ("invalid", "unprocessable", "delete_blocked", "apply_error", "retries_exhausted")


def _filters(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(args.quota_id, args.error_class, args.since)


def _check_error_class(queries: Queries, error_class: str | None) -> None:
    """An unknown class is a typo, not an empty answer."""
    if error_class is None:
        return
    known = sorted({*ERROR_CLASSES, *queries.dlq_error_classes()})
    if error_class not in known:
        raise CliError(f"unknown --error-class {error_class!r}; known: {', '.join(known)}")


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as queries:
        _check_error_class(queries, args.error_class)
        rows = queries.dlq_list(_filters(args), include_resolved=args.include_resolved, limit=args.limit)
    if args.json:
        print_json(rows, sys.stdout)
        return
    print_letters(rows, sys.stdout)
    if len(rows) == args.limit:
        print(f"(first {args.limit}; narrow the filters or raise --limit)", file=sys.stderr)


def print_letters(rows: list[DeadLetterRow], out: TextIO) -> None:
    if not rows:
        print("no dead letters match", file=out)
    for index, row in enumerate(rows):
        if index:
            print(file=out)
        print_block(_title(row), _fields(row), out)


def _title(row: DeadLetterRow) -> str:
    state = "open" if row["resolved_at"] is None else "resolved"
    return f"{row['id']}  {row['error_class']}  {row['created_at']:%Y-%m-%d %H:%M:%S}  {state}"


def _fields(row: DeadLetterRow) -> list[tuple[str, str]]:
    kind = "delete" if row["is_delete"] else (row["event_type"] or "upsert")
    inbox = row["inbox_status"] or "gone (deleted by retention)"
    if row["superseded"]:
        inbox += f"; superseded: version {row['applied_version']} applied since (a replay ends as stale)"
    fields = [
        ("quota", f"{row['quota_id']} version {row['version']} ({kind})"),
        ("inbox", f"{inbox}; tries {row['retry_count']}"),
        ("error", _message(row)),
    ]
    if row["resolved_at"] is not None:
        note = row["resolution_note"] or "(no note)"
        fields.append(("resolved", f"{row['resolved_at']:%Y-%m-%d %H:%M:%S}: {note}"))
    return fields


def _message(row: DeadLetterRow) -> str:
    shown: str = row["error_message"]
    cut = row.get("error_length", len(shown)) - len(shown)
    return f"{shown}… ({cut} more characters: inbox dlq show {row['id']})" if cut > 0 else shown


def _find(queries: Queries, dead_letter_id: uuid.UUID) -> DeadLetterRow:
    row = queries.dlq_show(dead_letter_id)
    if row is None:
        raise CliError(f"no dead letter with id {dead_letter_id}")
    return row


def cmd_dlq_show(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as queries:
        row = _find(queries, args.id)
    if args.json:
        print_json(row, sys.stdout)
        return
    print_block(_title(row), _fields(row), sys.stdout)
    print("  event (as stored):", file=sys.stdout)
    print_wrapped_json(row["event_data"], sys.stdout, indent="    ")


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> None:
    if bool(args.ids) == args.all_matching:
        raise CliError("give dead letter ids, or --all-matching with filters, not both and not neither")
    if not args.all_matching and (_filters(args) != DeadLetterFilter() or args.dry_run):
        raise CliError("--quota-id, --error-class, --since and --dry-run go with --all-matching")
    with database(settings) as queries:
        _check_error_class(queries, args.error_class)
        if args.dry_run:
            return _dry_run(queries, args)
        rows = (
            _replay_matching(queries, args)
            if args.all_matching
            else _replay_ids(queries, args.ids, args.note)
        )
        _follow(queries, rows, args.wait)
    if args.json:
        print_json(rows, sys.stdout)
        return
    for row in rows:
        kind = " (delete)" if row["is_delete"] else ""
        print_block(
            f"{row['id']}  {row['outcome']}",
            [("quota", f"{row['quota_id']} version {row['version']}{kind}"), ("ended", row["ended"])],
            sys.stdout,
        )
    outcomes = {o: sum(1 for r in rows if r["outcome"] == o) for o in ("requeued", "reinserted", "in_inbox")}
    print(
        f"replayed {len(rows)} dead letter(s): {outcomes['requeued']} requeued, "
        f"{outcomes['reinserted']} reinserted, {outcomes['in_inbox']} already in the inbox"
    )


def _dry_run(queries: Queries, args: argparse.Namespace) -> None:
    """What --all-matching would replay now, changing nothing."""
    rows = queries.dlq_list(_filters(args), include_resolved=False, limit=None)
    if args.json:
        print_json(rows, sys.stdout)
        return
    print_letters(rows, sys.stdout)
    print(f"\ndry run: would replay {len(rows)} dead letter(s); nothing changed")


def _follow(queries: Queries, rows: list[ReplayedRow], wait_seconds: float) -> None:
    """Add 'ended' to each replayed row: where its event is once the workers have taken it (or the
    wait is over): applied, stale, dead again under a new dead letter id, or still waiting."""
    keys = [
        EventKeyRow(quota_id=str(r["quota_id"]), version=r["version"], is_delete=r["is_delete"]) for r in rows
    ]
    has_workers = queries.worker_sessions() > 0
    deadline = time.monotonic() + (wait_seconds if has_workers else 0)
    while True:
        ended = {(e["quota_id"], e["version"], e["is_delete"]): e for e in queries.dlq_replay_ended(keys)}
        waiting = [e for e in ended.values() if e["inbox_status"] in ("pending", "processing")]
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for row in rows:
        now = ended[(row["quota_id"], row["version"], row["is_delete"])]
        row["inbox_status"] = now["inbox_status"]
        row["dead_letter_id"] = now["dead_letter_id"]
        row["ended"] = _ended(now, has_workers)


def _ended(now: ReplayEndedRow, has_workers: bool) -> str:
    status = now["inbox_status"]
    if status == "dead":
        return f"dead again: {now['dead_letter_id']}" if now["dead_letter_id"] else "dead"
    if status in ("pending", "processing") and not has_workers:
        return f"{status}: no worker connected"
    if status in ("pending", "processing"):
        return f"{status}: not done within --wait"
    if status == "stale":
        return "stale: a newer version was applied"
    return status or "gone"


def _replay_ids(queries: Queries, ids: Sequence[uuid.UUID], note: str) -> list[ReplayedRow]:
    """All of them or none: an unknown or already resolved id rolls the whole replay back."""
    wanted = list(dict.fromkeys(ids))
    with queries.conn.transaction():
        rows = queries.dlq_replay(wanted, note)
        missing = set(wanted) - {r["id"] for r in rows}
        if missing:
            raise CliError(
                "nothing replayed: no open dead letter with id " + ", ".join(sorted(str(m) for m in missing))
            )
    return rows


def _replay_matching(queries: Queries, args: argparse.Namespace) -> list[ReplayedRow]:
    """Batch by batch, each atomic; only dead letters that existed when the command started."""
    until = queries.database_now()
    replayed: list[ReplayedRow] = []
    while True:
        batch = queries.dlq_replay_matching(
            _filters(args), until=until, limit=args.batch_size, note=args.note
        )
        replayed.extend(batch)
        if len(batch) < args.batch_size:
            break
    if not replayed:
        raise CliError("no open dead letter matches")
    return replayed


def cmd_dlq_resolve(args: argparse.Namespace, settings: Settings) -> None:
    with database(settings) as queries:
        resolved_at = queries.dlq_resolve(args.id, args.note)
        if resolved_at is None:
            existing = _find(queries, args.id)
            raise CliError(f"dead letter {args.id} was already resolved at {existing['resolved_at']}")
    print(f"resolved {args.id} at {resolved_at.isoformat()}")


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="find, show, replay or resolve dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    listing = dlq_sub.add_parser("list", help="open dead letters, oldest first")
    _add_filters(listing)
    listing.add_argument(
        "--include-resolved", action="store_true", help="resolved ones too, with when and the note"
    )
    listing.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many rows (default 100)"
    )
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
    replay.add_argument("--batch-size", type=positive_int, default=1000, help="dead letters per transaction")
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="with --all-matching: list what would be replayed, change nothing",
    )
    replay.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the workers to take the replayed events, to report where each ended "
        "(default 30; 0: do not wait; no wait when no worker is connected)",
    )
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(func=cmd_dlq_replay)

    resolve = dlq_sub.add_parser("resolve", help="close a dead letter without replaying it")
    resolve.add_argument("id", type=uuid.UUID, help="dead letter id")
    resolve.add_argument("--note", required=True, help="why it needs no replay")
    resolve.set_defaults(func=cmd_dlq_resolve)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quota-id", type=uuid.UUID, default=None, help="one quota")
    parser.add_argument("--error-class", default=None, help=f"one of {', '.join(ERROR_CLASSES)}, ...")
    parser.add_argument(
        "--since", type=since_arg, default=None, help="created at or after: ISO time or 30m/2h/7d"
    )
