"""Processes the benchmark (and the tests, which import these) start and stop: a free loopback port
for a server, and stopping a process whatever state it is in."""

from __future__ import annotations

import socket
import subprocess
from typing import Any


def free_port() -> int:
    """A loopback port free right now, for a process about to be started."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds; its exit code. A process
    that has already ended is only reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
