"""A worker pool in one process: N worker threads, one LISTEN connection, the scheduled jobs."""

from __future__ import annotations

import logging
import threading
from typing import Any

from inbox.apply.jobs import start_scheduler
from inbox.apply.waker import NotifyListener, Waker
from inbox.apply.worker import Worker, worker_name
from inbox.metrics import serve_metrics
from inbox.settings import Settings

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, dsn: str, settings: Settings, concurrency: int | None = None) -> None:
        self.dsn = dsn
        self.settings = settings
        self.concurrency = concurrency or settings.workers
        self.stop_event = threading.Event()
        self.waker = Waker()
        self.listener = NotifyListener(dsn, self.waker, self.stop_event)
        self.workers = [Worker(dsn, settings, worker_name(i)) for i in range(self.concurrency)]
        self._threads: list[threading.Thread] = []
        self._scheduler: Any = None
        self._metrics_server: Any = None

    def start(self) -> None:
        if self.settings.metrics_port is not None:  # first: a busy port fails before any work starts
            token = self.settings.metrics_token
            self._metrics_server, port = serve_metrics(
                self.dsn,
                self.settings.metrics_refresh_seconds,
                self.settings.http_host,
                self.settings.metrics_port,
                token=token.get_secret_value() if token else None,
            )
            log.info("metrics served", extra={"url": f"http://{self.settings.http_host}:{port}/metrics"})
        self.listener.start()
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run, args=(self.stop_event, self.waker), name=worker.name, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._scheduler = start_scheduler(self.dsn, self.settings)
        log.info("worker pool started", extra={"workers": self.concurrency})

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batches in hand, then stop; what is not finished returns when its lease expires."""
        self.stop_event.set()
        self.waker.wake_all()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        for thread in self._threads:
            thread.join(timeout)
        self.listener.join(timeout)

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
