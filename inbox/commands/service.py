"""The service's commands: `inbox migrate`, `inbox serve`, `inbox work`, `inbox run [--demo]`."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import uvicorn

from inbox.commands.config import add_command, ensure_database, shown_dsn
from inbox.commands.errors import EXIT_DATABASE, CliError
from inbox.db.connect import connect, with_role, with_timeout
from inbox.db.errors import DatabaseError, Failure, Unreachable, classify
from inbox.db.migrate import MigrationError, migrate, pending_migrations
from inbox.db.pgmq_setup import PgmqUnavailable
from inbox.settings import Settings

if TYPE_CHECKING:
    from inbox.apply.pool import WorkerPool


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: not provably this machine


def require_webhook_auth(settings: Settings) -> None:
    """POST /events writes into a system of record: beyond this machine, only with a credential."""
    if settings.api_token or settings.hmac_secret or is_loopback(settings.http_host):
        return
    raise CliError(
        f"refusing to listen on {settings.http_host!r} without INBOX_API_TOKEN or INBOX_HMAC_SECRET: "
        "anyone who reaches the port could write quota events (set one, or listen on 127.0.0.1)"
    )


def _migrate(dsn: str) -> None:
    try:
        report = migrate(dsn)
    except (MigrationError, PgmqUnavailable) as exc:
        raise CliError(str(exc)) from exc
    except Unreachable as exc:
        raise CliError(f"database unreachable: {exc}", EXIT_DATABASE) from exc
    applied = ", ".join(report.applied) if report.applied else "none"
    print(f"migrations: {report.already} already applied, newly applied: {applied}")
    functions = f"{len(report.objects)} applied" if report.objects else "all up to date"
    print(f"function files (sql/functions): {functions}", flush=True)


def _migrate_if_pending(dsn: str) -> None:
    """Migrate only when something is pending: a login without DDL rights (a member of the roles
    of migration 007) can then `inbox run` against a database its owner has migrated."""
    try:
        with connect(dsn, autocommit=True, application_name="quota-inbox migrate") as conn:
            pending = pending_migrations(conn)
    except MigrationError as exc:
        raise CliError(str(exc)) from exc
    if pending:
        _migrate(dsn)


def require_migrated(dsn: str) -> None:
    """Before workers start: a database they cannot work in is one line now, not warnings forever."""
    try:
        with connect(with_timeout(dsn), autocommit=True, application_name="quota-inbox check") as conn:
            pending = pending_migrations(conn)
    except MigrationError as exc:
        raise CliError(str(exc)) from exc
    except DatabaseError as exc:
        failure = classify(exc)
        if failure is Failure.REFUSED:
            return  # a worker role need not read the migration history; its first claim will tell
        if failure is Failure.TRANSIENT:
            raise CliError(f"database unreachable: {exc}", EXIT_DATABASE) from exc
        raise
    if pending:
        raise CliError(
            f"the database is not migrated for this version ({len(pending)} pending, "
            f"first {pending[0]}): run `inbox migrate` first"
        )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    _migrate(ensure_database(settings))


def listen(host: str, port: int) -> socket.socket:
    """The HTTP port, bound here so that a busy port is one line naming the setting (uvicorn would
    log a bare 'could not start' and exit its thread)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(
            f"cannot listen on {host}:{port}: {reason}; set INBOX_HTTP_PORT to a free port (0: any free "
            "port) or INBOX_HTTP_HOST to an address of this machine"
        ) from exc


def _server(settings: Settings, dsn: str) -> uvicorn.Server:
    from inbox.http.server import server_config

    return uvicorn.Server(server_config(settings, dsn))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    require_webhook_auth(settings)
    sock = listen(settings.http_host, settings.http_port)
    _server(settings, ensure_database(settings)).run(sockets=[sock])


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.is_set():
        stop.wait(0.5)


@contextmanager
def start_pool(dsn: str, settings: Settings, concurrency: int | None) -> Iterator[WorkerPool]:
    from inbox.apply.pool import WorkerPool
    from inbox.metrics import MetricsPortUnavailable

    pool = WorkerPool(dsn, settings, concurrency)
    try:
        pool.start()
    except MetricsPortUnavailable as exc:
        raise CliError(str(exc)) from exc
    try:
        yield pool
    finally:
        pool.stop()


def cmd_work(args: argparse.Namespace, settings: Settings) -> None:
    dsn = with_role(ensure_database(settings), settings.worker_role)
    require_migrated(dsn)
    stop = threading.Event()
    with start_pool(dsn, settings, args.concurrency):
        print(f"workers running ({args.concurrency or settings.workers}); Ctrl-C to stop", flush=True)
        _wait_for_signal(stop)


def cmd_run(args: argparse.Namespace, settings: Settings) -> None:
    """The main job: migrate, then serve HTTP and apply events in one process."""
    require_webhook_auth(settings)
    dsn = ensure_database(settings)
    _migrate_if_pending(dsn)
    # The demo takes any free port unless INBOX_HTTP_PORT was set: a busy 8080 is no reason to fail it.
    port = 0 if args.demo and "http_port" not in settings.model_fields_set else settings.http_port
    sock = listen(settings.http_host, port)
    server = _server(settings, dsn)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    with start_pool(with_role(dsn, settings.worker_role), settings, args.concurrency):
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise CliError(
                    f"HTTP server could not start on {settings.http_host}:{port} (see the log above)"
                )
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        base_url = f"http://{host}:{port}"
        print(f"serving {base_url} (POST /events, GET /health, GET /ready)")
        print(f'database: {shown_dsn(settings, dsn)}  (psql "$(inbox dsn)")', flush=True)
        try:
            if args.demo:
                from inbox.commands.demo import run_demo

                token = settings.api_token.get_secret_value() if settings.api_token else None
                secret = settings.hmac_secret.get_secret_value().encode() if settings.hmac_secret else None
                run_demo(base_url, dsn, token, sys.stdout, secret)
            else:
                _wait_for_signal(threading.Event())
        finally:
            server.should_exit = True
            thread.join(10)


CONCURRENCY_HELP = "worker threads, 1-64 (default INBOX_WORKERS)"


def concurrency(text: str) -> int:
    """--concurrency: the bounds of INBOX_WORKERS (0 used to mean 'the default' without saying so)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, got {value}")
    return value


def register(sub: Any) -> None:
    add_command(sub, "migrate", cmd_migrate, "apply the database migrations (idempotent)")
    add_command(sub, "serve", cmd_serve, "serve the HTTP ingestor only")
    work = add_command(sub, "work", cmd_work, "run the worker pool only")
    work.add_argument(
        "--concurrency", type=concurrency, default=None, help="worker threads, 1-64 (default INBOX_WORKERS)"
    )
    run = add_command(
        sub, "run", cmd_run, "migrate, serve HTTP and run workers in one process (the main job)"
    )
    run.add_argument(
        "--concurrency", type=concurrency, default=None, help="worker threads, 1-64 (default INBOX_WORKERS)"
    )
    run.add_argument(
        "--demo",
        action="store_true",
        help="feed a bundled sample stream through POST /events, show the result, exit",
    )
