"""`inbox` commands as subprocesses: output to a file, stopped by SIGTERM or killed, by their own pid;
free_port and stop (SIGTERM, then SIGKILL) are the benchmark's (inbox_bench/processes.py), for any process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from inbox_bench.processes import free_port as free_port
from inbox_bench.processes import stop as stop

REPO = Path(__file__).resolve().parents[1]
_SERVING = re.compile(r"serving (http://\S+) ")
T = TypeVar("T")


def inbox_env(database_url: str | None, **settings: str) -> dict[str, str]:
    """This environment without any INBOX_* of the caller's, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
    if database_url is not None:
        env["INBOX_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


# Timings a fault test can wait for: the reaper runs every half second, an idle worker polls five
# times a second, and a transient failure is retried within half a second.
QUICK_RECOVERY = {
    "INBOX_REAP_INTERVAL_SECONDS": "0.5",
    "INBOX_POLL_SECONDS": "0.2",
    "INBOX_BACKOFF_BASE_SECONDS": "0.05",
    "INBOX_BACKOFF_CAP_SECONDS": "0.5",
}


# `inbox run` with each part in the group role of migration 007 made for it.
SERVICE_ROLES = {
    "INBOX_INGEST_ROLE": "inbox_ingest",
    "INBOX_WORKER_ROLE": "inbox_worker",
    "INBOX_READONLY_ROLE": "inbox_readonly",
}


def quick_env(database_url: str, **settings: str) -> dict[str, str]:
    """inbox_env with the QUICK_RECOVERY timings; the given settings win over them."""
    return inbox_env(database_url, **{**QUICK_RECOVERY, **settings})


def run_inbox(
    *args: str, database_url: str | None, stdin: str | None = None, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """`inbox ARGS` to its end, in this environment without the caller's INBOX_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "inbox.cli", *args],
        env=inbox_env(database_url, **env),
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """An expected failure: the exit code, and one line on stderr without a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def wait_for(
    condition: Callable[[], T],
    what: str,
    timeout: float = 60.0,
    every: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """condition()'s first true result, asked every `every` seconds; after `timeout` seconds an
    AssertionError naming `what` (and detail(), e.g. the tail of a log)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            more = "" if detail is None else f":\n{detail()}"
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{more}")
        time.sleep(every)
    return result


class InboxProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inbox.cli", *args], env=env, cwd=REPO, stdout=out, stderr=out
            )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def url(self, timeout: float = 60.0) -> str:
        """The base URL `inbox run` prints once it serves."""
        found: list[str] = []

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"`inbox` exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            found.extend(_SERVING.findall(self.output()))
            return bool(found)

        wait_for(serving, "`inbox run` to serve", timeout)
        return found[0]

    def terminate(self, timeout: float = 30.0) -> int:
        return stop(self.proc, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


class WorkerFleet:
    """`inbox work` processes with one environment, each logging to work-N.log in workdir (N counts
    every process started); kill() SIGKILLs one and forgets it, stop() ends the others."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.started = 0
        self.processes: list[InboxProcess] = []

    def start(self) -> InboxProcess:
        self.started += 1
        process = InboxProcess(["work"], self.env, self.workdir / f"work-{self.started}.log")
        self.processes.append(process)
        return process

    def find(self, pid: int) -> InboxProcess | None:
        return next((p for p in self.processes if p.proc.pid == pid), None)

    def kill(self, process: InboxProcess) -> None:
        self.processes.remove(process)
        process.kill()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()


@contextmanager
def worker_fleet(env: dict[str, str], workdir: Path, size: int) -> Iterator[WorkerFleet]:
    """`size` `inbox work` processes, stopped (SIGTERM, then SIGKILL) when the block ends."""
    fleet = WorkerFleet(env, workdir)
    try:
        for _ in range(size):
            fleet.start()
        yield fleet
    finally:
        fleet.stop()


@contextmanager
def inbox_process(*args: str, env: dict[str, str], log: Path) -> Iterator[InboxProcess]:
    """An `inbox` subprocess that is stopped (SIGTERM, then SIGKILL) when the block ends."""
    process = InboxProcess(list(args), env, log)
    try:
        yield process
    finally:
        process.terminate()
