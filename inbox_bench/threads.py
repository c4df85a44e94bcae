"""The benchmark's own threads: samplers and pollers beside a measurement, and work split over
sessions or workers, timed together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar, Self


class Background:
    """A sampler or poller that runs _run() in a daemon thread while its `with` block runs; _run
    returns once _stop is set. Subclasses are dataclasses; THREAD names the thread."""

    THREAD: ClassVar[str]
    JOIN_SECONDS: ClassVar[float] = 10
    _stop: threading.Event
    _thread: threading.Thread

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.JOIN_SECONDS)

    def _run(self) -> None:
        raise NotImplementedError


def on_threads(count: int, work: Callable[[int], int], name: str) -> tuple[float, int]:
    """work(0) ... work(count - 1) at once, one thread each; (seconds, sum of what they returned).
    The first exception of any thread is raised once all have ended."""
    done: list[int] = []
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            done.append(work(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"{name}-{i}") for i in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds, sum(done)
