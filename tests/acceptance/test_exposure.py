"""What the service shows and to whom: requests a browser page could forge (M1), the API description,
forwarded client addresses, /metrics behind a token, and secrets in errors and logs (M6, Kafka config).
Each against the real server or the real `inbox` command."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from inbox.db.embedded import _bin_dir, release_embedded, start_embedded
from inbox.db.location import without_password
from inbox.logs import JsonFormatter, redact
from inbox.metrics import serve_metrics
from tests.acceptance.conftest import StartServer
from tests.helpers import titan_event, to_json
from tests.processes import inbox_env, inbox_process, wait_for

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw-0451"


def inbox_cli(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inbox.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def one_event() -> bytes:
    return to_json(titan_event(uuid.uuid4(), 1, "INSERT")).encode()


def post(base_url: str, headers: dict[str, str]) -> int:
    return httpx.post(f"{base_url}/events", content=one_event(), headers=headers, timeout=30).status_code


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM inbox.quota_events").fetchone()
        assert row is not None
        return int(row[0])


# -- M1: a page in a browser on this host may not file events -------------------------------------


def test_a_text_plain_post_is_refused_with_415(start_server: StartServer, dsn: str) -> None:
    live = start_server(dsn)
    response = httpx.post(
        f"{live.base_url}/events", content=one_event(), headers={"Content-Type": "text/plain"}, timeout=30
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    form = httpx.post(f"{live.base_url}/events", data={"a": "b"}, timeout=30)
    assert form.status_code == 415
    assert stored(dsn) == 0
    ok = httpx.post(
        f"{live.base_url}/events",
        content=one_event(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert ok.status_code == 202


def test_a_foreign_origin_is_refused_unless_listed(start_server: StartServer, dsn: str) -> None:
    headers = {"Content-Type": "application/json", "Origin": "http://evil.example"}
    closed = start_server(dsn)
    response = httpx.post(f"{closed.base_url}/events", content=one_event(), headers=headers, timeout=30)
    assert response.status_code == 403
    assert "INBOX_ALLOWED_ORIGINS" in response.json()["error"]
    assert stored(dsn) == 0
    listed = start_server(dsn, allowed_origins="https://admin.example, http://evil.example")
    assert post(listed.base_url, headers) == 202


def test_a_foreign_host_is_refused_without_a_credential_dns_rebinding(
    start_server: StartServer, dsn: str
) -> None:
    rebound = {"Content-Type": "application/json", "Host": "evil.example:8080"}
    closed = start_server(dsn)
    assert post(closed.base_url, rebound) == 403
    assert (
        httpx.get(f"{closed.base_url}/metrics", headers={"Host": "evil.example"}, timeout=30).status_code
        == 403
    )
    assert stored(dsn) == 0
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        assert httpx.get(f"{closed.base_url}/health", headers={"Host": host}, timeout=30).status_code == 200
    listed = start_server(dsn, allowed_hosts="evil.example")
    assert post(listed.base_url, rebound) == 202
    # With a token the browser cannot forge the request anyway: any Host name reaches the service.
    tokened = start_server(dsn, api_token="token-for-exposure-tests")
    with_token = {**rebound, "Authorization": "Bearer token-for-exposure-tests"}
    assert post(tokened.base_url, with_token) == 202


# -- Low: the API description, no CDN -------------------------------------------------------------


def test_docs_and_openapi_are_off_by_default(start_server: StartServer, dsn: str) -> None:
    closed = start_server(dsn)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{closed.base_url}{path}", timeout=30).status_code == 404, path
    opened = start_server(dsn, openapi=True)
    spec = httpx.get(f"{opened.base_url}/openapi.json", timeout=30)
    assert spec.status_code == 200
    assert "/events" in spec.json()["paths"]
    assert httpx.get(f"{opened.base_url}/docs", timeout=30).status_code == 404  # its page loads a CDN


# -- Low: X-Forwarded-For only from a configured proxy ---------------------------------------------


@pytest.mark.parametrize(("trusted", "logged"), [("", "127.0.0.1"), ("127.0.0.1", "203.0.113.9")])
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    dsn: str, tmp_path: Path, trusted: str, logged: str
) -> None:
    env = inbox_env(
        dsn, INBOX_HTTP_PORT="0", INBOX_API_TOKEN="token-for-exposure-tests", INBOX_TRUSTED_PROXIES=trusted
    )
    with inbox_process("run", env=env, log=tmp_path / "run.log") as process:
        url = process.url()
        headers = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer wrong"}
        assert post(url, headers) == 401
        wait_for(lambda: "refused an unauthenticated request" in process.output(), "the refusal's log line")
    (line,) = [json.loads(x) for x in process.output().splitlines() if "refused an unauthenticated" in x]
    assert line["client"] == logged


# -- /metrics behind a token -----------------------------------------------------------------------


def test_metrics_need_the_token_when_one_is_set(start_server: StartServer, dsn: str) -> None:
    live = start_server(dsn, metrics_token="scrape-token-0451")
    assert httpx.get(f"{live.base_url}/metrics", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{live.base_url}/metrics", headers=wrong, timeout=30).status_code == 401
    right = {"Authorization": "Bearer scrape-token-0451"}
    response = httpx.get(f"{live.base_url}/metrics", headers=right, timeout=30)
    assert response.status_code == 200
    assert "inbox_" in response.text


def test_the_metrics_port_needs_the_token_when_one_is_set(dsn: str) -> None:
    server, port = serve_metrics(dsn, 15.0, "127.0.0.1", 0, token="scrape-token-0451")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url, timeout=30).status_code == 401
        response = httpx.get(url, headers={"Authorization": "Bearer scrape-token-0451"}, timeout=30)
        assert response.status_code == 200
        assert "inbox_" in response.text
    finally:
        server.shutdown()
        server.server_close()


# -- M6: a DSN's password never printed, never logged ---------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        f"postgresql://inbox:{PASSWORD}%zz@127.0.0.1:1/csla",  # a % that starts no escape
        f"postgresql://inbox:{PASSWORD}@127.0.0.1:1/csla%g1",
        f"host=127.0.0.1 password='{PASSWORD}",  # an unterminated quote
        f"host=db password={PASSWORD} 2",  # a blank in an unquoted value
        "not a dsn",
    ],
)
def test_a_malformed_dsn_is_one_line_without_the_password(bad: str) -> None:
    result = inbox_cli("status", env=inbox_env(bad))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "INBOX_DATABASE_URL: not a PostgreSQL connection string" in lines[0]
    assert PASSWORD not in result.stdout + result.stderr
    assert '"not"' not in lines[0]  # libpq quotes the pieces it stumbles on: none is shown


def test_the_outbox_consumer_example_shows_no_part_of_a_malformed_dsn() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "outbox_consumer.py"), f"postgresql://u:{PASSWORD}%zz@h/db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "outbox_consumer: error: not a PostgreSQL connection string" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_a_secret_that_reaches_a_log_call_is_written_as_stars() -> None:
    redact([PASSWORD])
    record = logging.makeLogRecord(
        {"msg": "connection failed: %s", "args": (f"password={PASSWORD}",), "levelname": "WARNING"}
    )
    record.__dict__["error"] = f"token {PASSWORD} refused"
    line = JsonFormatter().format(record)
    assert PASSWORD not in line
    assert json.loads(line)["message"] == "connection failed: password=***"
    assert json.loads(line)["error"] == "token *** refused"


# -- INBOX_KAFKA_CONFIG_JSON is a secret -----------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (f"notjson{PASSWORD}", "not valid JSON"),
        (json.dumps(["sasl.password", PASSWORD]), "JSON object"),
        (json.dumps({"sasl.password": {"nested": PASSWORD}}), "string, number or boolean"),
    ],
)
def test_a_bad_kafka_config_is_one_line_that_echoes_none_of_it(config: str, said: str) -> None:
    result = inbox_cli("consume", env=inbox_env(None, INBOX_KAFKA_CONFIG_JSON=config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "inbox: error: invalid settings: INBOX_KAFKA_CONFIG_JSON: " in result.stderr
    assert said in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_a_kafka_setting_librdkafka_refuses_is_named_not_echoed(dsn: str) -> None:
    config = json.dumps({"security.protocol": PASSWORD, "sasl.password": PASSWORD})
    result = inbox_cli("consume", env=inbox_env(dsn, INBOX_KAFKA_CONFIG_JSON=config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "security.protocol" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# -- inbox dsn -------------------------------------------------------------------------------------


def test_inbox_dsn_of_a_configured_database_hides_the_password_unless_asked() -> None:
    dsn = f"postgresql://inbox:{PASSWORD}@db.internal:5432/csla"
    shown = inbox_cli("dsn", env=inbox_env(dsn))
    assert shown.returncode == 0, shown.stderr
    assert PASSWORD not in shown.stdout + shown.stderr
    assert shown.stdout.strip() == without_password(dsn)
    assert "host=db.internal" in shown.stdout and "dbname=csla" in shown.stdout
    revealed = inbox_cli("dsn", "--show-password", env=inbox_env(dsn))
    assert revealed.stdout.strip() == dsn


@pytest.fixture
def open_base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="inbox-dsn-test-"))
    folder.chmod(0o755)  # the server's own user (root runs it as embedded_postgres) must pass
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_psql_reaches_the_embedded_server_through_inbox_dsn(open_base: Path, tmp_path: Path) -> None:
    data_dir = open_base / "data"
    start_embedded(data_dir)
    try:
        result = inbox_cli("dsn", env=inbox_env(None, INBOX_DATA_DIR=str(data_dir)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        psql = subprocess.run(
            [str(_bin_dir() / "psql"), result.stdout.strip(), "-tAc", "SELECT current_database()"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert psql.returncode == 0, psql.stderr
        assert psql.stdout.strip() == "postgres"
    finally:
        release_embedded(data_dir)


def test_a_relative_data_dir_is_resolved_once_and_said(tmp_path: Path) -> None:
    result = inbox_cli("dsn", env=inbox_env(None, INBOX_DATA_DIR="rel-data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"INBOX_DATA_DIR=rel-data is relative: using {tmp_path / 'rel-data'}" in result.stderr
    assert f"host={tmp_path / 'rel-data'}" in result.stdout


def test_the_default_data_dir_is_the_same_from_every_directory(tmp_path: Path) -> None:
    env = inbox_env(None)
    here = inbox_cli("dsn", env=env, cwd=tmp_path)
    there = inbox_cli("dsn", env=env, cwd=Path("/"))
    assert here.returncode == 0, here.stderr
    assert here.stdout == there.stdout
    host = here.stdout.strip().split("host=", 1)[1]
    assert Path(host).is_absolute()
    assert not Path(host).is_relative_to(tmp_path)


# -- --demo signs its requests ----------------------------------------------------------------------


def test_the_demo_signs_its_requests_when_a_secret_is_set(empty_dsn: str) -> None:
    env = inbox_env(empty_dsn, INBOX_HTTP_PORT="0", INBOX_HMAC_SECRET="demo-secret-0451")
    result = inbox_cli("run", "--demo", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "-> 202" in result.stdout
