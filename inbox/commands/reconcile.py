"""`inbox reconcile`: compare public.quota with Titan's truth, and --repair (inbox/reconcile.py).

Exit codes: 0 when public.quota equals the source, 1 when drift was found (repaired or not), 2 on
an error (nothing compared, or a repair refused).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TextIO

from inbox import reconcile
from inbox.commands.config import database
from inbox.commands.errors import CliError
from inbox.commands.output import TerminalBar, dumps_exact
from inbox.ingest import BadBatch, stream_values
from inbox.settings import Settings
from inbox.text import printable

EXIT_DRIFT = 1
EXIT_ERROR = 2  # nothing compared, or a repair refused


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
    with database(settings, application_name="quota-inbox reconcile") as queries:
        try:
            loaded = reconcile.load_source(queries, values, bar.show)
        except (BadBatch, reconcile.SourceUnreadable) as exc:
            bar.done()
            shown = "; ".join(f"event {i}: {r}" if i is not None else r for i, r in exc.problems[:5])
            message = f"nothing compared, the source cannot be read: {shown or exc}"
            raise CliError(message, EXIT_ERROR) from exc
        bar.done()
        summary = reconcile.compare(queries, loaded)
        for row in reconcile.drift_rows(queries):
            if args.json:
                _json_line({"record": "drift", **row}, out)
            else:
                print(printable(reconcile.drift_line(row)), file=out)  # source values from outside
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
            repaired = reconcile.repair(queries, progress=repair_bar.show)
            repair_bar.done()
            if args.json:
                _json_line(repaired.as_json(), out)
            else:
                print(reconcile.repair_line(repaired), file=out)
    return EXIT_DRIFT if summary.drifting else 0


def _json_line(record: dict[str, Any], out: TextIO) -> None:
    """One JSON line; numbers keep their stored digits (dumps_exact)."""
    print(dumps_exact(record, indent=None), file=out)


# -- the parser -----------------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(sub: Any) -> None:
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
        type=_count,
        default=1000,
        help="refuse a repair that would delete more quotas than this (default 1000): a partial source "
        "must not empty CSLA",
    )
    rec.set_defaults(func=cmd_reconcile)
