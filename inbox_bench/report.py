"""The results: a table on stdout, a JSON file, a PNG chart; the machine stated beside the figures."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from inbox_bench.measure import Measurement

THROUGHPUT_PATHS = (
    "per_event",
    "pgmq",
    "ceiling",
    "ceiling_honest",
    "ceiling_batch",
    "ceiling_batch_unkeyed",
    "http",
    "kafka",
)


def machine() -> dict[str, Any]:
    import psutil

    load1, load5, _ = os.getloadavg()
    return {
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average_at_start": [round(load1, 2), round(load5, 2)],
    }


def ratios(results: dict[str, Measurement]) -> dict[str, float]:
    """The comparisons the targets are stated in (all from this one run)."""
    out: dict[str, float] = {}
    http = results.get("http")
    for key, name in (
        ("per_event", "http_over_per_event"),
        ("pgmq", "http_over_pgmq"),
        ("ceiling", "http_over_ceiling"),
        ("ceiling_honest", "http_over_honest_ceiling"),
    ):
        if http is not None and key in results and results[key].rate > 0:
            out[name] = round(http.rate / results[key].rate, 3)
    honest = results.get("ceiling_honest")
    pgmq = results.get("pgmq")
    kafka = results.get("kafka")
    if kafka is not None and pgmq is not None and pgmq.rate > 0 and kafka.rate > 0:
        out["kafka_over_pgmq"] = round(kafka.rate / pgmq.rate, 3)
        bare = kafka.detail.get("bare_consume", {}).get("events_per_second")
        if bare:
            out["kafka_bare_consume_over_kafka"] = round(bare / kafka.rate, 3)
    if honest is not None and honest.rate > 0:
        if pgmq is not None:
            out["honest_ceiling_over_pgmq"] = round(honest.rate / pgmq.rate, 3)
        if "ceiling" in results:
            out["honest_ceiling_over_old_ceiling"] = round(honest.rate / results["ceiling"].rate, 3)
    for key in ("ceiling_batch", "ceiling_batch_unkeyed"):  # the batch log (batchlog.py), same run
        batch = results.get(key)
        if batch is None or batch.rate <= 0:
            continue
        if pgmq is not None and pgmq.rate > 0:
            out[f"{key}_over_pgmq"] = round(batch.rate / pgmq.rate, 3)
        if honest is not None and honest.rate > 0:
            out[f"{key}_over_honest_ceiling"] = round(batch.rate / honest.rate, 3)
            out[f"{key}_apply_over_honest_ceiling_apply"] = round(
                batch.detail["apply_events_per_second"] / honest.detail["apply_events_per_second"], 3
            )
    shipped = results.get("apply_as_shipped")
    if shipped is not None and honest is not None and honest.detail.get("apply_events_per_second"):
        # issue 13's target: the apply alone >= 75% of the honest ceiling's apply
        out["apply_over_honest_ceiling_apply"] = round(
            shipped.rate / honest.detail["apply_events_per_second"], 3
        )
    for variant in ("outbox_off", "triggers_off"):
        other = results.get(f"apply_{variant}")
        if shipped is not None and other is not None and other.rate > 0:
            out[f"apply_with_{variant.split('_')[0]}_over_without"] = round(shipped.rate / other.rate, 3)
    return out


def document(results: dict[str, Measurement], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "results": {k: m.as_json() for k, m in results.items()}, "ratios": ratios(results)}


def table(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Quota Inbox benchmark ({'quick' if doc['quick'] else 'full'}) on {m['cpu_cores']} cores, "
        f"{m['memory_gb']} GB, PostgreSQL {doc['postgres']['server_version']} (embedded), "
        f"load average at start {m['load_average_at_start'][0]}",
        f"{'path':<54}{'events':>10}{'seconds':>10}{'events/s':>12}",
    ]
    for result in doc["results"].values():
        if "events_per_second" in result and result.get("seconds"):
            lines.append(
                f"{result['title']:<54}{result['events']:>10,}{result['seconds']:>10.2f}"
                f"{result['events_per_second']:>12,.0f}"
            )
        elif "todo" in result:
            lines.append(f"{result['title']:<54}  TODO: {result['todo']}")
        elif "error" in result:
            lines.append(f"{result['title']:<54}  FAILED: {result['error'][:200]}")
    for key in THROUGHPUT_PATHS:  # each that measured its CPU (per_event does not)
        cpu = doc["results"].get(key, {}).get("cpu_us_per_event")
        if cpu:
            shown = ", ".join(f"{name} {us:,.0f}" for name, us in cpu.items())
            lines.append(f"CPU us per event, {key}: {shown}")
    kafka = doc["results"].get("kafka", {})
    if kafka.get("bare_consume"):
        bare, fill = kafka["bare_consume"], kafka["fill"]
        lines.append(
            f"kafka: {kafka['stored_batches']:,} batches of {kafka['events_per_stored_batch']} events stored "
            f"in {kafka['ingest_seconds']} s; bare consume of the topic {bare['events_per_second']:,.0f}/s "
            f"(CPU us/event: {', '.join(f'{k} {v:,.0f}' for k, v in bare['cpu_us_per_event'].items())}); "
            f"fill {fill['events_per_second']:,.0f}/s"
        )
    latency = doc["results"].get("latency")
    if latency:
        for side in ("server_ms", "client_ms"):
            shown = "  ".join(f"{k} {v}" for k, v in latency[side].items())
            lines.append(f"latency {side[:-3]:<7} ms  {shown}")
    soak = doc["results"].get("soak")
    if soak:
        lines.append(
            f"soak: first tenth {soak['first_tenth_events_per_second']:,.0f}/s, last tenth "
            f"{soak['last_tenth_events_per_second']:,.0f}/s ({soak['last_over_first']:.0%})"
            + (
                f"; last over the median of tenths 2-9 {soak['last_over_median_of_tenths_2_to_9']:.0%}"
                if "last_over_median_of_tenths_2_to_9" in soak
                else ""
            )
        )
        if "tenths_events_per_second" in soak:
            lines.append(
                "soak per tenth, events/s: "
                + ", ".join(f"{v:,.0f}" for v in soak["tenths_events_per_second"])
            )
        for k, tenth in enumerate(soak.get("tenths", []), 1):
            cpu, rate = tenth["cpu_us_per_event"], tenth["events"] / max(tenth["seconds"], 1e-9)
            lines.append(
                f"soak tenth {k}: {rate:,.0f}/s, CPU us/event postgres "
                f"{cpu.get('postgres', 0):,.0f} + ended sessions {cpu.get('postgres reaped', 0):,.0f}, "
                f"WAL {tenth['wal_bytes_per_event']:,} B/event, full-page images "
                f"{tenth['wal_fpi_per_1000_events']:,.0f}/1000 events, checkpoints {tenth['checkpoints']}, "
                f"autovacuums {sum(tenth['autovacuums'].values())}, blocks read from the kernel per 1000 "
                f"events {sum(tenth['blocks_read_per_1000_events'].values()):,.0f}"
            )
        lines.append("soak peak RSS MB: " + ", ".join(f"{k} {v}" for k, v in soak["peak_rss_mb"].items()))
        for name, mb in soak.get("files_mb", {}).items():
            lines.append(
                f"soak files MB {name}: peak {mb['peak']:,.1f}, drained {mb['drained']:,.1f}, "
                f"after retention {mb['after_retention']:,.1f}"
            )
        sizes = soak["after_retention"]
        lines.append(
            f"after retention: inbox {sizes['inbox_rows']:,} rows {sizes['inbox_bytes'] / 2**20:.0f} MB, "
            f"quota {sizes['quota_rows']:,} rows {sizes['quota_bytes'] / 2**20:.0f} MB, "
            f"outbox {sizes['outbox_messages']:,} messages {sizes['outbox_bytes'] / 2**20:.0f} MB"
        )
    lines.extend(f"{name}: {value}" for name, value in doc["ratios"].items())
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def chart(doc: dict[str, Any], path: Path) -> None:
    """Throughput per path, and the apply with and without the outbox and the triggers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["results"]
    bars = [
        (r["title"], r["events_per_second"])
        for k, r in results.items()
        if k in THROUGHPUT_PATHS and "todo" not in r
    ]
    bars += [(r["title"], r["events_per_second"]) for k, r in results.items() if k.startswith("apply_")]
    m = doc["machine"]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(bars) + 2.2))
    labels = [title for title, _ in bars][::-1]
    values = [value for _, value in bars][::-1]
    ax.barh(labels, values, color=["#4c72b0" if "ours" in t else "#999999" for t in labels])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=9)
    ax.set_xlabel("events per second (higher is better)")
    latency = results.get("latency", {})
    ax.set_title(
        f"Quota Inbox, one run on {m['cpu_cores']} cores / {m['memory_gb']} GB, embedded PostgreSQL "
        f"{doc['postgres']['server_version']}\n"
        f"p99 at 1,000/s: 202 -> seen applied {latency.get('client_ms', {}).get('p99', '?')} ms, "
        f"received -> applied {latency.get('server_ms', {}).get('p99', '?')} ms"
        + ("   (quick mode: tiny sizes, not for comparison)" if doc["quick"] else ""),
        fontsize=10,
    )
    ax.set_xlim(0, max(values) * 1.18 if values else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
