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
        ready.wait()
        if waker.wait(timeout=5.0):
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
    waker.wake()  # nobody was asleep: the hint is not lost, no claim has answered it
    started = time.monotonic()
    assert waker.wait(timeout=5.0)
    assert time.monotonic() - started < 1.0


def test_a_hint_a_claim_answered_wakes_no_second_claim() -> None:
    """A worker busy when the hint came used to claim again when done, beside the sleeper the hint
    woke: one of the two found nothing. A claim that started after the hint answers it."""
    waker = Waker()
    waker.wake()
    waker.claiming()  # another worker's claim started after the hint: it sees its events
    assert not waker.wait(timeout=0.3)
    waker.wake()  # a later hint is not answered by that claim
    assert waker.wait(timeout=5.0)


def test_a_sleeper_woken_for_an_answered_hint_sleeps_on() -> None:
    waker = Waker()
    threads, woken = _sleepers(waker, 1)
    with waker._cond:  # the hint and a claim answering it, before the sleeper runs again
        waker.wake()
        waker.claiming()
    time.sleep(0.3)
    assert woken == []
    waker.wake()
    threads[0].join(5)
    assert woken == [True]


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
