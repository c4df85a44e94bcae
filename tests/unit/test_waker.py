"""The waker hands a hint to one sleeping worker; stopping wakes them all."""

from __future__ import annotations

import threading
import time

from inbox.apply.waker import Waker


def _sleepers(waker: Waker, count: int) -> tuple[list[threading.Thread], list[bool]]:
    woken: list[bool] = []
    lock = threading.Lock()
    ready = threading.Barrier(count + 1)

    def sleep() -> None:
        seen = waker.generation
        ready.wait()
        if waker.wait(seen, timeout=5.0):
            with lock:
                woken.append(True)

    threads = [threading.Thread(target=sleep) for _ in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.2)  # from the barrier into wait(): microseconds
    return threads, woken


def test_a_hint_wakes_one_sleeping_worker_not_all() -> None:
    waker = Waker()
    threads, woken = _sleepers(waker, 3)
    waker.wake()
    time.sleep(0.3)
    assert len(woken) == 1
    waker.wake_all()
    for thread in threads:
        thread.join(5)
    assert len(woken) == 3


def test_a_worker_busy_when_the_hint_came_looks_at_once() -> None:
    waker = Waker()
    seen = waker.generation
    waker.wake()  # nobody was asleep: the hint is not lost, the generation moved
    started = time.monotonic()
    assert waker.wait(seen, timeout=5.0)
    assert time.monotonic() - started < 1.0


def test_an_untyped_hint_is_taken_once() -> None:
    """One worker types what the hint announced; the others need not look again."""
    waker = Waker()
    assert not waker.take_untyped()
    waker.wake()
    assert not waker.take_untyped()
    waker.wake(untyped=True)
    waker.wake()  # a later plain hint does not clear it
    assert waker.take_untyped()
    assert not waker.take_untyped()
