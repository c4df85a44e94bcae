"""`inbox bench`: runs inbox-bench (package inbox_bench, the `bench` extra); the service never imports it."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from typing import Any

from inbox.commands.errors import CliError
from inbox.settings import Settings


def cmd_bench(args: argparse.Namespace, settings: Settings) -> None:
    if importlib.util.find_spec("inbox_bench") is None:
        raise CliError("inbox bench runs inbox-bench, which is not installed here: pip install -e '.[bench]'")
    code = subprocess.call([sys.executable, "-m", "inbox_bench", *args.args])
    if code:
        raise SystemExit(code)  # inbox-bench has said why, in one line


def register(sub: Any) -> None:
    # Every argument goes to inbox-bench as given ("+" keeps argparse from reading its options here).
    bench = sub.add_parser(
        "bench", help="run inbox-bench (the `bench` extra): see `inbox bench --help`", prefix_chars="+"
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
