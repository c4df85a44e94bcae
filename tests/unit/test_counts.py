"""inbox.counts: the one sum and log line of a worker's BatchCounts and a consumer's ConsumeStats."""

from __future__ import annotations

from inbox.apply.worker import BatchCounts
from inbox.kafka.consumer import ConsumeStats


def test_add_sums_every_counter_field_by_field() -> None:
    total = BatchCounts(claimed=3, applied=2, dead=1)
    total.add(BatchCounts(claimed=4, applied=1, stale=2, typed=5))
    assert total == BatchCounts(claimed=7, applied=3, stale=2, dead=1, typed=5)


def test_a_consumers_partitions_are_united_and_logged_sorted() -> None:
    stats = ConsumeStats(messages=2, partitions={"t[1]"})
    stats.add(ConsumeStats(messages=3, batches=1, accepted=2, partitions={"t[0]", "t[1]"}))
    assert stats == ConsumeStats(messages=5, batches=1, accepted=2, partitions={"t[0]", "t[1]"})
    assert stats.as_log() == {
        "messages": 5,
        "accepted": 2,
        "duplicates": 0,
        "rejected": 0,
        "skipped": 0,
        "batches": 1,
        "store_failures": 0,
        "partitions": ["t[0]", "t[1]"],
    }
