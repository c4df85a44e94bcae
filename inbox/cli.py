"""The `inbox` command: migrate, serve, work, run."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pydantic
import uvicorn

from inbox.db.connect import connect, with_role
from inbox.db.embedded import start_embedded
from inbox.db.migrate import MigrationError, migrate, pending_migrations
from inbox.db.pgmq_setup import PgmqUnavailable
from inbox.kafka import cmd_consume
from inbox.logs import setup_logging
from inbox.settings import Settings

EXIT_FAILURE = 1
EXIT_DATABASE = 2


class CliError(Exception):
    """An expected failure: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(one_line(message))
        self.code = code


def one_line(message: str) -> str:
    """libpq's messages span lines ('...\n\tIs the server running...'); an error here is one line."""
    return " ".join(message.split())


def settings_help() -> str:
    lines = ["Settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else str(default)
        lines.append(f"  INBOX_{name.upper():<24} {field.description} [default: {shown}]")
    return "\n".join(lines)


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url.get_secret_value()
    return start_embedded(settings.data_dir, cleanup="stop")


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
                from inbox.demo import run_demo

                token = settings.api_token.get_secret_value() if settings.api_token else None
                run_demo(base_url, dsn, token, sys.stdout)
            else:
                _wait_for_signal(threading.Event())
        finally:
            server.should_exit = True
            thread.join(10)


def cmd_outbox_tail(args: argparse.Namespace, settings: Settings) -> None:
    from inbox import outbox
    from inbox.db.connect import connect

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with connect(database_url(settings), autocommit=True, application_name="quota-inbox outbox") as conn:
        try:
            for row in outbox.messages(conn, last=args.last, follow=args.follow, ack=args.ack, stop=stop):
                outbox.render(row, sys.stdout)
        except KeyboardInterrupt:
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inbox",
        description="Quota Inbox: Titan quota CDC events -> PostgreSQL inbox -> CSLA quota table.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default INFO; WARNING for --demo)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace, Settings], None], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=settings_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    add("migrate", cmd_migrate, "apply the database migrations (idempotent)")
    add("serve", cmd_serve, "serve the HTTP ingestor only")
    work = add("work", cmd_work, "run the worker pool only")
    work.add_argument("--concurrency", type=int, default=None, help="worker threads (default INBOX_WORKERS)")
    run = add("run", cmd_run, "migrate, serve HTTP and run workers in one process (the main job)")
    run.add_argument("--concurrency", type=int, default=None, help="worker threads (default INBOX_WORKERS)")
    run.add_argument(
        "--demo",
        action="store_true",
        help="feed a bundled sample stream through POST /events, show the result, exit",
    )
    add("consume", cmd_consume, "read the Kafka topic into the inbox (INBOX_KAFKA_*); stops on SIGTERM")
    outbox = sub.add_parser("outbox", help="look at the outbox queue quota_changes")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    tail = outbox_sub.add_parser(
        "tail", help="print outbox messages as JSON lines (peek; --ack consumes and archives them)"
    )
    tail.set_defaults(func=cmd_outbox_tail)
    tail.add_argument("--last", type=int, default=20, help="how many recent messages to start with")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new messages")
    tail.add_argument("--ack", action="store_true", help="consume: read, print, then archive each page")

    from inbox import ops  # here, not at the top: inbox.ops imports this module

    ops.register(sub)
    # Every argument goes to inbox-bench as given ("+" keeps argparse from reading its options here).
    bench = sub.add_parser(
        "bench", help="run inbox-bench (the `bench` extra): see `inbox bench --help`", prefix_chars="+"
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace, settings: Settings) -> None:
    """The benchmark is a package of its own (inbox_bench) that the service never imports: run it."""
    if importlib.util.find_spec("inbox_bench") is None:
        raise CliError("inbox bench runs inbox-bench, which is not installed here: pip install -e '.[bench]'")
    code = subprocess.call([sys.executable, "-m", "inbox_bench", *args.args])
    if code:
        raise SystemExit(code)  # inbox-bench has said why, in one line


def load_settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        # Name the variable and the rule; never echo the value, which may be a secret.
        problems = "; ".join(
            f"INBOX_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or ("WARNING" if getattr(args, "demo", False) else "INFO"))
    try:
        settings = load_settings()
        args.func(args, settings)
    except CliError as exc:
        print(f"inbox: error: {exc}", file=sys.stderr)
        return exc.code
    except psycopg.OperationalError as exc:
        print(f"inbox: error: {one_line(f'database unreachable: {exc}')}", file=sys.stderr)
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    # `python -m inbox.cli` runs this file as __main__; run the importable inbox.cli instead, whose
    # CliError is the one inbox.ops raises.
    from inbox.cli import main as importable_main

    sys.exit(importable_main())
