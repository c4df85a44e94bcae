"""Which database a command uses, and how its connection string is shown and checked without secrets."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inbox.db.embedded import default_data_dir


def data_dir(configured: Path | None) -> tuple[Path, str | None]:
    """The embedded server's folder as an absolute path, and a note to show when INBOX_DATA_DIR was
    relative (resolved once, against the working directory of this command)."""
    if configured is None:
        return default_data_dir(), None
    path = configured.expanduser()
    if path.is_absolute():
        return path, None
    resolved = path.resolve()
    return resolved, f"INBOX_DATA_DIR={configured} is relative: using {resolved}"


def dsn_problem(dsn: str) -> str | None:
    """Why libpq cannot parse dsn, said without any part of it (its quoted fragments may hold the
    password), or None when it parses."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = re.sub(r'"[^"]*"', '"…"', " ".join(str(exc).split()))
        hint = (
            " (a % must start a two-hex-digit escape: write a literal % as %25)"
            if "percent" in reason
            else " (expected postgresql://user:password@host:port/database or key=value pairs)"
        )
        return f"not a PostgreSQL connection string: {reason}{hint}"
    return None


def without_password(dsn: str) -> str:
    """dsn without its password (libpq then asks for it, or reads PGPASSWORD / ~/.pgpass)."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password" and v is not None}
    return make_conninfo("", **params)


def secrets_in(dsn: str) -> list[str]:
    """The password of dsn as written and as libpq reads it, for the log filter."""
    found: list[str] = []
    try:
        raw = urlsplit(dsn).password if "://" in dsn else None
    except ValueError:
        raw = None
    if raw:
        found.append(raw)
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        found.append(str(password))
    return found
