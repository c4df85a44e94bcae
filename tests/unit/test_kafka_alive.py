"""INBOX_KAFKA_ALIVE_FILE with several members in one `inbox consume` (inbox/kafka/consumer.py)."""

from __future__ import annotations

from pathlib import Path

from inbox.kafka.consumer import AliveFile


def test_the_alive_file_is_touched_only_once_every_member_has_turned(tmp_path: Path) -> None:
    """One member stuck (say, in a store that never returns) and the probe sees the file go stale,
    however busy the other member is."""
    path = tmp_path / "consume.alive"
    alive = AliveFile(path, members=2)
    for _ in range(3):
        alive.beat(0)
    assert not path.exists()
    alive.beat(1)
    assert path.exists()
