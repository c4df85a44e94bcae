"""GET /metrics on the real HTTP server and on the metrics port of `inbox work` (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inbox.db.connect import DictConnection
from tests.acceptance.conftest import UNREACHABLE_DSN, StartServer
from tests.helpers import drain, event_status, ingest, titan_event, to_json
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_for_scrape(
    url: str, condition: Callable[[Samples], bool], what: str, timeout: float = 30
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last scrape: {samples}")
        time.sleep(0.1)


def test_http_metrics_follow_the_events(start_server: StartServer, dsn: str) -> None:
    # the workers apply here, so that the queue's gauges have something to show (the apply at ingest:
    # tests/acceptance/test_apply_at_ingest.py)
    live = start_server(dsn, metrics_refresh_seconds=0.05, http_apply_at_ingest=False)
    url = f"{live.base_url}/metrics"
    before = scrape(url)
    assert value(before, "inbox_events_ingested_total", source="http") == 0
    assert value(before, "inbox_queue_depth") == 0
    assert value(before, "inbox_database_up") == 1

    good, bad = uuid.uuid4(), uuid.uuid4()
    body = "\n".join(
        to_json(e) for e in [titan_event(good, 1), titan_event(good, 1), titan_event(bad, 1, direction="X")]
    )
    response = httpx.post(
        f"{live.base_url}/events", content=body, headers={"content-type": "application/x-ndjson"}, timeout=10
    )
    assert response.json() == {"accepted": 2, "duplicates": 1}
    queued = wait_for_scrape(url, lambda s: value(s, "inbox_queue_depth") == 2, "two queued events")
    assert value(queued, "inbox_events_ingested_total", source="http") == 2
    assert value(queued, "inbox_events_duplicate_total") == 1
    assert value(queued, "inbox_oldest_pending_age_seconds") >= 0

    drain(dsn)
    done = wait_for_scrape(url, lambda s: value(s, "inbox_queue_depth") == 0, "the queue to drain")

    assert value(done, "inbox_events_applied_total") == 1
    assert value(done, "inbox_events_dead_total", error_class="invalid") == 1
    assert value(done, "inbox_dead_letters_unresolved") == 1
    assert value(done, "inbox_apply_latency_seconds_count") == 1
    assert value(done, "inbox_apply_latency_seconds_bucket", le="+Inf") == 1
    assert value(done, "inbox_apply_latency_seconds_sum") > 0


def test_events_applied_at_ingest_are_counted_as_the_workers_count_them(
    start_server: StartServer, dsn: str
) -> None:
    """A POST applied in its own transaction (INBOX_HTTP_APPLY_AT_INGEST) moves the same counters and
    the latency histogram as a worker's apply; no event is left queued."""
    live = start_server(dsn, metrics_refresh_seconds=0.05)
    url = f"{live.base_url}/metrics"
    a, b = uuid.uuid4(), uuid.uuid4()
    body = "\n".join(to_json(e) for e in [titan_event(a, 1), titan_event(a, 2), titan_event(b, 1)])

    response = httpx.post(
        f"{live.base_url}/events", content=body, headers={"content-type": "application/x-ndjson"}, timeout=10
    )

    assert response.json() == {"accepted": 3, "duplicates": 0, "finished": 3}
    done = wait_for_scrape(url, lambda s: value(s, "inbox_events_applied_total") == 2, "the applied count")
    assert value(done, "inbox_events_ingested_total", source="http") == 3
    assert value(done, "inbox_events_stale_total") == 1
    assert value(done, "inbox_queue_depth") == 0
    assert value(done, "inbox_apply_latency_seconds_count") == 2
    assert value(done, "inbox_apply_latency_seconds_sum") > 0  # received at the ingest's start, applied after


@pytest.fixture
def work_metrics_url(dsn: str, tmp_path: Path) -> Iterator[str]:
    """`inbox work` with its metrics port; yields the URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
    env.update(
        INBOX_DATABASE_URL=dsn,
        INBOX_METRICS_PORT=str(port),
        INBOX_METRICS_REFRESH_SECONDS="0.1",
        INBOX_HTTP_HOST="127.0.0.1",
    )
    log = tmp_path / "work.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "inbox.cli", "work"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"metrics port never answered: {log.read_text()}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(15)
    assert "Traceback" not in log.read_text()


COUNTERS = (
    "inbox_events_ingested_total",
    "inbox_events_applied_total",
    "inbox_events_stale_total",
    "inbox_events_duplicate_total",
    "inbox_events_retried_total",
    "inbox_events_dead_total",
    "inbox_apply_latency_seconds_count",
)


def counters_of(samples: Samples) -> Samples:
    return {key: v for key, v in samples.items() if key[0] in COUNTERS}


def test_work_metrics_port_and_http_agree(
    start_server: StartServer, work_metrics_url: str, dsn: str, db: DictConnection
) -> None:
    http_url = f"{start_server(dsn, metrics_refresh_seconds=0.05).base_url}/metrics"
    ids = [uuid.uuid4() for _ in range(20)]
    ingest(db, [titan_event(q, 1, qty_t=Decimal("2.5")) for q in ids])
    ingest(db, [titan_event(ids[0], 1)])  # duplicate
    deadline = time.monotonic() + 30
    while not all(event_status(db, q, 1) == "applied" for q in ids):  # the work process applies them
        assert time.monotonic() < deadline, "the work process did not apply the events"
        time.sleep(0.05)

    # each process refreshes its figures every 0.1 s: a snapshot taken after the apply of the first 20
    # and before the duplicate's ingest holds applied 20 and duplicate 0, so both figures are awaited
    def settled(s: Samples) -> bool:
        return value(s, "inbox_events_applied_total") == 20 and value(s, "inbox_events_duplicate_total") == 1

    from_work = wait_for_scrape(work_metrics_url, settled, "work's figures")
    from_http = wait_for_scrape(http_url, settled, "http's figures")

    assert counters_of(from_work) == counters_of(from_http)
    assert value(from_work, "inbox_events_ingested_total", source="http") == 20
    assert value(from_work, "inbox_events_duplicate_total") == 1
    assert value(from_work, "inbox_queue_depth") == 0


def test_metrics_without_a_database_say_so(start_server: StartServer) -> None:
    live = start_server(UNREACHABLE_DSN, metrics_refresh_seconds=0.05)

    samples = scrape(f"{live.base_url}/metrics")

    assert value(samples, "inbox_database_up") == 0
    assert not any(name.startswith("inbox_events_") for name, _ in samples)
