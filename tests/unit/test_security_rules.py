"""Security rules that need no server: signatures, credentials off loopback, settings that hold
secrets, and no SQL built from strings anywhere in the service."""

from __future__ import annotations

import ast
import hmac
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from inbox.commands.errors import CliError
from inbox.commands.service import is_loopback, require_webhook_auth
from inbox.http.signing import sign, signature_problem
from inbox.settings import Settings

PACKAGE = Path(__file__).resolve().parents[2] / "inbox"
SECRET = b"unit-secret"
NOW = 1_790_000_000.0


def _problem(
    signature: str | None, timestamp: str | None, body: bytes = b"{}", now: float = NOW
) -> str | None:
    return signature_problem(SECRET, signature, timestamp, body, now=now, tolerance_seconds=300)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, b"1790000000.{}", "sha256").hexdigest()

    assert sign(SECRET, "1790000000", b"{}") == f"sha256={expected}"
    assert _problem(f"sha256={expected}", "1790000000") is None


@pytest.mark.parametrize(
    ("offset", "fresh"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)]
)
def test_timestamp_tolerance_is_symmetric_and_inclusive(offset: int, fresh: bool) -> None:
    timestamp = str(int(NOW) + offset)

    problem = _problem(sign(SECRET, timestamp, b"{}"), timestamp)

    assert (problem is None) is fresh


@pytest.mark.parametrize(
    ("signature", "timestamp", "reason"),
    [
        (None, "1790000000", "missing"),
        ("sha256=" + "0" * 64, None, "missing"),
        ("sha256=" + "0" * 64, "-1790000000", "Unix seconds"),
        ("sha256=" + "0" * 64, "1790000000.5", "Unix seconds"),
        ("sha256=" + "0" * 64, "9" * 13, "Unix seconds"),
        ("sha1=" + "0" * 40, "1790000000", "sha256=<64 hex digits>"),
        ("sha256=" + "g" * 64, "1790000000", "sha256=<64 hex digits>"),
        ("sha256=" + "é" * 64, "1790000000", "sha256=<64 hex digits>"),
        ("sha256=" + "0" * 64, "1790000000", "does not match"),
    ],
)
def test_each_bad_signature_says_why(signature: str | None, timestamp: str | None, reason: str) -> None:
    problem = _problem(signature, timestamp)

    assert problem is not None and reason in problem


def test_digests_and_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.requests import Request

    from inbox.http import routes as http_app

    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    _problem(sign(SECRET, "1790000000", b"{}"), "1790000000")
    request = Request({"type": "http", "headers": [(b"authorization", b"Bearer abc")]})
    assert http_app._authorized(request, "abc")

    assert len(compared) == 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("10.1.2.3", False),
        ("", False),
        ("inbox.example.com", False),
    ],
)
def test_loopback_is_proven_not_guessed(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_address_needs_a_token_or_a_secret() -> None:
    public = "0.0.0.0"  # noqa: S104
    with pytest.raises(CliError, match="refusing to listen"):
        require_webhook_auth(Settings(http_host=public, api_token=None, hmac_secret=None))
    require_webhook_auth(Settings(http_host=public, api_token=SecretStr("t"), hmac_secret=None))
    require_webhook_auth(Settings(http_host=public, api_token=None, hmac_secret=SecretStr("s")))
    require_webhook_auth(Settings(http_host="127.0.0.1", api_token=None, hmac_secret=None))


@pytest.mark.parametrize("field", ["api_token", "hmac_secret"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_credential_is_refused_not_treated_as_set(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        Settings.model_validate({field: SecretStr(value)})


def test_settings_that_hold_secrets_never_show_them() -> None:
    settings = Settings(
        database_url=SecretStr("postgresql://u:pw-123@db/x"),
        api_token=SecretStr("token-123"),
        hmac_secret=SecretStr("hmac-123"),
    )

    shown = repr(settings) + str(settings) + settings.model_dump_json()

    for secret in ("pw-123", "token-123", "hmac-123"):
        assert secret not in shown


@pytest.mark.parametrize("role", ["inbox_ingest", "r2_d2"])
def test_role_names_are_plain_identifiers(role: str) -> None:
    assert Settings(ingest_role=role).ingest_role == role


@pytest.mark.parametrize(
    "role", ["Inbox", "inbox ingest", "x -c log_statement=all", "inbox;drop", "1role", ""]
)
def test_anything_but_a_plain_role_name_is_refused(role: str) -> None:
    with pytest.raises(ValidationError):
        Settings(worker_role=role)


# -- no SQL built from strings ---------------------------------------------------------------------

EXECUTING = {"execute", "executemany", "copy", "stream"}


def _statement_source(arg: ast.expr) -> str | None:
    """Where the statement of an execute() call comes from, if it is an allowed place."""
    match arg:
        case ast.Call(func=ast.Name(id="query"), args=[ast.Constant(value=str())]):
            return "sql/queries.sql"
        case ast.Call(func=ast.Name(id="query"), args=[ast.Name(id="name")]):
            return "sql/queries.sql, by a name the next test checks"
        case ast.Call(func=ast.Attribute(attr="encode", value=ast.Attribute(attr="sql"))):
            return "sql/migrations"
        case ast.Call(
            func=ast.Attribute(attr="encode", value=ast.Call(func=ast.Name(id="get_embedded_install_sql")))
        ):
            return "the pgmq wheel"
        case ast.Call(func=ast.Attribute(attr="format", value=ast.Call(func=ast.Attribute(attr="SQL")))):
            return "psycopg.sql composition"
    return None


def _service_modules() -> list[Path]:
    # The benchmark (inbox_bench, beside the package) builds its own statements.
    return sorted(PACKAGE.rglob("*.py"))


def test_every_statement_comes_from_sql_files_never_from_strings() -> None:
    """Every execute() takes a named query from sql/queries.sql (or a migration file, or pgmq's SQL):
    no f-string, concatenation or %-formatting can reach the database."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node.args[0])}"
        for path in _service_modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in EXECUTING
        and node.args
        and _statement_source(node.args[0]) is None
    ]
    assert not offenders, "statements not from sql/:\n" + "\n".join(offenders)
    assert len(_service_modules()) > 20


def test_the_query_manager_runs_every_named_query_by_its_literal_name() -> None:
    """inbox/db/queries.py is the only caller of query(): its helpers take a literal name each, and
    every named query of sql/queries.sql has its method (none is left that nothing runs)."""
    from inbox.db.sqlfiles import queries

    manager = PACKAGE / "db" / "queries.py"
    tree = ast.parse(manager.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        helper = isinstance(node.func, ast.Attribute) and node.func.attr in {"_one", "_all", "_run"}
        direct = isinstance(node.func, ast.Name) and node.func.id == "query"
        if helper:
            assert isinstance(node.args[0], ast.Constant), ast.unparse(node)
        if (helper or direct) and isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
    assert set(names) == set(queries())
    callers = [
        str(path.relative_to(PACKAGE.parent))
        for path in _service_modules()
        if path != manager
        and re.search(r"\bquery\(", path.read_text(encoding="utf-8"))
        and path.name != "sqlfiles.py"
    ]
    assert callers == []
