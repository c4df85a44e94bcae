"""What a worker needs of the database, as a Protocol (PgQueuer's ports/driver.py is the model).

The real one is inbox.db.queries.Queries on the worker's session; the worker's retry and bisect
logic is unit-tested with a fake of this port (tests/unit/test_worker_logic.py), while what the
database does with each call is tested against real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from inbox.db.queries import ApplyCounts, Backoff, DeadLetterLine, EventKeyRow, RetryCounts


class WorkerDatabase(Protocol):
    def apply_events(self, *, worker: str, events: Sequence[dict[str, Any]]) -> ApplyCounts: ...

    def release_events(
        self, *, worker: str, keys: Iterable[EventKeyRow], error: str, backoff: Backoff
    ) -> RetryCounts: ...

    def dead_letters_for_keys(self, keys: Iterable[EventKeyRow]) -> list[DeadLetterLine]: ...
