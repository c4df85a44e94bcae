"""How big each measurement is, in the full run and in --quick (CI's smoke run: same code, small)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    quick: bool
    events: int  # paths 2-5 and the overheads: one event per quota, each an update
    per_event: int  # path 1: the first events of the same stream (at ~3,000/s more would only take longer)
    latency_seconds: int  # path 6: how long the fixed load is offered
    soak_events: int  # path 7
    soak_quotas: int
    soak_retention_seconds: int  # compressed INBOX_RETENTION, so retention works during the soak
    soak_backlog: int  # the soak's producer waits while this many events are not yet processed
    overhead_events: int  # each overhead variant: the first events of the stream, ingested and applied
    latency_rate: int = 1000  # events per second offered in path 6
    latency_batch: int = 10  # events per request in path 6 (a producer that batches for 10 ms)
    http_batch: int = 500  # events per POST in paths 4 and 7
    http_senders: int = 4  # concurrent POSTs
    per_event_senders: int = 8  # concurrent single-event POSTs in path 1
    # Two processes for two cores: worker threads share one GIL, so a second process nearly doubled
    # the apply rate; a second thread in each overlaps its database waits with the other's Python.
    worker_processes: int = 2  # `inbox work` processes ...
    worker_threads: int = 2  # ... with this many worker threads each
    batch_size: int = 500  # INBOX_BATCH_SIZE
    kafka_partitions: int = 3


def _sized(quick: bool) -> Config:
    """The sizes side by side: each measure's full run, then its --quick one."""

    def size(full: int, small: int) -> int:
        return small if quick else full

    return Config(
        quick=quick,
        events=size(200_000, 3_000),
        per_event=size(20_000, 300),
        latency_seconds=size(30, 2),
        soak_events=size(2_000_000, 10_000),
        soak_quotas=size(100_000, 1_000),
        soak_retention_seconds=size(20, 2),
        soak_backlog=size(50_000, 3_000),
        overhead_events=size(50_000, 3_000),
    )


FULL = _sized(quick=False)
QUICK = _sized(quick=True)
