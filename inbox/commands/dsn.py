"""`inbox dsn`: the connection string of the database in use, for psql "$(inbox dsn)" and the examples."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from inbox.commands.config import add_command, embedded_data_dir
from inbox.db import location
from inbox.db.embedded import embedded_dsn, embedded_running
from inbox.settings import Settings


def cmd_dsn(args: argparse.Namespace, settings: Settings) -> None:
    """INBOX_DATABASE_URL without its password unless asked; else the embedded server's socket DSN."""
    if settings.database_url:
        dsn = settings.database_url.get_secret_value()
        print(dsn if args.show_password else location.without_password(dsn))
        return
    data_dir = embedded_data_dir(settings)
    print(embedded_dsn(data_dir))
    if not embedded_running(data_dir):
        print(
            f"inbox: the embedded PostgreSQL in {data_dir} is not running; it runs while `inbox run` "
            "(or any other inbox command) does",
            file=sys.stderr,
        )


def register(sub: Any) -> None:
    dsn = add_command(
        sub, "dsn", cmd_dsn, 'print the connection string of the database in use: psql "$(inbox dsn)"'
    )
    dsn.add_argument(
        "--show-password", action="store_true", help="include the password of INBOX_DATABASE_URL"
    )
