"""The `inbox` command: one module per command group; nothing in the product imports this package.

| module     | commands                                                        |
|------------|-----------------------------------------------------------------|
| service    | migrate, serve, work, run (demo: `run --demo`)                  |
| consume    | consume (Kafka)                                                 |
| status     | status                                                          |
| dlq        | dlq list, show, replay, resolve                                 |
| replay     | replay FILE                                                     |
| outbox     | outbox tail                                                     |
| quota      | quota show (inbox/quota_story.py)                               |
| reconcile  | reconcile (inbox/reconcile.py)                                  |
| bench      | bench (delegates to inbox/bench)                                |
| dsn        | dsn (the connection string of the database in use)              |
| errors     | CliError, exit codes                                            |
| config     | settings loading, settings help, the DSN, a command's connection |
| output     | tables, JSON, progress                                          |

Expected failures (unknown id, nothing to do, bad input) end as one line and exit code 1; a
database that does not answer ends as exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from inbox.commands import bench, consume, dlq, dsn, outbox, quota, reconcile, replay, service, status
from inbox.commands.config import load_settings, settings_help
from inbox.commands.errors import EXIT_DATABASE, CliError, one_line
from inbox.db.embedded import EmbeddedError
from inbox.db.errors import Unreachable
from inbox.logs import redact, setup_logging

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
LONG_RUNNING = {"serve", "work", "run", "consume"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inbox",
        description="Quota Inbox: Titan quota CDC events -> PostgreSQL inbox -> CSLA quota table.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="DEBUG, INFO, WARNING or ERROR, any case (default: INFO for the long-running commands serve, "
        "work, run and consume; WARNING for the one-shot ones; ERROR for run --demo). Logs go to stderr.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (service, consume, outbox, status, dlq, replay, dsn, quota, reconcile, bench):
        group.register(sub)
    return parser


def default_log_level(args: argparse.Namespace) -> str:
    """A one-shot command's answer is its output: its logs stay quiet unless something is wrong."""
    if getattr(args, "demo", False):
        return "ERROR"  # the demo dead-letters events on purpose: its tables say so
    return "INFO" if args.command in LONG_RUNNING else "WARNING"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or default_log_level(args))
    try:
        settings = load_settings()
        redact(settings.secret_values())
        code = args.func(args, settings)  # None, or an exit code that is no error (reconcile: drift)
    except CliError as exc:
        print(f"inbox: error: {exc}", file=sys.stderr)
        return exc.code
    except EmbeddedError as exc:
        print(f"inbox: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_DATABASE
    except Unreachable as exc:
        print(f"inbox: error: {one_line(f'database unreachable: {exc}')}", file=sys.stderr)
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return 130
    return int(code or 0)
