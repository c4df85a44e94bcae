"""`inbox outbox tail [--last N] [--follow] [--ack]`: the outbox queue quota_changes as JSON lines."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from inbox import outbox
from inbox.commands.config import database
from inbox.settings import Settings


def cmd_outbox_tail(args: argparse.Namespace, settings: Settings) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    printed = 0
    with database(settings, application_name="quota-inbox outbox") as queries:
        try:
            for row in outbox.messages(queries, last=args.last, follow=args.follow, ack=args.ack, stop=stop):
                outbox.render(row, sys.stdout)
                printed += 1
        except KeyboardInterrupt:
            pass
    # stdout carries the messages (JSON lines, for jq and pipes); what happened goes to stderr.
    if args.ack:
        print(f"acknowledged {printed} message(s): archived in pgmq.a_{outbox.QUEUE}", file=sys.stderr)
    elif not printed and not args.follow:
        print(f"the outbox queue {outbox.QUEUE} is empty", file=sys.stderr)


def register(sub: Any) -> None:
    parser = sub.add_parser("outbox", help="look at the outbox queue quota_changes")
    outbox_sub = parser.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    tail = outbox_sub.add_parser(
        "tail", help="print outbox messages as JSON lines (peek; --ack consumes and archives them)"
    )
    tail.set_defaults(func=cmd_outbox_tail)
    tail.add_argument("--last", type=int, default=20, help="how many recent messages to start with")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new messages")
    tail.add_argument("--ack", action="store_true", help="consume: read, print, then archive each page")
