"""Settings of a command: loaded from INBOX_* with one-line errors, listed in --help, and the DSN."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic

from inbox.commands.errors import CliError
from inbox.db import location
from inbox.db.connect import connect
from inbox.db.embedded import start_embedded
from inbox.db.errors import DatabaseError, Failure, classify, primary_message
from inbox.db.queries import Queries
from inbox.settings import Settings, format_duration


def settings_help() -> str:
    lines = ["Settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, pydantic.SecretStr):
            default = default.get_secret_value()  # a default is no secret
        if default is None:
            shown = "unset"
        elif isinstance(default, timedelta):
            shown = format_duration(default)
        else:
            shown = str(default)
        lines.append(f"  INBOX_{name.upper():<24} {field.description} [default: {shown}]")
    return "\n".join(lines)


def load_settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        # Name the variable and the rule; never echo the value, which may be a secret (the validators
        # of inbox/settings.py word their reasons without it, INBOX_KAFKA_CONFIG_JSON included).
        problems = "; ".join(
            f"INBOX_{'_'.join(str(part) for part in error['loc']).upper()}: "
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None


def ensure_database(settings: Settings) -> str:
    """The DSN of INBOX_DATABASE_URL; when it is unset, this STARTS the embedded PostgreSQL in
    INBOX_DATA_DIR (or joins the one running there) and returns its DSN."""
    if settings.database_url:
        return settings.database_url.get_secret_value()
    return start_embedded(embedded_data_dir(settings), cleanup="stop")


def embedded_data_dir(settings: Settings) -> Path:
    """INBOX_DATA_DIR made absolute (said on stderr when it was relative), or the per-user default."""
    data_dir, note = location.data_dir(settings.data_dir)
    if note:
        print(f"inbox: {note}", file=sys.stderr)
    return data_dir


def shown_dsn(settings: Settings, dsn: str) -> str:
    """The DSN to show a person: a configured one without its password."""
    return location.without_password(dsn) if settings.database_url else dsn


@contextmanager
def database(settings: Settings, application_name: str = "quota-inbox cli") -> Iterator[Queries]:
    """The queries on one connection for one command; a schema without the migrations is an
    expected condition."""
    with connect(ensure_database(settings), autocommit=True, application_name=application_name) as conn:
        try:
            yield Queries(conn)
        except DatabaseError as exc:
            if classify(exc) is not Failure.NOT_MIGRATED:
                raise
            raise CliError(
                f"the database is not migrated for this version (run `inbox migrate`): {primary_message(exc)}"
            ) from exc


# A command returns None, or an exit code that is not an error (reconcile: 1 when it found drift).
Command = Callable[[argparse.Namespace, Settings], int | None]


def add_command(sub: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the settings it reads."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser
