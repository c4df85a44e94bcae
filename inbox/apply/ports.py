"""What a worker needs of the database, as a Protocol (PgQueuer's ports/driver.py is the model).

The real one is inbox.db.queries.Queries on the worker's apply session; the worker's retry and
bisect logic is unit-tested with a fake of this port (tests/unit/test_worker_logic.py), while what
the database does with each call is tested against real PostgreSQL. The claim itself (a transaction
on the apply session, with the claim ledger row written from a second session) is not part of the
port: it is the one step that needs two real sessions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from inbox.db.queries import ApplyCounts, Backoff, DeadLetterLine, EventKeyRow, Keys, RetryCounts


class WorkerDatabase(Protocol):
    def process_batch(
        self, *, ledger: int | None, keys: Keys, max_attempts: int, refused: str | None = None
    ) -> ApplyCounts: ...

    def release_claim(
        self, *, ledger: int | None, keys: Keys, error: str, backoff: Backoff
    ) -> RetryCounts: ...

    def drop_claim(self, ledger: int) -> None: ...

    def dead_letters_for_keys(self, keys: Iterable[EventKeyRow]) -> list[DeadLetterLine]: ...
