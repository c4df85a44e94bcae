"""`inbox replay FILE`: store events from a file (JSON array or NDJSON, - for stdin), source 'replay'."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from inbox.commands.config import database
from inbox.commands.errors import CliError
from inbox.commands.output import Progress, print_json
from inbox.ingest import BadBatch, event_texts, parse_in_batches
from inbox.settings import Settings, positive_int
from inbox.store import store


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
    with database(settings) as queries:
        for batch in batches:
            result = store(queries.conn, batch, "replay")
            accepted += result.accepted
            duplicates += result.duplicates
            progress.advance(len(batch))
    progress.done()
    if args.json:
        print_json({"events": total, "accepted": accepted, "duplicates": duplicates}, sys.stdout)
    else:
        print(f"replayed {total} events: {accepted} new, {duplicates} already in the inbox (duplicates)")


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


def register(sub: Any) -> None:
    file_replay = sub.add_parser(
        "replay", help="store events from a file (JSON array or NDJSON, - for stdin) with source 'replay'"
    )
    file_replay.add_argument("file", help="path, or - for standard input")
    file_replay.add_argument("--batch-size", type=positive_int, default=1000, help="events per transaction")
    file_replay.add_argument("--json", action="store_true", help="machine-readable summary")
    file_replay.set_defaults(func=cmd_replay)
