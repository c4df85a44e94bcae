"""What every path returns, and the small readers they share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from inbox.db.connect import DictConnection
from inbox_bench.cluster import Service, cpu_seconds, cpu_us_per_event, cpu_used, scalar

BUSY = """
SELECT EXISTS (SELECT 1 FROM inbox.quota_events WHERE status = 'pending') AS busy
"""  # a claimed event stays pending until its batch commits (migration 015): the small partial index


@dataclass
class Measurement:
    key: str
    title: str
    events: int
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_second": round(self.rate, 1),
            **self.detail,
        }


class Stopwatch:
    """The wall clock and the CPU of the named processes (cluster.cpu_seconds) from its creation to
    stop(), for a path over `events` events: the seconds and CPU figures of its Measurement."""

    def __init__(self, pids: dict[str, int], events: int) -> None:
        self.pids = pids
        self.events = events
        self._cpu_before = cpu_seconds(pids)
        self.start = time.perf_counter()
        self.end = self.start
        self.cpu: dict[str, float] = {}

    def stop(self, end: float | None = None) -> None:
        """The clock stops at `end` (a time.perf_counter() the path saw; now by default); the CPU is
        read now."""
        self.end = time.perf_counter() if end is None else end
        self.cpu = cpu_used(self._cpu_before, cpu_seconds(self.pids))

    def measurement(self, key: str, title: str, detail: dict[str, Any]) -> Measurement:
        """The path's detail, then CPU seconds by process over the run and as microseconds per event."""
        cpu = {"cpu_seconds": self.cpu, "cpu_us_per_event": cpu_us_per_event(self.cpu, self.events)}
        return Measurement(key, title, self.events, self.end - self.start, {**detail, **cpu})


class Phases:
    """A path timed in phases (ingest, then apply), each by a Stopwatch of its own (what runs between
    two phases, an untimed check, counts in neither). Its Measurement: the path's detail, then each
    phase's seconds and events per second, then CPU seconds by process summed over the phases, as
    microseconds per event in all and per phase."""

    def __init__(self, pids: dict[str, int], events: int) -> None:
        self.pids = pids
        self.events = events
        self.clocks: dict[str, Stopwatch] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        clock = Stopwatch(self.pids, self.events)
        yield
        clock.stop()
        self.clocks[name] = clock

    def measurement(self, key: str, title: str, detail: dict[str, Any]) -> Measurement:
        events, figures = self.events, dict(detail)
        seconds = {name: clock.end - clock.start for name, clock in self.clocks.items()}
        for name, s in seconds.items():
            figures[f"{name}_seconds"] = round(s, 4)
            figures[f"{name}_events_per_second"] = round(events / s, 1) if s > 0 else 0.0
        cpu: dict[str, float] = {}
        for clock in self.clocks.values():
            for process, used in clock.cpu.items():
                cpu[process] = round(cpu.get(process, 0.0) + used, 2)
        figures["cpu_seconds"] = cpu
        figures["cpu_us_per_event"] = cpu_us_per_event(cpu, events)
        for name, clock in self.clocks.items():
            figures[f"{name}_cpu_us_per_event"] = cpu_us_per_event(clock.cpu, events)
        return Measurement(key, title, events, sum(seconds.values()), figures)


def wait_drained(
    conn: DictConnection, services: list[Service], timeout: float, poll: float = 0.01, expected: int = 0
) -> float:
    """Block until `expected` events are processed and nothing is pending or in hand; returns
    time.perf_counter() when that was seen."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while scalar(conn, BUSY) or (expected and processed(conn) < expected):
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"events still pending after {timeout:.0f} s")
        if now - checked > 1:
            for service in services:
                service.check_alive()
            checked = now
        time.sleep(poll)
    return time.perf_counter()


def status_counts(conn: DictConnection) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) AS n FROM inbox.quota_events GROUP BY status").fetchall()
    return {str(r["status"]): int(r["n"]) for r in rows}


def quota_version_sum(conn: DictConnection) -> int:
    """The sum of the quota rows' versions: two applies of the same events reach the same sum."""
    row = conn.execute("SELECT coalesce(sum(source_version), 0) AS n FROM public.quota").fetchone()
    return int(row["n"]) if row else 0


# What an apply leaves, compared between the ceilings: the quota rows and the gate (their content, not
# only counts), the outbox messages (without the times an apply stamps), the dead letters.
END_STATE = """
SELECT (SELECT count(*) FROM public.quota) AS quota_rows,
       (SELECT md5(coalesce(string_agg(concat_ws('|', quota_id, source_version, counterparty_id,
                                                 direction, period_month, qty_t, tolerance_pct,
                                                 incoterm_code, metal_code, source_updated_at),
                                       ',' ORDER BY quota_id), ''))
        FROM public.quota) AS quota_digest,
       (SELECT count(*) FROM inbox.quota_versions) AS gate_rows,
       (SELECT coalesce(sum(version), 0) FROM inbox.quota_versions) AS gate_version_sum,
       (SELECT md5(coalesce(string_agg(concat_ws('|', quota_id, version, is_delete, previous_version), ','
                                       ORDER BY quota_id), ''))
        FROM inbox.quota_versions) AS gate_digest,
       (SELECT md5(coalesce(string_agg((message - 'applied_at' #- '{quota,updated_at}'
                                                                #- '{quota,created_at}')::text,
                                       ',' ORDER BY message ->> 'quota_id', (message ->> 'version')::bigint),
                            ''))
        FROM pgmq.q_quota_changes) AS outbox_digest,
       (SELECT count(*) FROM public.quota_processing_errors) AS dead_letters
"""


def end_state(conn: DictConnection) -> dict[str, Any]:
    row = conn.execute(END_STATE).fetchone()
    assert row is not None
    return {k: v if isinstance(v, str) else int(v) for k, v in row.items()}


def processed(conn: DictConnection) -> int:
    """Events finished (applied, stale or dead), from the database's counters: cheap at any size and
    unaffected by retention deleting rows."""
    return int(
        scalar(
            conn,
            "SELECT coalesce(sum(value), 0) AS n FROM inbox.metric_counters"
            " WHERE metric IN ('applied', 'stale', 'dead')",
        )
    )


def percentiles(values: list[float], points: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, plus the maximum."""
    if not values:
        return {}
    ordered = sorted(values)
    result = {
        f"p{p:g}": ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] for p in points
    }
    result["max"] = ordered[-1]
    return {k: round(v, 2) for k, v in result.items()}
