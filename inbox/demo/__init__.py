"""`inbox run --demo`: feed a bundled sample stream through the real HTTP path and show the outcome."""

from __future__ import annotations

import json
import time
import urllib.request
from importlib.resources import files
from typing import Any

from inbox.db.connect import connect
from inbox.db.sqlfiles import query


def sample_lines() -> list[str]:
    text = files("inbox.demo").joinpath("sample.ndjson").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def post(base_url: str, body: bytes, content_type: str, token: str | None) -> dict[str, Any]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{base_url}/events", data=body, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own loopback server)
        result: dict[str, Any] = json.loads(response.read())
        return result


def wait_until_settled(dsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            counts = {row["status"]: row["n"] for row in conn.execute(query("inbox_counts"))}
            if not counts.get("pending") and not counts.get("processing"):
                return
            time.sleep(0.05)
    raise TimeoutError("the demo events were not all processed in time")


def run_demo(base_url: str, dsn: str, token: str | None, out: Any) -> None:
    lines = sample_lines()
    half = len(lines) // 2
    first = post(base_url, "\n".join(lines[:half]).encode(), "application/x-ndjson", token)
    second = post(base_url, ("[" + ",".join(lines[half:]) + "]").encode(), "application/json", token)
    print(f"POST /events (NDJSON, {half} events)     -> 202 {first}", file=out)
    print(f"POST /events (JSON array, {len(lines) - half} events) -> 202 {second}", file=out)
    wait_until_settled(dsn)
    with connect(dsn, autocommit=True) as conn:
        print("\ninbox.quota_events by status:", file=out)
        for row in conn.execute(query("inbox_counts")):
            print(f"  {row['status']:<10} {row['n']}", file=out)
        print("\npublic.quota:", file=out)
        print_table(
            conn.execute(query("quota_states")).fetchall(),
            [
                "quota_id",
                "source_version",
                "direction",
                "period_month",
                "qty_t",
                "tolerance_pct",
                "incoterm_code",
                "metal_code",
            ],
            out,
        )
        print("\npublic.quota_processing_errors (unresolved dead letters):", file=out)
        print_table(
            conn.execute(query("unresolved_dead_letters")).fetchall(),
            ["quota_id", "version", "error_class", "error_message"],
            out,
        )


def print_table(rows: list[dict[str, Any]], columns: list[str], out: Any) -> None:
    cells = [[("NULL" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    for r in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=out)
    if not rows:
        print("  (none)", file=out)
