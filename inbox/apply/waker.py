"""LISTEN/NOTIFY wakes idle workers; they still poll, so a lost hint costs one poll interval.

A notification's payload says what was stored: UNTYPED_HINT (inbox/db/queries.py) when some event
came without typed columns (a delete, another format, an invalid event, the sink's rows, a replay),
which a worker must type from its payload before it can claim it; empty otherwise. A worker looks
for untyped events only when told so (or after a poll, when hints may have been lost): the look is
one more transaction, which every batch paid before.
"""

from __future__ import annotations

import logging
import threading

from inbox.db.connect import connect
from inbox.db.errors import DatabaseError
from inbox.db.queries import UNTYPED_HINT, Queries

log = logging.getLogger(__name__)


class Waker:
    """Hints to the worker threads of one process: a hint wakes one sleeping worker, and is answered
    by the first claim that starts after it (claiming()): that claim sees every event committed
    before the hint was sent.

    One worker, not all of them: a small batch is one worker's work, and threads that all wake to race
    for it spend CPU on empty claims and contend for the GIL (a waiting thread can lose up to the 5 ms
    switch interval per hand-over). A worker that finds a full batch hands a hint on (Worker.run), so
    a backlog still brings every worker in. A worker busy when the hint came looks once its batch is
    done, unless another worker's claim has answered the hint meanwhile; a sleeper woken for a hint a
    busy worker's claim answered first goes back to sleep. Either way one claim answers one hint, where
    both claimed before and one found nothing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0  # hints so far
        self._answered = 0  # hints the latest claim to start answers
        self._untyped = False
        self._stopping = False

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wake(self, untyped: bool = False) -> None:
        """untyped: untyped events may be due (kept until a worker takes it: take_untyped)."""
        with self._cond:
            self._generation += 1
            self._untyped = self._untyped or untyped
            self._cond.notify()

    def claiming(self) -> None:
        """The caller's claim starts now: it answers every hint so far."""
        with self._cond:
            self._answered = self._generation

    def take_untyped(self) -> bool:
        """Whether a hint since the last call said untyped events may be due; the first caller
        types them, the others need not look."""
        with self._cond:
            untyped, self._untyped = self._untyped, False
            return untyped

    def wake_all(self) -> None:
        """Every sleeping worker: to stop."""
        with self._cond:
            self._generation += 1
            self._stopping = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Until a hint no claim has answered yet comes (or came while the caller was busy): True;
        False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stopping or self._generation != self._answered, timeout=timeout
            )


class NotifyListener(threading.Thread):
    """LISTENs on its own connection and wakes the workers; reconnects with backoff if the database goes."""

    def __init__(self, dsn: str, waker: Waker, stop: threading.Event) -> None:
        super().__init__(name="inbox-listener", daemon=True)
        self._dsn = dsn
        self._waker = waker
        self._stop_event = stop
        self.listening = threading.Event()

    def run(self) -> None:
        delay = 0.5
        while not self._stop_event.is_set():
            try:
                self._listen()
                delay = 0.5
            except DatabaseError as exc:
                self.listening.clear()
                log.warning("notify listener lost its connection (%s); retrying in %.1fs", exc, delay)
                self._stop_event.wait(delay)
                delay = min(delay * 2, 10.0)

    def _listen(self) -> None:
        with connect(self._dsn, autocommit=True, application_name="quota-inbox listener") as conn:
            Queries(conn).listen_for_events()
            self.listening.set()
            # Whatever arrived while we were not listening: let the workers look, for untyped too.
            self._waker.wake(untyped=True)
            while not self._stop_event.is_set():
                for notify in conn.notifies(timeout=0.5, stop_after=1):
                    self._waker.wake(untyped=notify.payload == UNTYPED_HINT)
