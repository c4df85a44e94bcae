"""Webhook security on the real server: HMAC signatures, credentials off loopback, secrets out of logs,
and the service running under the least-privilege roles of migration 007."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inbox.db.connect import DictConnection
from inbox.http.signing import sign
from tests.acceptance.conftest import UNREACHABLE_DSN, LiveServer, StartServer
from tests.cdc_events import debezium_event
from tests.helpers import inbox_rows, quota, titan_event, to_json
from tests.processes import SERVICE_ROLES, inbox_env, inbox_process, wait_for

SECRET = "hmac-secret-for-tests-only"
TOKEN = "bearer-token-for-tests-only"


def _body() -> bytes:
    return to_json(titan_event(uuid.uuid4(), 1, "INSERT")).encode()


def _post(live: LiveServer, body: bytes, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        return client.post("/events", content=body, headers={"Content-Type": "application/json", **headers})


def _signed(body: bytes, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"X-Signature": sign(secret.encode(), ts, body), "X-Signature-Timestamp": ts}


@pytest.fixture
def signed_only(start_server: StartServer, dsn: str) -> LiveServer:
    return start_server(dsn, hmac_secret=SecretStr(SECRET), hmac_tolerance_seconds=300)


def test_a_signed_request_is_accepted(signed_only: LiveServer, db: DictConnection) -> None:
    body = _body()

    response = _post(signed_only, body, **_signed(body))

    assert response.status_code == 202, response.text
    assert inbox_rows(db) == 1


def test_signature_in_upper_case_hex_is_accepted(signed_only: LiveServer, db: DictConnection) -> None:
    body = _body()
    headers = _signed(body)
    headers["X-Signature"] = "sha256=" + headers["X-Signature"].removeprefix("sha256=").upper()

    assert _post(signed_only, body, **headers).status_code == 202


def _tampered(body: bytes) -> dict[str, Any]:
    return {"body": body.replace(b'"CP-1"', b'"CP-2"'), "headers": _signed(body)}


def _now() -> int:
    return int(time.time())


REFUSED: dict[str, Any] = {
    "unsigned": lambda body: {"body": body, "headers": {}},
    "no-timestamp": lambda body: {"body": body, "headers": {"X-Signature": _signed(body)["X-Signature"]}},
    "no-signature": lambda body: {"body": body, "headers": {"X-Signature-Timestamp": str(_now())}},
    "body-changed": _tampered,
    "other-secret": lambda body: {"body": body, "headers": _signed(body, secret="not-the-secret")},
    "stale": lambda body: {"body": body, "headers": _signed(body, _now() - 301)},
    # A slow request moves the server's clock towards a future timestamp: leave it a minute's room.
    "from-the-future": lambda body: {"body": body, "headers": _signed(body, _now() + 360)},
    "timestamp-not-a-number": lambda body: {
        "body": body,
        "headers": {**_signed(body), "X-Signature-Timestamp": "yesterday"},
    },
    "timestamp-of-another-request": lambda body: {
        "body": body,
        "headers": {**_signed(body, _now() - 10), "X-Signature-Timestamp": str(_now())},
    },
    "digest-without-scheme": lambda body: {
        "body": body,
        "headers": {**_signed(body), "X-Signature": _signed(body)["X-Signature"].removeprefix("sha256=")},
    },
    "truncated-digest": lambda body: {
        "body": body,
        "headers": {**_signed(body), "X-Signature": _signed(body)["X-Signature"][:-2]},
    },
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_request_without_a_valid_fresh_signature_is_401_and_stores_nothing(
    signed_only: LiveServer, db: DictConnection, case: str
) -> None:
    request = REFUSED[case](_body())

    response = _post(signed_only, request["body"], **request["headers"])

    assert response.status_code == 401, response.text
    assert response.json()["error"].startswith("bad signature: ")
    assert SECRET not in response.text
    assert inbox_rows(db) == 0


def test_a_replayed_request_within_the_window_stores_nothing_new(
    signed_only: LiveServer, db: DictConnection
) -> None:
    body = _body()
    headers = _signed(body)

    first = _post(signed_only, body, **headers)
    replay = _post(signed_only, body, **headers)

    assert first.json() == {"accepted": 1, "duplicates": 0, "finished": 1}
    assert replay.json() == {"accepted": 0, "duplicates": 1, "finished": 0}
    assert inbox_rows(db) == 1


@pytest.mark.parametrize(
    ("bearer", "signed", "status"),
    [(True, True, 202), (True, False, 401), (False, True, 401), (False, False, 401)],
)
def test_with_token_and_secret_both_are_required(
    start_server: StartServer, dsn: str, db: DictConnection, bearer: bool, signed: bool, status: int
) -> None:
    live = start_server(dsn, api_token=SecretStr(TOKEN), hmac_secret=SecretStr(SECRET))
    body = _body()
    headers = {
        **(_signed(body) if signed else {}),
        **({"Authorization": f"Bearer {TOKEN}"} if bearer else {}),
    }

    response = _post(live, body, **headers)

    assert response.status_code == status
    assert inbox_rows(db) == (1 if status == 202 else 0)


# -- listening beyond loopback ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "run"])
def test_serve_and_run_refuse_a_public_address_without_a_credential(command: str, tmp_path: Path) -> None:
    env = inbox_env(UNREACHABLE_DSN, INBOX_HTTP_HOST="0.0.0.0", INBOX_HTTP_PORT="0")  # noqa: S104

    with inbox_process(command, env=env, log=tmp_path / "out.log") as process:
        code = process.proc.wait(60)

    assert code == 1
    assert "refusing to listen on '0.0.0.0'" in process.output()
    assert "INBOX_API_TOKEN or INBOX_HMAC_SECRET" in process.output()


@pytest.mark.parametrize(
    "credential", [{"INBOX_API_TOKEN": TOKEN}, {"INBOX_HMAC_SECRET": SECRET}], ids=["token", "hmac"]
)
def test_run_listens_on_a_public_address_with_a_credential(
    empty_dsn: str, tmp_path: Path, credential: dict[str, str]
) -> None:
    env = inbox_env(empty_dsn, INBOX_HTTP_HOST="0.0.0.0", INBOX_HTTP_PORT="0", **credential)  # noqa: S104

    with inbox_process("run", env=env, log=tmp_path / "out.log") as process:
        url = process.url().replace("0.0.0.0", "127.0.0.1")  # noqa: S104
        response = httpx.post(f"{url}/events", content=_body(), timeout=30)

    assert response.status_code == 401  # listening, and guarded


# -- secrets stay out of the logs ------------------------------------------------------------------


def test_no_secret_reaches_the_logs(dsn: str, tmp_path: Path) -> None:
    password = "pw-that-must-not-leak"
    secret_dsn = dsn.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@")
    if secret_dsn == dsn:  # a key=value DSN (INBOX_TEST_DSN): add the password as a parameter
        secret_dsn = f"{dsn} password={password}"
    env = inbox_env(secret_dsn, INBOX_HTTP_PORT="0", INBOX_API_TOKEN=TOKEN, INBOX_HMAC_SECRET=SECRET)
    body = _body()

    with inbox_process("--log-level", "DEBUG", "run", env=env, log=tmp_path / "run.log") as process:
        url = process.url()
        with httpx.Client(base_url=url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.post("/events", content=body).status_code == 401
            assert (
                client.post("/events", content=body, headers={"Authorization": "Bearer nope"}).status_code
                == 401
            )
            assert client.post("/events", content=body, headers=auth).status_code == 401  # unsigned
            signed = {**auth, **_signed(body)}
            assert client.post("/events", content=body, headers=signed).status_code == 202
            assert client.post("/events", content=b"{", headers={**auth, **_signed(b"{")}).status_code == 400
            poison = to_json(titan_event(uuid.uuid4(), 1, "INSERT", direction="HOLD")).encode()
            assert (
                client.post("/events", content=poison, headers={**auth, **_signed(poison)}).status_code == 202
            )
            assert client.get("/metrics").status_code == 200
        wait_for(lambda: "event dead-lettered" in process.output(), "the poison event's log line")
        assert process.output().count("refused an unauthenticated request") == 3
    down = inbox_env(
        f"postgresql://postgres:{password}@127.0.0.1:1/postgres?connect_timeout=1",
        INBOX_HTTP_PORT="0",
        INBOX_API_TOKEN=TOKEN,
        INBOX_HMAC_SECRET=SECRET,
    )
    with inbox_process("--log-level", "DEBUG", "migrate", env=down, log=tmp_path / "down.log") as failed:
        assert failed.proc.wait(60) != 0
    bad_setting = {**env, "INBOX_HMAC_TOLERANCE_SECONDS": "soon"}
    with inbox_process("work", env=bad_setting, log=tmp_path / "bad.log") as refused:
        assert refused.proc.wait(60) == 1

    logs = process.output() + failed.output() + refused.output()
    assert "INBOX_HMAC_TOLERANCE_SECONDS" in refused.output()  # the run said what was wrong ...
    for secret in (password, TOKEN, SECRET):
        assert secret not in logs  # ... and no secret anywhere


# -- the service under the roles of migration 007 -------------------------------------------------


def test_the_service_runs_as_the_configured_roles(dsn: str, db: DictConnection, tmp_path: Path) -> None:
    env = inbox_env(
        dsn,
        INBOX_HTTP_PORT="0",
        INBOX_POLL_SECONDS="0.1",
        INBOX_METRICS_REFRESH_SECONDS="0.1",
        **SERVICE_ROLES,
    )
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    with (
        inbox_process("run", env=env, log=tmp_path / "run.log") as process,
        httpx.Client(base_url=process.url(), timeout=30) as client,
    ):
        assert client.post("/events", content=to_json(titan_event(first, 1, "INSERT"))).status_code == 202
        wait_for(lambda: quota(db, first) is not None, "the first event applied")
        assert client.get("/ready").status_code == 200
        metrics = client.get("/metrics")
        assert "inbox_database_up 1.0" in metrics.text

        # Take a right away from each role: the service loses exactly what that role did for it,
        # so the sessions run as the roles (the login, a superuser here, would not notice).
        # A Titan upsert is typed at the edge (ingest_typed_events), other events are not (ingest_events).
        ingest_functions = "FUNCTION inbox.ingest_events, inbox.ingest_typed_events"
        db.execute(f"REVOKE EXECUTE ON {ingest_functions} FROM inbox_ingest")
        refused = client.post("/events", content=to_json(titan_event(second, 1, "INSERT")))
        db.execute(f"GRANT EXECUTE ON {ingest_functions} TO inbox_ingest")
        db.execute("REVOKE UPDATE ON inbox.quota_events FROM inbox_worker")
        # a Debezium change: the workers type and apply it (a Titan upsert, as the first one, is applied
        # at ingest by the ingest role's definer function)
        assert client.post("/events", content=to_json(debezium_event(third, 1))).status_code == 202
        time.sleep(1)  # ten poll intervals: the workers try, and may not claim
        unclaimed = db.execute(
            "SELECT status FROM inbox.quota_events WHERE quota_id = %s", [third]
        ).fetchone()
        db.execute("GRANT UPDATE ON inbox.quota_events TO inbox_worker")
        wait_for(lambda: quota(db, third) is not None, "the third event applied once the right is back")
        db.execute("REVOKE SELECT ON inbox.metric_counters FROM inbox_readonly")
        metrics_refused = client.get("/metrics")

    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert unclaimed == {"status": "pending"}
    assert "inbox_database_up 0.0" in metrics_refused.text
    assert quota(db, second) is None
