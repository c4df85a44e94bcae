"""Every expected failure of the CLI is one line naming what to change, and a non-zero exit; one-shot
commands keep stdout for their answer and stay quiet on stderr. The CLI runs as a subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inbox.db.connect import DictConnection
from tests.acceptance.conftest import UNREACHABLE_DSN
from tests.helpers import drain, ingest, titan_event
from tests.processes import one_line_error, run_inbox

REPO = Path(__file__).resolve().parents[2]
CONSUMER = REPO / "examples" / "outbox_consumer.py"


def run(
    *args: str, database_url: str | None = None, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_inbox(*args, database_url=database_url, stdin=stdin, timeout=120, **env)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- settings (a malformed INBOX_DATABASE_URL or INBOX_KAFKA_CONFIG_JSON: tests/acceptance/test_exposure.py)


def test_log_level_takes_any_case(dsn: str) -> None:
    result = run("--log-level", "debug", "status", database_url=dsn)

    assert result.returncode == 0, result.stderr
    assert "inbox.quota_events by state" in result.stdout


def test_an_unknown_log_level_lists_the_known_ones() -> None:
    result = run("--log-level", "loud", "status")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'DEBUG', 'INFO', 'WARNING', 'ERROR'" in result.stderr


@pytest.mark.parametrize(("command", "value"), [("work", "0"), ("work", "65"), ("run", "0")])
def test_concurrency_out_of_bounds_is_refused(command: str, value: str) -> None:
    result = run(command, "--concurrency", value)

    assert result.returncode == 2
    assert "--concurrency" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_negative_retention_is_refused_and_help_shows_durations_as_typed() -> None:
    line = one_line_error(run("status", INBOX_RETENTION="-1h"))
    assert line == "inbox: error: invalid settings: INBOX_RETENTION: must not be negative"

    shown = run("--help").stdout
    [retention] = [x for x in shown.splitlines() if x.strip().startswith("INBOX_RETENTION ")]
    assert retention.endswith("[default: 7d]")


# -- ports --------------------------------------------------------------------------------------


def test_a_busy_http_port_names_the_setting_and_the_reason(busy_port: int) -> None:
    line = one_line_error(run("serve", INBOX_HTTP_PORT=str(busy_port), INBOX_DATABASE_URL=UNREACHABLE_DSN))

    assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in line
    assert "INBOX_HTTP_PORT" in line


@pytest.mark.parametrize("command", ["work", "consume"])
def test_a_busy_metrics_port_names_the_setting(dsn: str, busy_port: int, command: str) -> None:
    # consume: the port is bound before the consumer contacts a broker (none listens on port 1)
    line = one_line_error(
        run(command, database_url=dsn, INBOX_METRICS_PORT=str(busy_port), INBOX_KAFKA_BOOTSTRAP="127.0.0.1:1")
    )

    assert f"cannot serve /metrics on 127.0.0.1:{busy_port}: Address already in use" in line
    assert "INBOX_METRICS_PORT" in line


# -- the database is not there, or not migrated -------------------------------------------------


def test_work_on_an_unmigrated_database_says_migrate_at_once(empty_dsn: str) -> None:
    line = one_line_error(run("work", database_url=empty_dsn))

    assert "run `inbox migrate`" in line


def test_work_on_an_unreachable_database_says_so_at_once() -> None:
    line = one_line_error(run("work", database_url=UNREACHABLE_DSN), code=2)

    assert "database unreachable" in line


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["outbox", "tail"], None),
        (["outbox", "tail", "--ack"], None),
        (["replay", "-"], json.dumps(titan_event(uuid.uuid4(), 1), default=str)),
    ],
    ids=["tail", "tail-ack", "replay"],
)
def test_commands_on_an_unmigrated_database_say_migrate(
    empty_dsn: str, args: list[str], stdin: str | None
) -> None:
    line = one_line_error(run(*args, database_url=empty_dsn, stdin=stdin))

    assert "not migrated" in line and "run `inbox migrate`" in line


# -- output channels ----------------------------------------------------------------------------


def test_one_shot_commands_answer_on_stdout_and_log_nothing(empty_dsn: str) -> None:
    migrated = run("migrate", database_url=empty_dsn)

    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("migrations: 0 already applied, newly applied: 010_baseline")
    assert migrated.stderr == ""

    status = run("status", database_url=empty_dsn)
    assert status.returncode == 0, status.stderr
    assert status.stderr == ""


def test_outbox_tail_says_when_the_queue_is_empty_and_what_ack_did(dsn: str, db: DictConnection) -> None:
    empty = run("outbox", "tail", database_url=dsn)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == ""
    assert empty.stderr.strip() == "the outbox queue quota_changes is empty"

    ingest(db, [titan_event(uuid.uuid4(), 1), titan_event(uuid.uuid4(), 1)])
    drain(dsn)
    acked = run("outbox", "tail", "--ack", database_url=dsn)

    assert acked.returncode == 0, acked.stderr
    assert len(acked.stdout.splitlines()) == 2
    assert acked.stderr.strip() == "acknowledged 2 message(s): archived in pgmq.a_quota_changes"


# -- the outbox consumer example ----------------------------------------------------------------


def test_the_consumer_example_without_a_dsn_prints_its_usage() -> None:
    result = subprocess.run(
        [sys.executable, str(CONSUMER)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: python examples/outbox_consumer.py DSN")


def test_the_consumer_example_fails_fast_on_a_wrong_dsn_and_says_what_it_does(dsn: str) -> None:
    command = [sys.executable, str(CONSUMER)]
    options: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 60, "check": False}
    wrong = subprocess.run([*command, UNREACHABLE_DSN], **options)
    assert wrong.returncode == 1
    assert "Traceback" not in wrong.stderr
    assert wrong.stderr.startswith("outbox_consumer: error: cannot connect")

    right = subprocess.run([*command, dsn], **options)
    assert right.returncode == 0, right.stderr
    assert right.stdout.splitlines()[0] == "reading the outbox queue quota_changes into downstream_quota"
    assert right.stdout.splitlines()[-1] == "done: 0 message(s) applied; the queue is empty"
