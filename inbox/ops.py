"""Operator commands: `inbox status`, `inbox dlq list|show|replay|resolve`, `inbox replay FILE`.

Every figure comes from the SQL a DBA can run too (inbox.v_status, inbox.v_lag,
inbox.v_dead_letters, inbox.replay_dead_letters, inbox.resolve_dead_letter; migration 006).
Expected failures (unknown id, nothing to do, bad input) end as one line and exit code 1; a
database that does not answer ends as exit code 2 (inbox.cli.main).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from psycopg import errors as pg_errors

from inbox.cli import CliError, database_url
from inbox.db.connect import DictConnection, connect
from inbox.db.sqlfiles import query
from inbox.demo import print_table
from inbox.ingest import BadBatch, ParsedBatch, parse_texts, split_body, store
from inbox.settings import Settings

REPLAY_NOTE = "replayed with inbox dlq replay"
_RELATIVE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@contextmanager
def _database(settings: Settings) -> Iterator[DictConnection]:
    """A connection for one command; a schema without migration 006 is an expected condition."""
    with connect(database_url(settings), autocommit=True, application_name="quota-inbox cli") as conn:
        try:
            yield conn
        except (pg_errors.UndefinedTable, pg_errors.UndefinedFunction) as exc:
            raise CliError(
                f"the database is not migrated for this version (run `inbox migrate`): {exc}"
            ) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(_jsonable(value), indent=2), file=out)


def _seconds(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


def since_arg(text: str) -> datetime:
    """--since: an ISO 8601 time (UTC when it has no offset) or an age such as 30m, 2h, 7d."""
    match = _RELATIVE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time or an age (like 2026-03-01T10:00, 30m, 2h, 7d): {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- inbox status ---------------------------------------------------------------------------------


def read_status(conn: DictConnection) -> dict[str, Any]:
    return {
        "states": conn.execute(query("status_by_state")).fetchall(),
        "lag": conn.execute(query("status_lag")).fetchone(),
        "dead_letters_by_class": conn.execute(query("status_dead_letters_by_class")).fetchall(),
        "rejects": conn.execute(query("status_rejects")).fetchone(),
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    with _database(settings) as conn:
        status = read_status(conn)
    if args.json:
        _print_json(status, sys.stdout)
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
        ("oldest pending", f"{_seconds(lag['oldest_pending_age'])} since received"),
        ("oldest due waited", _seconds(lag["oldest_due_wait"])),
        ("received", f"{lag['received_1m']} in 1 min, {lag['received_5m']} in 5 min"),
        ("applied", f"{lag['applied_1m']} in 1 min, {lag['applied_5m']} in 5 min"),
        ("rejected as stale", f"{lag['stale_5m']} in 5 min (the version gate)"),
        ("dead-lettered", f"{lag['dead_5m']} in 5 min"),
        ("drain estimate", "-" if lag["drain_eta_seconds"] is None else f"{lag['drain_eta_seconds']}s"),
        ("workers", f"{lag['worker_sessions']} sessions, {lag['lease_holders']} holding leases"),
        ("oldest transaction", _seconds(lag["oldest_xact_age"])),
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


# -- inbox dlq ------------------------------------------------------------------------------------

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
    with _database(settings) as conn:
        rows = conn.execute(query("dlq_list"), params).fetchall()
    if args.json:
        _print_json(rows, sys.stdout)
        return
    shown = [{**r, "error_message": _shorten(r["error_message"], 60)} for r in rows]
    print_table(shown, LIST_COLUMNS, sys.stdout)
    if len(rows) == args.limit:
        print(f"(first {args.limit}; narrow the filters or raise --limit)", file=sys.stderr)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _find(conn: DictConnection, dead_letter_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(query("dlq_show"), {"id": dead_letter_id}).fetchone()
    if row is None:
        raise CliError(f"no dead letter with id {dead_letter_id}")
    return row


def cmd_dlq_show(args: argparse.Namespace, settings: Settings) -> None:
    with _database(settings) as conn:
        row = _find(conn, args.id)
    if args.json:
        _print_json(row, sys.stdout)
        return
    for name, value in row.items():
        if name != "event_data":
            print(f"{name:<16} {'NULL' if value is None else value}")
    print("event_data:")
    print(json.dumps(_jsonable(row["event_data"]), indent=2))


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> None:
    if bool(args.ids) == args.all_matching:
        raise CliError("give dead letter ids, or --all-matching with filters, not both and not neither")
    if not args.all_matching and any(_filters(args).values()):
        raise CliError("--quota-id, --error-class and --since go with --all-matching")
    with _database(settings) as conn:
        rows = _replay_matching(conn, args) if args.all_matching else _replay_ids(conn, args.ids, args.note)
    if args.json:
        _print_json(rows, sys.stdout)
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
    with _database(settings) as conn:
        row = conn.execute(query("dlq_resolve"), {"id": args.id, "note": args.note}).fetchone()
        if row is None or row["resolved_at"] is None:
            existing = _find(conn, args.id)
            raise CliError(f"dead letter {args.id} was already resolved at {existing['resolved_at']}")
    print(f"resolved {args.id} at {row['resolved_at'].isoformat()}")


# -- inbox replay FILE ----------------------------------------------------------------------------


def event_texts(body: bytes) -> list[str]:
    """The raw text of each event in a JSON array, NDJSON, or a single JSON value."""
    texts = split_body(body)
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        return list(_array_elements(texts[0]))
    return texts


def _array_elements(text: str) -> Iterator[str]:
    """Each element of a JSON array as its own text, verbatim (digits kept), for batching."""
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
    position = text.index("[") + 1
    while True:
        position = _skip(text, position, " \t\r\n")
        if text.startswith("]", position):
            return
        try:
            _, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise BadBatch([(None, f"not valid JSON: {exc}")], unparseable=True) from exc
        yield text[position:end]
        position = _skip(text, end, " \t\r\n")
        if text.startswith(",", position):
            position += 1
        elif not text.startswith("]", position):
            raise BadBatch(
                [(None, f"not valid JSON: expected ',' or ']' at character {position}")], unparseable=True
            )


def _skip(text: str, position: int, chars: str) -> int:
    while position < len(text) and text[position] in chars:
        position += 1
    return position


def parse_in_batches(texts: Sequence[str], batch_size: int) -> list[ParsedBatch]:
    """Every batch parsed and keyed before anything is stored: one bad event stores nothing."""
    batches: list[ParsedBatch] = []
    problems: list[tuple[int | None, str]] = []
    for start in range(0, len(texts), batch_size):
        try:
            batches.append(parse_texts(texts[start : start + batch_size]))
        except BadBatch as exc:
            problems.extend((None if i is None else start + i, reason) for i, reason in exc.problems)
    if problems:
        raise BadBatch(problems, unparseable=False)
    return batches


def cmd_replay(args: argparse.Namespace, settings: Settings) -> None:
    body = sys.stdin.buffer.read() if args.file == "-" else _read_file(args.file)
    try:
        batches = parse_in_batches(event_texts(body), args.batch_size)
    except BadBatch as exc:
        shown = "; ".join(f"event {i}: {r}" if i is not None else r for i, r in exc.problems[:5])
        more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
        raise CliError(f"nothing replayed: {shown}{more}") from exc
    total = sum(len(b) for b in batches)
    accepted = duplicates = 0
    progress = Progress(total, sys.stderr)
    with _database(settings) as conn:
        for batch in batches:
            result = store(conn, batch, "replay")
            accepted += result.accepted
            duplicates += result.duplicates
            progress.advance(len(batch))
    progress.done()
    if args.json:
        _print_json({"events": total, "accepted": accepted, "duplicates": duplicates}, sys.stdout)
    else:
        print(f"replayed {total} events: {accepted} new, {duplicates} already in the inbox (duplicates)")


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


class Progress:
    """A bar on a terminal; a line per step elsewhere (logs, CI)."""

    def __init__(self, total: int, out: TextIO, width: int = 30) -> None:
        self.total = total
        self.done_count = 0
        self.out = out
        self.width = width
        self.tty = out.isatty()

    def advance(self, n: int) -> None:
        self.done_count += n
        share = self.done_count / self.total if self.total else 1.0
        if self.tty:
            filled = round(share * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r[{bar}] {self.done_count}/{self.total}", end="", file=self.out, flush=True)
        else:
            print(
                f"replay: {self.done_count}/{self.total} events stored ({share:.0%})",
                file=self.out,
                flush=True,
            )

    def done(self) -> None:
        if self.tty:
            print(file=self.out)


# -- the parsers ----------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add status, dlq and replay to the `inbox` command's subparsers."""
    status = sub.add_parser("status", help="inbox state, lag, dead letters and rejects")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

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

    file_replay = sub.add_parser(
        "replay", help="store events from a file (JSON array or NDJSON, - for stdin) with source 'replay'"
    )
    file_replay.add_argument("file", help="path, or - for standard input")
    file_replay.add_argument("--batch-size", type=int, default=1000, help="events per transaction")
    file_replay.add_argument("--json", action="store_true", help="machine-readable summary")
    file_replay.set_defaults(func=cmd_replay)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quota-id", type=uuid.UUID, default=None, help="one quota")
    parser.add_argument("--error-class", default=None, help="invalid, delete_blocked, apply_error, ...")
    parser.add_argument(
        "--since", type=since_arg, default=None, help="created at or after: ISO time or 30m/2h/7d"
    )
