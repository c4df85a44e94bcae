"""`inbox quota show` and `inbox reconcile`: arguments and output only.

The logic lives in inbox/quota_story.py and inbox/reconcile.py. Exit codes of reconcile: 0 when
public.quota equals the source, 1 when drift was found (repaired or not), 2 on an error (nothing
compared, or a repair refused).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any, TextIO

from inbox import quota_story, reconcile
from inbox.cli import EXIT_DATABASE, CliError
from inbox.ingest import BadBatch, stream_values
from inbox.ops import _database, _jsonable, _print_json
from inbox.settings import Settings

EXIT_DRIFT = 1
EXIT_ERROR = EXIT_DATABASE  # 2: nothing compared, or a repair refused


class TerminalBar:
    """A progress bar on a terminal, nothing elsewhere (logs and pipes get the report only)."""

    def __init__(
        self,
        out: TextIO,
        label: str,
        total: int | None = None,
        position: Callable[[], int] | None = None,
        width: int = 30,
    ) -> None:
        """total: of what position() (bytes read) or show()'s count measures; None: a count only."""
        self.out = out
        self.label = label
        self.total = total
        self.position = position
        self.width = width
        self.shown = out.isatty()

    def show(self, count: int) -> None:
        if not self.shown:
            return
        if self.total:
            done = self.position() if self.position else count
            filled = round(min(done / self.total, 1.0) * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r{self.label} [{bar}] {count:,}", end="", file=self.out, flush=True)
        else:
            print(f"\r{self.label} {count:,}", end="", file=self.out, flush=True)

    def done(self) -> None:
        if self.shown:
            print(file=self.out, flush=True)


# -- inbox quota show -----------------------------------------------------------------------------


def cmd_quota_show(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings) as conn:
        story = quota_story.read_story(conn, args.quota_id, args.limit)
    if args.json:
        _print_json(story.as_json(), sys.stdout)
    else:
        quota_story.render(story, sys.stdout)
    return 0 if story.known else 1


# -- inbox reconcile ------------------------------------------------------------------------------


def _source(args: argparse.Namespace) -> tuple[Iterable[Any], TerminalBar]:
    if args.source_dsn or args.source_table:
        if args.source is not None or not (args.source_dsn and args.source_table):
            raise CliError("give SOURCE, or --source-dsn with --source-table, not both", EXIT_ERROR)
        bar = TerminalBar(sys.stderr, "reading the source table")
        return reconcile.table_values(args.source_dsn, args.source_table), bar
    if args.source is None:
        raise CliError(
            "give SOURCE (a file of events, - for stdin) or --source-dsn with --source-table", EXIT_ERROR
        )
    stream: IO[bytes]
    if args.source == "-":
        stream, size = sys.stdin.buffer, None
    else:
        try:
            stream = open(args.source, "rb")  # noqa: SIM115 -- read as a stream to the end of the command
            size = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise CliError(f"cannot read {args.source}: {exc.strerror}", EXIT_ERROR) from exc
    return stream_values(stream), TerminalBar(sys.stderr, "reading the source", size, stream.tell)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    values, bar = _source(args)
    out = sys.stdout
    with _database(settings) as conn:
        try:
            loaded = reconcile.load_source(conn, values, bar.show)
        except (BadBatch, reconcile.SourceUnreadable) as exc:
            bar.done()
            shown = "; ".join(f"event {i}: {r}" if i is not None else r for i, r in exc.problems[:5])
            message = f"nothing compared, the source cannot be read: {shown or exc}"
            raise CliError(message, EXIT_ERROR) from exc
        bar.done()
        summary = reconcile.compare(conn, loaded)
        for row in reconcile.drift_rows(conn):
            if args.json:
                _json_line({"record": "drift", **row}, out)
            else:
                print(reconcile.drift_line(row), file=out)
        if args.json:
            _json_line(summary.as_json(), out)
        else:
            for line in reconcile.summary_lines(summary):
                print(line, file=out)
        if args.repair and summary.drifting:
            extra = summary.by_drift()["extra"]
            if extra > args.max_deletes:
                raise CliError(
                    f"repair refused: it would delete {extra} quotas, more than --max-deletes "
                    f"{args.max_deletes}; check that the source holds every quota, then raise --max-deletes",
                    EXIT_ERROR,
                )
            repair_bar = TerminalBar(sys.stderr, "filing repairs", summary.drifting)
            repaired = reconcile.repair(conn, progress=repair_bar.show)
            repair_bar.done()
            if args.json:
                _json_line(repaired.as_json(), out)
            else:
                print(reconcile.repair_line(repaired), file=out)
    return EXIT_DRIFT if summary.drifting else 0


def _json_line(record: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(_jsonable(record), separators=(",", ":")), file=out)


# -- the parsers ----------------------------------------------------------------------------------


def register(sub: Any) -> None:
    quota = sub.add_parser("quota", help="look at one quota")
    quota_sub = quota.add_subparsers(dest="quota_command", required=True, metavar="COMMAND")
    show = quota_sub.add_parser(
        "show",
        help="the whole story of one quota: row, version gate, events, dead letters, outbox, repairs",
    )
    show.add_argument("quota_id", type=uuid.UUID, help="the quota's UUID")
    show.add_argument("--limit", type=int, default=100, help="newest rows shown per list (default 100)")
    show.add_argument("--json", action="store_true", help="machine-readable (format inbox.quota_story/1)")
    show.set_defaults(func=cmd_quota_show)

    rec = sub.add_parser(
        "reconcile",
        help="compare public.quota with Titan's truth; exit 0 equal, 1 drift, 2 error",
        description="Compare public.quota with Titan's truth (one event per quota with its current "
        "state, in any format the inbox accepts, or Titan's table); --repair files the corrections "
        "through the inbox. Exit 0: equal; 1: drift found; 2: error.",
    )
    rec.add_argument("source", nargs="?", help="a file of events (JSON array or NDJSON), - for stdin")
    rec.add_argument("--source-dsn", default=None, help="Titan's database, read only (with --source-table)")
    rec.add_argument("--source-table", default=None, help="Titan's quota table, e.g. public.quota")
    rec.add_argument("--json", action="store_true", help="JSON lines: one per drifting quota, then a summary")
    rec.add_argument(
        "--repair", action="store_true", help="file corrections through the inbox (source 'reconcile')"
    )
    rec.add_argument(
        "--max-deletes",
        type=int,
        default=1000,
        help="refuse a repair that would delete more quotas than this (default 1000): a partial source "
        "must not empty CSLA",
    )
    rec.set_defaults(func=cmd_reconcile)
