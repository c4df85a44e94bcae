"""One embedded PostgreSQL for the whole run, a fresh migrated database per measurement, and the
service's own processes (`inbox serve`, `inbox work`, `inbox consume`) started as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from inbox.db.connect import DictConnection, connect
from inbox.db.embedded import start_embedded
from inbox.db.migrate import migrate
from inbox_bench.processes import stop as stop_process
from inbox_bench.threads import Background

TEMPLATE = "bench_template"
OTHER_SESSIONS = (
    "SELECT count(*) AS n FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
SEEDED = "bench_seeded"


@dataclass
class Cluster:
    """The run's PostgreSQL: an admin DSN and a migrated template every database is copied from."""

    admin_dsn: str
    data_dir: Path | None = None
    extra_settings: tuple[str, ...] = ()
    _created: int = 0

    @classmethod
    def start(cls, workdir: Path, settings: Mapping[str, str] | None = None) -> Cluster:
        """The server, with `settings` (name -> value, ones a reload applies) on top of the embedded
        server's own: for analysis runs (`inbox-bench --pg-setting`), stated in the run's output."""
        cluster = cls(start_embedded(workdir, cleanup="delete"), workdir, tuple(settings or {}))
        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            # time spent in each SQL function, for "where the time goes" (a clock read per call)
            conn.execute("ALTER SYSTEM SET track_functions = 'all'")
            for name, value in (settings or {}).items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                )
            conn.execute("SELECT pg_reload_conf()")
        migrate(cluster._create(TEMPLATE, template=None))
        return cluster

    def save_log(self, to: Path) -> None:
        """The server's log (checkpoints, and what --pg-setting asked it to log) beside the results."""
        if self.data_dir is not None and (self.data_dir / "log").is_file():
            shutil.copyfile(self.data_dir / "log", to)

    def _create(self, name: str, template: str | None) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
            conn.execute(create)
        return make_conninfo(self.admin_dsn, dbname=name)

    def seed(self, ids: list[str]) -> None:
        """A second template where every quota already exists at version 1 (row and version gate),
        so the throughput paths measure updates of existing quotas, the steady state."""
        dsn = self._create(SEEDED, template=TEMPLATE)
        with connect(dsn, autocommit=True) as conn:
            with conn.cursor().copy(
                "COPY public.quota (quota_id, counterparty_id, direction, period_month, qty_t,"
                " metal_code, source_version) FROM STDIN"
            ) as copy:
                copy.write("".join(f"{q}\tCP-SEED\tBUY\t2026-01-01\t1\tCU\t1\n" for q in ids))
            with conn.cursor().copy(
                "COPY inbox.quota_versions (quota_id, version, is_delete) FROM STDIN"
            ) as copy:
                copy.write("".join(f"{q}\t1\tf\n" for q in ids))
            conn.execute("VACUUM ANALYZE")

    def database(self, label: str, *, seeded: bool = False) -> str:
        """A freshly migrated database of its own: no measurement sees another one's rows."""
        self._created += 1
        return self._create(f"bench_{self._created}_{label}", template=SEEDED if seeded else TEMPLATE)

    def drop_measured(self) -> None:
        """Drop the databases of the measurements made so far. Kept, their garbage (the dead rows of
        a step's 200,000 updates, its queue) kept autovacuum busy during the next steps, and the
        database of the step being measured got its vacuum and statistics late: path 5 ran at
        0.72x pgmq after four earlier steps, 0.84-0.96x after pgmq alone."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            measured = "SELECT datname FROM pg_database WHERE datname ~ '^bench_[0-9]+_'"
            names = conn.execute(measured).fetchall()
            for (name,) in names:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def settings(self) -> dict[str, str]:
        """The server settings that decide commit cost, stated beside the figures."""
        names = (
            "server_version",
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "max_connections",
            "max_wal_size",
            "checkpoint_timeout",
            *self.extra_settings,
        )
        with connect(self.admin_dsn, autocommit=True) as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[n]) for n in names}  # type: ignore[index]

    def function_times(self, dsn: str, events: int, top: int = 8) -> dict[str, float]:
        """Microseconds per event spent in each SQL function of one database (its own time, not
        the functions it calls), the largest first. Read after its sessions ended: a session
        reports its counts when it ends or idles, so they are complete only then."""
        with connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and scalar(conn, OTHER_SESSIONS):
                time.sleep(0.05)
            rows = conn.execute(
                "SELECT schemaname || '.' || funcname || '(' || calls || ' calls)' AS name,"
                " self_time AS ms FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT %s",
                [top],
            ).fetchall()
        return {str(r["name"]): round(float(r["ms"]) * 1000 / events, 1) for r in rows}

    def postmaster_pid(self) -> int:
        import psutil

        with connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
            assert row is not None
            return int(psutil.Process(int(row["pid"])).ppid())  # asked while this backend lives


@dataclass
class Service:
    """An `inbox` subprocess: what a deployment runs, so its CPU and memory are its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process, 20)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {tail}")


def service_env(dsn: str, overrides: Mapping[str, str]) -> dict[str, str]:
    # The caller's INBOX_* settings (a token, a batch size) must not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
    env.update({"INBOX_DATABASE_URL": dsn, **overrides})
    return env


@contextmanager
def services(workdir: Path) -> Iterator[list[Service]]:
    """Every service started inside the block is stopped when it ends, whatever happened."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


def spawn(
    started: list[Service], workdir: Path, name: str, argv: list[str], env: Mapping[str, str]
) -> Service:
    log = workdir / f"{name}-{len(started)}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *argv], env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(name, process, log)
    started.append(service)
    return service


def start_inbox(started: list[Service], workdir: Path, command: str, env: Mapping[str, str]) -> Service:
    """`inbox COMMAND` as a service named inbox-COMMAND, logging warnings and errors only."""
    argv = ["-m", "inbox.cli", "--log-level", "WARNING", command]
    return spawn(started, workdir, f"inbox-{command}", argv, env)


def wait_http(service: Service, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback only)
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{service.name} did not answer {url} within {timeout:.0f} s")


@dataclass
class RssSampler(Background):
    """Peak resident memory per process, sampled. For "postgres" (many processes sharing their
    buffers, so a sum would count shared memory many times): the largest single process."""

    THREAD = "rss-sampler"
    JOIN_SECONDS = 5

    pids: dict[str, int]
    interval: float = 0.25
    peaks: dict[str, int] = field(default_factory=dict)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        for name, pid in self.pids.items():
            try:
                process = psutil.Process(pid)
                rss = process.memory_info().rss
                if name == "postgres":
                    rss = max([rss, *(_rss(child) for child in process.children())])
            except psutil.Error:
                continue
            self.peaks[name] = max(self.peaks.get(name, 0), rss)


def _rss(process: Any) -> int:
    import psutil

    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def scalar(conn: DictConnection, statement: str, params: Any = None) -> Any:
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) used so far by each named process; "postgres" counts the server's
    processes alive now (the backends of this run's connections among them)."""
    import psutil

    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            family = [process, *process.children()] if name == "postgres" else [process]
            used[name] = sum(_cpu(p) for p in family)
        except psutil.Error:
            continue
    return used


def _cpu(process: Any) -> float:
    import psutil

    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


def cpu_us_per_event(cpu: dict[str, float], events: int) -> dict[str, float]:
    """CPU seconds by process (cpu_used) as microseconds per event (none when there was no event)."""
    return {name: round(seconds / events * 1e6, 1) for name, seconds in cpu.items()} if events else {}
