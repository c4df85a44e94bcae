"""The `inbox` command, run as a subprocess against a real PostgreSQL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from inbox.db.connect import DictConnection, connect
from inbox.db.sqlfiles import migrations
from inbox.settings import Settings
from tests.acceptance.conftest import UNREACHABLE_DSN
from tests.helpers import event_status, ingest, quota, titan_event
from tests.processes import inbox_env, run_inbox, wait_for

REPO = Path(__file__).resolve().parents[2]

# The demo's sample stream (inbox/demo/sample.ndjson) and what it must leave behind.
DEMO_KEPT = "3f1c6a52-8d1e-4c57-9a0b-1b2c3d4e5f60"  # v1, v3, late v2, duplicate v3 -> v3
DEMO_POISONED = "7a9e2b14-5c3d-4e6f-8a1b-2c3d4e5f6a7b"  # v1, poison v2 (HOLD, -5), v3 -> v3 + dead letter
DEMO_DELETED = "c0ffee00-1234-4abc-9def-0123456789ab"  # v1, DELETE v3, late v2 -> gone


inbox_cli = run_inbox


def _applied_migrations(dsn: str) -> list[tuple[int, str, str]]:
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM inbox.schema_migrations ORDER BY version")
        return [(r["version"], r["name"], r["checksum"]) for r in rows]


# -- migrate ----------------------------------------------------------------------------------------


def test_migrate_applies_everything_then_is_a_no_op(empty_dsn: str) -> None:
    shipped = [(m.version, m.name, m.checksum) for m in migrations()]

    first = inbox_cli("migrate", database_url=empty_dsn)

    assert first.returncode == 0, first.stderr
    assert _applied_migrations(empty_dsn) == shipped
    for version, name, _ in shipped:
        assert f"{version:03d}_{name}" in first.stdout

    second = inbox_cli("migrate", database_url=empty_dsn)

    assert second.returncode == 0, second.stderr
    assert f"{len(shipped)} already applied, newly applied: none" in second.stdout
    assert _applied_migrations(empty_dsn) == shipped


def test_migrate_refuses_a_database_with_an_unknown_migration(dsn: str, db: DictConnection) -> None:
    db.execute(
        "INSERT INTO inbox.schema_migrations (version, name, checksum) VALUES (999, 'from_the_future', 'x')"
    )

    result = inbox_cli("migrate", database_url=dsn)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "999" in result.stderr


def test_migrate_against_an_unreachable_database_is_one_line_without_traceback() -> None:
    result = inbox_cli("migrate", database_url=UNREACHABLE_DSN, timeout=60)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert error_lines[0].startswith("inbox: error:")
    assert "unreachable" in error_lines[0]


# -- help -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["migrate"], ["work"], ["serve"]], ids=str)
def test_help_lists_every_setting(command: list[str]) -> None:
    result = inbox_cli(*command, "--help", database_url=None, timeout=60)

    assert result.returncode == 0, result.stderr
    for name, field in Settings.model_fields.items():
        variable = f"INBOX_{name.upper()}"
        [line] = [line for line in result.stdout.splitlines() if line.strip().startswith(variable + " ")]
        assert field.description
        assert field.description.split()[0] in line
    for required in (
        "INBOX_DATABASE_URL",
        "INBOX_HTTP_HOST",
        "INBOX_HTTP_PORT",
        "INBOX_API_TOKEN",
        "INBOX_WORKERS",
        "INBOX_BATCH_SIZE",
        "INBOX_MAX_ATTEMPTS",
        "INBOX_LEASE_SECONDS",
    ):
        assert required in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = inbox_cli("--help", database_url=None, timeout=60)

    for command in ("migrate", "serve", "work", "run"):
        assert command in result.stdout


# -- run --demo -------------------------------------------------------------------------------------


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start : end if end != -1 else len(text)]


def _hold_port(port: int) -> socket.socket | None:
    """Occupy the port if nothing does yet (something else holding it makes it just as busy)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_run_demo_prints_quota_rows_and_a_dead_letter(empty_dsn: str) -> None:
    held = _hold_port(8080)  # the default INBOX_HTTP_PORT is busy: the demo takes another port
    try:
        result = inbox_cli("run", "--demo", database_url=empty_dsn)
    finally:
        if held is not None:
            held.close()

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert '"level"' not in result.stdout + result.stderr  # no log lines inside the demo's tables
    assert "-> 202 {'accepted': 4, 'duplicates': 1, 'finished': 4}" in result.stdout
    quotas = _section(result.stdout, "public.quota:")
    letters = _section(result.stdout, "public.quota_processing_errors")
    assert DEMO_KEPT in quotas
    assert DEMO_POISONED in quotas
    assert DEMO_DELETED not in quotas
    assert DEMO_POISONED in letters
    assert "invalid" in letters

    with connect(empty_dsn, autocommit=True) as conn:
        kept = quota(conn, DEMO_KEPT)
        assert kept is not None
        assert (kept["source_version"], str(kept["qty_t"]), kept["tolerance_pct"]) == (3, "1300.000", 0)
        assert str(kept["period_month"]) == "2026-03-01"
        poisoned = quota(conn, DEMO_POISONED)
        assert poisoned is not None
        assert (poisoned["source_version"], poisoned["qty_t"], poisoned["direction"]) == (
            3,
            Decimal("85.000"),
            "SELL",
        )
        assert quota(conn, DEMO_DELETED) is None
        letters_rows = conn.execute(
            "SELECT quota_id::text AS quota_id, version, error_class FROM public.quota_processing_errors "
            "WHERE resolved_at IS NULL"
        ).fetchall()
        assert [(r["quota_id"], r["version"], r["error_class"]) for r in letters_rows] == [
            (DEMO_POISONED, 2, "invalid")
        ]
        open_rows = conn.execute(
            "SELECT count(*) AS n FROM inbox.quota_events WHERE status IN ('pending', 'processing')"
        ).fetchone()
        assert open_rows is not None
        assert open_rows["n"] == 0


# -- work -------------------------------------------------------------------------------------------


@pytest.fixture
def worker_process(dsn: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    log = tmp_path / "work.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "inbox.cli", "work", "--concurrency", "2"],
            env=inbox_env(dsn, INBOX_POLL_SECONDS="30"),
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_work_applies_events_and_stops_on_sigterm(
    worker_process: tuple[subprocess.Popen[str], Path], db: DictConnection
) -> None:
    process, log = worker_process
    wait_for(lambda: "workers running" in log.read_text() or process.poll() is not None, "the workers", 60)
    assert process.poll() is None, log.read_text()

    ids = [uuid.uuid4() for _ in range(5)]
    ingest(db, [titan_event(q, 1, "INSERT", qty_t=Decimal("7.125")) for q in ids])
    wait_for(lambda: all(event_status(db, q, 1) == "applied" for q in ids), "the events to be applied", 20)
    for q in ids:
        row = quota(db, q)
        assert row is not None
        assert str(row["qty_t"]) == "7.125"

    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=15)

    assert returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    wait_for(lambda: _service_sessions(db) == 0, "the worker's connections to close", 10)


def _service_sessions(conn: DictConnection) -> int:
    """Sessions the service opened on this database (workers, listener, reaper)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'quota-inbox %'"
    ).fetchone()
    assert row is not None
    return int(row["n"])
