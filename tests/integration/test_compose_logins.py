"""deploy/compose/logins.sql on a real PostgreSQL: the logins of docker-compose.yml get exactly the
roles of migration 007 they need, and a second run changes nothing but the passwords."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from inbox.db.embedded import _bin_dir

LOGINS_SQL = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "logins.sql"
PASSWORDS = {
    f"{name}_password": f"pw-{name}-0451" for name in ("webhook", "consumer", "worker", "sink", "reader")
}


def run_logins(dsn: str) -> None:
    variables = [arg for name, value in PASSWORDS.items() for arg in ("-v", f"{name}={value}")]
    result = subprocess.run(
        [
            str(_bin_dir() / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(LOGINS_SQL),
            *variables,
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("login", "table", "privilege", "allowed"),
    [
        ("quota_sink", "inbox.titan_quota_sink", "INSERT", True),
        ("quota_sink", "public.quota", "SELECT", False),
        ("quota_webhook", "inbox.quota_events", "UPDATE", False),
        ("quota_webhook", "inbox.v_status", "SELECT", True),
        ("quota_consumer", "inbox.v_status", "SELECT", False),
        ("quota_worker", "public.quota", "UPDATE", True),
        ("quota_worker", "inbox.schema_migrations", "INSERT", False),
        ("quota_reader", "public.quota", "SELECT", False),
    ],
)
def test_each_login_has_its_roles_rights_and_no_more(
    dsn: str, login: str, table: str, privilege: str, allowed: bool
) -> None:
    run_logins(dsn)
    run_logins(dsn)  # idempotent
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (login, table, privilege)).fetchone()
        assert row == (allowed,)
        supers = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'quota\\_%%'"
            " AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls)"
        ).fetchall()
        assert supers == []
    # a login works: it connects as itself
    with psycopg.connect(make_conninfo(dsn, user=login)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (login,)
