"""Records of counters (a worker's batches, a consumer's run): one way to sum two and to log one."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Self


@dataclass
class Counts:
    """The base of a dataclass whose fields are counters (int) or sets of names (the partitions a
    consumer held): add() sums a record of the same class into this one, field by field."""

    def add(self, other: Self) -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, mine | theirs if isinstance(mine, set) else mine + theirs)

    def as_log(self) -> dict[str, Any]:
        """The fields as a log line's extra fields (a set sorted)."""
        return {
            f.name: sorted(value) if isinstance(value := getattr(self, f.name), set) else value
            for f in fields(self)
        }
