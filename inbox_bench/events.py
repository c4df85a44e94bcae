"""The generated stream: Titan events, many quotas, each moving through increasing versions.

Event i touches quota i % quotas at version first_version + i // quotas, so a batch of consecutive
events holds distinct quotas and every event is a real change (the version gate lets each one
through): the worst case for the apply, not the easy one where most of a batch is stale. One event
in 50 (after a quota's first version) is a DELETE; the next version creates the quota again.

The throughput paths use one event per quota, each an update of a quota that already exists
(seeded at version 1, see cluster.Cluster.seeded): every path then does the same writes, and a
set-based statement cannot collapse several versions of a quota into one write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DIRECTIONS = ("BUY", "SELL")
METALS = ("CU", "AL", "ZN", "NI")
INCOTERMS = ("CIF", "FOB", "DAP")


@dataclass(frozen=True)
class Stream:
    """events events over len(ids) quotas; texts are made on demand (2,000,000 held at once would
    weigh about 1 GB in the client that measures memory)."""

    ids: list[str]
    fields: list[str]
    events: int
    first_version: int

    def __len__(self) -> int:
        return self.events

    def _at(self, i: int) -> tuple[int, int]:
        return i % len(self.ids), self.first_version + i // len(self.ids)

    def texts(self, start: int, stop: int) -> list[str]:
        return [event_text(self.fields[n], n, v) for n, v in map(self._at, range(start, stop))]

    def keys(self, start: int, stop: int) -> list[tuple[str, int, bool]]:
        return [(self.ids[n], v, event_type(n, v) == "DELETE") for n, v in map(self._at, range(start, stop))]

    def head(self, events: int) -> Stream:
        return Stream(self.ids, self.fields, min(events, self.events), self.first_version)

    def ndjson(self, start: int, stop: int) -> bytes:
        return "\n".join(self.texts(start, stop)).encode("utf-8")

    def batches(self, size: int) -> list[tuple[int, int]]:
        return [(start, min(start + size, self.events)) for start in range(0, self.events, size)]


def quota_ids(quotas: int, seed: int = 6) -> list[str]:
    """Deterministic, canonical UUID texts (formatted directly: uuid.uuid5 is 10x slower)."""
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    ids = []
    for _ in range(quotas):
        h = f"{rng.getrandbits(128):032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def event_type(n: int, version: int) -> str:
    if version > 1 and (n * 7 + version) % 50 == 0:
        return "DELETE"
    return "INSERT" if version == 1 else "UPDATE"


def quota_fields(quota_id: str, n: int) -> str:
    """The fields of quota n that never change, as JSON members."""
    return (
        f'"quota_id":"{quota_id}","counterparty_id":"CP-{n % 997:04d}","direction":"{DIRECTIONS[n % 2]}",'
        f'"period_month":"2026-{1 + n % 12:02d}-15","tolerance_pct":{n % 11},'
        f'"incoterm_code":"{INCOTERMS[n % 3]}","metal_code":"{METALS[n % 4]}"'
    )


def event_text(fields: str, n: int, version: int) -> str:
    """One Titan event as JSON text, written directly: the generator must not be the bottleneck."""
    return (
        f'{{"eventType":"{event_type(n, version)}","data":{{{fields},'
        f'"qty_t":{1000 + (n * 37 + version * 11) % 9000}.{version % 1000:03d},'
        f'"updated_at":"2026-03-01T10:{version % 60:02d}:00Z"}},'
        f'"metadata":{{"timestamp":"2026-03-01T10:00:00Z","version":{version},"source":"titan"}}}}'
    )


def generate(events: int, quotas: int, first_version: int = 1) -> Stream:
    ids = quota_ids(quotas)
    return Stream(ids, [quota_fields(quota_id, n) for n, quota_id in enumerate(ids)], events, first_version)
