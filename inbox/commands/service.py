"""The service's commands: `inbox migrate`, `inbox serve`, `inbox work`, `inbox run [--demo]`."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
import time
from typing import Any

import psycopg
import uvicorn

from inbox.commands.config import add_command, database_url
from inbox.commands.errors import EXIT_DATABASE, CliError
from inbox.db.connect import connect, with_role
from inbox.db.migrate import MigrationError, migrate, pending_migrations
from inbox.db.pgmq_setup import PgmqUnavailable
from inbox.settings import Settings


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
    except psycopg.OperationalError as exc:
        raise CliError(f"database unreachable: {exc}", EXIT_DATABASE) from exc
    applied = ", ".join(report.applied) if report.applied else "none"
    print(f"migrations: {report.already} already applied, newly applied: {applied}", file=sys.stderr)
    functions = f"{len(report.objects)} applied" if report.objects else "all up to date"
    print(f"function files (sql/functions): {functions}", file=sys.stderr)


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


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    _migrate(database_url(settings))


def _server(settings: Settings, dsn: str) -> uvicorn.Server:
    from inbox.http.app import create_app

    config = uvicorn.Config(
        create_app(settings, dsn),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
    )
    return uvicorn.Server(config)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    require_webhook_auth(settings)
    _server(settings, database_url(settings)).run()


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.is_set():
        stop.wait(0.5)


def cmd_work(args: argparse.Namespace, settings: Settings) -> None:
    from inbox.apply.pool import WorkerPool

    dsn = with_role(database_url(settings), settings.worker_role)
    stop = threading.Event()
    with WorkerPool(dsn, settings, args.concurrency):
        print(f"workers running ({args.concurrency or settings.workers}); Ctrl-C to stop", file=sys.stderr)
        _wait_for_signal(stop)


def cmd_run(args: argparse.Namespace, settings: Settings) -> None:
    """The main job: migrate, then serve HTTP and apply events in one process."""
    from inbox.apply.pool import WorkerPool

    require_webhook_auth(settings)
    dsn = database_url(settings)
    _migrate_if_pending(dsn)
    server = _server(settings, dsn)
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    with WorkerPool(with_role(dsn, settings.worker_role), settings, args.concurrency):
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise CliError(f"HTTP server could not start on {settings.http_host}:{settings.http_port}")
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        base_url = f"http://{host}:{port}"
        print(f"serving {base_url} (POST /events, GET /health, GET /ready)", file=sys.stderr)
        try:
            if args.demo:
                from inbox.commands.demo import run_demo

                token = settings.api_token.get_secret_value() if settings.api_token else None
                run_demo(base_url, dsn, token, sys.stdout)
            else:
                _wait_for_signal(threading.Event())
        finally:
            server.should_exit = True
            thread.join(10)


def register(sub: Any) -> None:
    add_command(sub, "migrate", cmd_migrate, "apply the database migrations (idempotent)")
    add_command(sub, "serve", cmd_serve, "serve the HTTP ingestor only")
    work = add_command(sub, "work", cmd_work, "run the worker pool only")
    work.add_argument("--concurrency", type=int, default=None, help="worker threads (default INBOX_WORKERS)")
    run = add_command(
        sub, "run", cmd_run, "migrate, serve HTTP and run workers in one process (the main job)"
    )
    run.add_argument("--concurrency", type=int, default=None, help="worker threads (default INBOX_WORKERS)")
    run.add_argument(
        "--demo",
        action="store_true",
        help="feed a bundled sample stream through POST /events, show the result, exit",
    )
