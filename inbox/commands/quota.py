"""`inbox quota show QUOTA_ID`: the story of one quota (inbox/quota_story.py)."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from inbox import quota_story
from inbox.commands.config import database
from inbox.commands.output import print_json
from inbox.settings import Settings, positive_int


def cmd_quota_show(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 for a quota no table knows (the verdict says so), 0 otherwise."""
    with database(settings) as queries:
        story = quota_story.read_story(queries, args.quota_id, args.limit)
    if args.json:
        print_json(story.as_json(), sys.stdout)
    else:
        quota_story.render(story, sys.stdout)
    return 0 if story.known else 1


def register(sub: Any) -> None:
    quota = sub.add_parser("quota", help="look at one quota")
    quota_sub = quota.add_subparsers(dest="quota_command", required=True, metavar="COMMAND")
    show = quota_sub.add_parser(
        "show",
        help="the whole story of one quota: verdict, row, gate, events, dead letters, outbox, repairs",
    )
    show.add_argument("quota_id", type=uuid.UUID, help="the quota's UUID")
    show.add_argument(
        "--limit", type=positive_int, default=100, help="newest rows shown per list (default 100)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable (format inbox.quota_story/1)")
    show.set_defaults(func=cmd_quota_show)
