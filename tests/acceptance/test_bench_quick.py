"""`inbox bench --quick` end to end, as CI runs it: every path measured, nothing timed here.

The figures of a quick run on a shared CI machine say nothing; the test checks that each path ran
and produced a result, that the report files exist, and that the table was printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
THROUGHPUT = ("per_event", "pgmq", "ceiling", "ceiling_honest", "http", "kafka", "latency", "soak")
BATCH_LOG = ("ceiling_batch", "ceiling_batch_unkeyed")  # issue 13: PgQ's batch log, SQL only
OVERHEAD = ("apply_as_shipped", "apply_outbox_off", "apply_triggers_off")
EDGE = ("edge_slow", "edge_fast")  # decoding one Titan body at ingest, slow path and fast path
APPLY = ("apply_only_shipped",)  # issue 13: the apply alone, beside the honest ceiling's apply


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_bench_measures_every_path(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inbox.cli",
            "--log-level",
            "WARNING",
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    results = doc["results"]

    for key in (*THROUGHPUT, *BATCH_LOG, *OVERHEAD, *EDGE, *APPLY):
        assert key in results, f"{key} missing from {sorted(results)}"
        assert "todo" not in results[key], results[key]["todo"]
        assert positive(results[key]["events"]), (key, results[key])
        assert positive(results[key]["events_per_second"]), (key, results[key])
    server, client = results["latency"]["server_ms"], results["latency"]["client_ms"]
    assert all(positive(server[p]) for p in ("p50", "p95", "p99")), results["latency"]
    # Client side starts at the 202's arrival: under load the poller may see an event finished before
    # its 202 reaches the client, so a percentile can be negative; it must still be measured and ordered.
    assert all(isinstance(client[p], float | int) for p in ("p50", "p95", "p99")), results["latency"]
    assert client["p50"] <= client["p95"] <= client["p99"], results["latency"]
    soak = results["soak"]
    assert positive(soak["first_tenth_events_per_second"]) and positive(soak["last_tenth_events_per_second"])
    assert soak["peak_rss_mb"] and all(positive(mb) for mb in soak["peak_rss_mb"].values())
    assert soak["after_retention"]["quota_rows"] > 0
    assert set(doc["ratios"]) >= {
        "http_over_per_event",
        "http_over_pgmq",
        "http_over_ceiling",
        "http_over_honest_ceiling",
        "apply_over_honest_ceiling_apply",
        "kafka_over_pgmq",
        "kafka_bare_consume_over_kafka",
        "ceiling_batch_over_pgmq",
        "ceiling_batch_over_honest_ceiling",
        "ceiling_batch_unkeyed_over_pgmq",
        "ceiling_batch_unkeyed_over_honest_ceiling",
    }
    # path 5 says where its time goes: CPU per process, the batches stored, the broker's side alone
    kafka = results["kafka"]
    assert set(kafka["cpu_us_per_event"]) >= {"inbox consume", "inbox work 1", "postgres", "tansu"}
    assert positive(kafka["cpu_us_per_event"]["inbox consume"]) and positive(kafka["stored_batches"])
    assert kafka["bare_consume"]["events"] == kafka["events"] and positive(kafka["fill"]["events_per_second"])
    # the honest ceiling did the pipeline's work: every event finished, one message per change (each
    # event of the stream is a change), CPU stated for PostgreSQL, each session and the client
    honest = results["ceiling_honest"]
    assert honest["statuses"] == {"applied": honest["events"]}, honest["statuses"]
    assert honest["outbox_messages"] == honest["events"]
    assert honest["sessions"] == 2
    assert set(honest["cpu_us_per_event"]) == {
        "postgres",
        "postgres session 1",
        "postgres session 2",
        "bench client",
    }
    assert positive(honest["cpu_us_per_event"]["postgres"])
    # the batch log (keyed and not) reached the honest ceiling's end state from the same events: quota
    # rows and gate by content, the outbox messages, the dead letters; every event applied, counted by
    # its batch, and each event still stored read back in exactly one batch; one table truncated
    for key in BATCH_LOG:
        batch = results[key]
        assert batch["same_end_state_as_ceiling_honest"] is True, (key, batch.get("end_state_differences"))
        assert batch["statuses"] == {"applied": batch["events"]}, (key, batch["statuses"])
        assert batch["outbox_messages"] == batch["events"] and batch["outcome_rows"] == 0, (key, batch)
        assert batch["stored_statuses"] == {"applied": batch["stored_events_after_retention"]}, (key, batch)
        assert positive(batch["truncated_events"]), (key, batch["rotations"])
        assert batch["stored_events_after_retention"] + batch["truncated_events"] == batch["events"], batch
        assert any(r["truncated"] for r in batch["rotations"]), (key, batch["rotations"])
        assert positive(batch["batches"]) and positive(batch["apply_events_per_second"]), (key, batch)
        assert set(batch["cpu_us_per_event"]) == {
            "postgres",
            "postgres session 1",
            "postgres session 2",
            "postgres ticker",
            "bench client",
        }, (key, batch["cpu_us_per_event"])
        assert positive(batch["cpu_us_per_event"]["postgres"]), (key, batch)
    keyed, unkeyed = results["ceiling_batch"], results["ceiling_batch_unkeyed"]
    assert keyed["keyed"] is True and unkeyed["keyed"] is False
    # keyed: events sent again (the current table's, untimed) are counted as duplicates, none stored
    # (none sent when a rotation just after the last COPY left the current table empty)
    assert keyed["duplicates"] == keyed["redelivered_events"] <= 500, keyed
    assert keyed["chunks_through_stage"] == (1 if keyed["redelivered_events"] else 0), keyed
    assert unkeyed["duplicates"] == unkeyed["redelivered_events"] == unkeyed["chunks_through_stage"] == 0
    # the shipped apply and the honest ceiling's reach the same end state from the same events
    assert results["apply_only_shipped"]["same_end_state_as_ceiling"] is True, results["apply_only_shipped"]
    assert positive(doc["machine"]["cpu_cores"]) and positive(doc["machine"]["memory_gb"])

    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "events/s" in done.stdout and "cores" in done.stdout
