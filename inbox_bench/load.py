"""HTTP load from the benchmark's own process: keep-alive connections, one thread each.

The standard library's http.client, not an async client: it costs less CPU per request, and on
two cores the client's CPU is taken from the server it measures.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


class Rejected(RuntimeError):
    pass


class Client:
    """One keep-alive connection."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> bytes:
        try:
            self._conn.request("POST", path, body, {"Content-Type": content_type})
            response = self._conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closes a keep-alive connection left idle for 5 s (uvicorn's default), as
            # the soak's producer does while it waits for the backlog; the sender learns it only
            # now. Sending again on a new connection is safe: the inbox keys every event.
            self._conn.close()
            self._conn.request("POST", path, body, {"Content-Type": content_type})
            response = self._conn.getresponse()
        data = response.read()
        if response.status != 202:
            raise Rejected(f"POST {path} answered {response.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self._conn.close()


def post_all(
    base_url: str,
    path: str,
    count: int,
    body: Callable[[int], bytes],
    concurrency: int,
    content_type: str = "application/json",
) -> None:
    """POST body(0) ... body(count - 1), `concurrency` at a time, as fast as the server answers;
    raises on any non-202. Bodies are made by the sending thread, just before they are sent."""
    work: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for k in range(count):
        work.put(k)
    errors: list[BaseException] = []

    def send(client: Client) -> None:
        while (k := work.get()) is not None and not errors:
            client.post(path, body(k), content_type)

    for _ in range(concurrency):
        work.put(None)
    _join(_senders(base_url, concurrency, "load", send, errors), errors)


def _senders(
    base_url: str, count: int, name: str, send: Callable[[Client], None], errors: list[BaseException]
) -> list[threading.Thread]:
    """`count` started threads, each running send() on a keep-alive connection of its own; what
    one raises goes to errors."""

    def sender() -> None:
        client = Client(base_url)
        try:
            send(client)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=sender, name=f"{name}-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _join(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Sent:
    """One paced request: which events it carried, when it was due, when a sender began it (later
    than due when every sender was busy), and when its 202 came back."""

    first: int
    stop: int
    due: float
    started: float
    acked: float


def paced(
    base_url: str,
    bodies: Sequence[tuple[int, int, bytes]],
    interval: float,
    senders: int = 4,
    on_ack: Callable[[Sent], None] | None = None,
) -> list[Sent]:
    """Open-loop load: request k is sent at start + k * interval, whether or not earlier ones have
    been answered (a closed loop would slow down with the server and hide its latency).
    bodies: (first event index, stop index, body); on_ack(sent) runs as each 202 comes back."""
    work: queue.SimpleQueue[tuple[int, int, bytes, float] | None] = queue.SimpleQueue()
    sent: list[Sent] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send(client: Client) -> None:
        while (item := work.get()) is not None:
            first, stop, body, due = item
            started = time.time()
            client.post("/events", body, "application/x-ndjson")
            done = Sent(first, stop, due, started, time.time())
            if on_ack is not None:
                on_ack(done)
            with lock:
                sent.append(done)

    threads = _senders(base_url, senders, "paced", send, errors)
    start = time.time() + 0.05
    for k, (first, stop, body) in enumerate(bodies):
        due = start + k * interval
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        work.put((first, stop, body, due))
    for _ in threads:
        work.put(None)
    _join(threads, errors)
    return sent
