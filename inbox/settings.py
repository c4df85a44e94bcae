"""Settings from the environment (prefix INBOX_). Each one is documented here and in the README."""

from __future__ import annotations

import json
import re
from argparse import ArgumentTypeError
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SHORT_DURATION = re.compile(r"^\s*(?P<n>-?\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIMEDELTA = TypeAdapter(timedelta)


def parse_duration(value: object) -> timedelta:
    """A duration as people type it: 90s, 15m, 12h, 7d, 2w; ISO 8601 (P7D, PT12H, P1DT2H); a number
    of seconds. Never negative."""
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, str) and (match := _SHORT_DURATION.match(value)):
        duration = timedelta(seconds=float(match["n"]) * _UNIT_SECONDS[match["unit"] or "s"])
    else:
        try:
            duration = _TIMEDELTA.validate_python(value)
        except ValidationError:
            raise ValueError(
                "not a duration: use a number with a unit (90s, 15m, 12h, 7d, 2w) or ISO 8601 (P7D, PT12H)"
            ) from None
    if duration < timedelta(0):
        raise ValueError("must not be negative")
    return duration


def format_duration(value: timedelta) -> str:
    """The short form parse_duration reads back: 7d, 12h, 90s (the largest unit that divides it)."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

# The placeholders of example files (docker-compose, .env samples): refused as a token or secret.
_PLACEHOLDER = re.compile(r"^(change[-_ ]?me|replace[-_ ]?me|changeit)\b", re.IGNORECASE)

# A role name goes into libpq's startup options (inbox/db/connect.py: with_role): a plain lower-case
# identifier needs no quoting there, and nothing else can ride along with it.
RoleName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INBOX_", extra="ignore")

    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL 15+ connection string (it may hold a password: never logged). "
        "Unset: an embedded PostgreSQL in INBOX_DATA_DIR.",
    )
    data_dir: Path | None = Field(
        None,
        description="Where the embedded PostgreSQL keeps its files. Unset: one folder per user, "
        "~/.local/share/quota-inbox/postgres (/var/lib/quota-inbox/postgres for root); a relative "
        "path is resolved against the working directory, and the command says so.",
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP ingestor listens on.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP ingestor.")
    api_token: SecretStr | None = Field(
        None, description="When set, POST /events needs 'Authorization: Bearer <token>'."
    )
    hmac_secret: SecretStr | None = Field(
        None,
        description="When set, POST /events needs X-Signature: sha256=<hex HMAC-SHA256 of "
        "'<X-Signature-Timestamp>.<body>'> and a fresh X-Signature-Timestamp (Unix seconds).",
    )
    hmac_tolerance_seconds: int = Field(
        300, ge=1, le=3600, description="How far X-Signature-Timestamp may be from now, either way."
    )
    ingest_role: RoleName | None = Field(
        None,
        description="Role the sessions of the HTTP ingestor and `inbox consume` run as (SET ROLE at "
        "connect), e.g. inbox_ingest.",
    )
    worker_role: RoleName | None = Field(
        None, description="Role the sessions of `inbox work` run as (SET ROLE at connect), e.g. inbox_worker."
    )
    readonly_role: RoleName | None = Field(
        None,
        description="Role the HTTP ingestor's /metrics reads as (SET ROLE at connect), e.g. inbox_readonly.",
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    max_events_per_request: int = Field(
        10_000, ge=1, description="A request with more events gets 413 (split it); nothing of it is stored."
    )
    http_apply_at_ingest: bool = Field(
        True,
        description="`inbox serve` applies the typed events of a POST in its transaction, before the "
        "202 (their first attempt); what it cannot apply (untyped events, a failed apply) is left to the "
        "workers. Off: every event waits for `inbox work`.",
    )
    kafka_apply_at_ingest: bool = Field(
        True,
        description="`inbox consume` applies the typed events of a batch in the batch's transaction, "
        "before its offsets are committed (their first attempt); what it cannot apply is left to the "
        "workers. Off: every event waits for `inbox work`.",
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a request's headers this long after it opened (or "
        "after its previous response) is closed.",
    )
    http_max_concurrency: int = Field(
        100, ge=1, description="Connections and requests the HTTP server takes at once; beyond, 503."
    )
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers of `inbox consume`.")
    kafka_topic: str = Field("titan.quota", description="The topic `inbox consume` reads.")
    kafka_group: str = Field(
        "quota-inbox", description="Consumer group; the processes of one group share the partitions."
    )
    kafka_consumers: int = Field(
        2,
        ge=1,
        le=64,
        description="Members of the consumer group in one `inbox consume` process, each a thread with its "
        "own consumer and database session: up to this many batches in the database at once. The group "
        "splits the partitions between members (one beyond the partition count idles).",
    )
    kafka_config_json: SecretStr = Field(
        SecretStr("{}"),
        description="Extra librdkafka settings as a JSON object (SASL, TLS, timeouts), "
        'e.g. {"security.protocol": "SASL_SSL"}; a secret (it may hold a SASL password): never logged '
        "or echoed.",
    )
    kafka_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Kafka messages stored per transaction."
    )
    kafka_batch_wait_seconds: float = Field(
        0.1, gt=0, description="How long `inbox consume` waits for a batch to fill before storing it."
    )
    kafka_alive_file: Path | None = Field(
        None, description="When set, `inbox consume` touches this file every second or so: a liveness probe."
    )
    workers: int = Field(2, ge=1, le=64, description="Worker threads that claim and apply events.")
    batch_size: int = Field(500, ge=1, le=10_000, description="Events claimed per batch.")
    max_attempts: int = Field(
        5, ge=1, description="Claims an event may use on transient failures before it is dead-lettered."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="How long a claim lasts; a dead worker's events return after it."
    )
    backoff_base_seconds: float = Field(0.5, gt=0, description="First retry delay; doubles per attempt.")
    backoff_cap_seconds: float = Field(60.0, gt=0, description="Longest retry delay.")
    poll_seconds: float = Field(
        1.0, gt=0, description="Idle workers poll this often if no NOTIFY wakes them first."
    )
    statement_timeout_ms: int = Field(
        15_000, ge=0, description="statement_timeout of worker sessions (0 disables)."
    )
    reap_interval_seconds: float = Field(5.0, gt=0, description="How often expired leases are reaped.")
    retention: Duration = Field(
        timedelta(days=7),
        description="Finished inbox rows (applied, stale, dead and resolved) older than this are deleted "
        "(a duration: 90s, 12h, 7d, or ISO 8601 such as P7D, PT12H).",
    )
    history_retention: Duration = Field(
        timedelta(days=30),
        description="Kafka rejects received, and dead letters resolved, longer ago than this are deleted "
        "(a duration, as INBOX_RETENTION). Open dead letters are never deleted.",
    )
    gate_retention: Duration | None = Field(
        None,
        description="When set, the version gate of a deleted quota is forgotten this long after the delete "
        "(a duration); an event older than the delete arriving after that would apply again, so set it "
        "well beyond the longest redelivery plus INBOX_RETENTION. Unset: kept forever.",
    )
    retention_interval_seconds: float = Field(60.0, gt=0, description="How often retention runs.")
    retention_batch_size: int = Field(
        5000, ge=1, description="Rows deleted per retention transaction (short locks, SKIP LOCKED)."
    )
    alert_interval_seconds: float = Field(
        30.0, gt=0, description="How often the dead-letter rate and the database are checked for alerts."
    )
    alert_dead_letter_threshold: int = Field(
        10, ge=1, description="Dead letters within INBOX_ALERT_WINDOW_SECONDS that raise an alert."
    )
    alert_window_seconds: float = Field(
        300.0, gt=0, description="Window of the dead-letter rate alert; also its re-notify interval."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="When set, /metrics is also served on this port (0: any free port)."
    )
    metrics_refresh_seconds: float = Field(
        15.0, gt=0, description="How old the figures behind /metrics may get before they are read again."
    )

    allowed_hosts: str = Field(
        "",
        description="Without INBOX_API_TOKEN or INBOX_HMAC_SECRET, requests must name this machine in "
        "Host (localhost, 127.0.0.0/8, [::1]); these comma-separated host names are accepted too.",
    )
    allowed_origins: str = Field(
        "",
        description="A request with an Origin header (sent by browsers) is refused unless its origin "
        "is in this comma-separated list, e.g. https://admin.example.com.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; unset: no one's.",
    )
    openapi: bool = Field(False, description="Serve the OpenAPI description at /openapi.json.")
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, /metrics (also on INBOX_METRICS_PORT) needs 'Authorization: Bearer "
        "<token>' (Prometheus: the scrape config's authorization.credentials).",
    )

    @field_validator("database_url")
    @classmethod
    def _parses(cls, value: SecretStr | None) -> SecretStr | None:
        from inbox.db.location import dsn_problem

        problem = None if value is None else dsn_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("kafka_config_json", mode="before")
    @classmethod
    def _kafka_config(cls, value: object) -> object:
        """A JSON object of librdkafka settings; the reason for a refusal names no part of it."""
        if isinstance(value, dict):
            value = json.dumps(value)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            raise ValueError("must be a JSON object")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                'expected an object such as {"security.protocol": "SASL_SSL"}'
            ) from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object of librdkafka settings")
        for key, item in parsed.items():
            if not isinstance(item, str | int | float | bool):
                raise ValueError(f"the value of {key!r} must be a string, number or boolean")
        return text

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for the log filter (inbox/logs.py)."""
        from inbox.db.location import secrets_in

        found = secrets_in(self.database_url.get_secret_value()) if self.database_url else []
        for secret in (self.api_token, self.hmac_secret, self.metrics_token):
            if secret is not None:
                found.append(secret.get_secret_value())
        for key, value in self.kafka_config().items():
            if isinstance(value, str) and re.search(r"password|secret|jaas|token|key", key, re.IGNORECASE):
                found.append(value)
        return found

    def kafka_config(self) -> dict[str, str | int | float | bool]:
        """INBOX_KAFKA_CONFIG_JSON as librdkafka settings (checked at load)."""
        parsed: dict[str, str | int | float | bool] = json.loads(self.kafka_config_json.get_secret_value())
        return parsed

    @field_validator("api_token", "hmac_secret", "metrics_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token would be compared against an empty bearer: set but open.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty; unset it instead")
        # A newline from a secret file would make every request fail to match, silently.
        if value is not None and value.get_secret_value() != value.get_secret_value().strip():
            raise ValueError("begins or ends with whitespace (a newline from a file?); remove it")
        # A placeholder from an example file is known to everyone who read the example.
        if value is not None and _PLACEHOLDER.match(value.get_secret_value().strip()):
            raise ValueError("is a placeholder; set a random value, e.g. `openssl rand -hex 32`")
        return value

    def effective_statement_timeout_ms(self) -> int:
        """A statement must end before its lease does, or a stuck statement could outlive its claim."""
        lease_ms = int(self.lease_seconds * 1000)
        if self.statement_timeout_ms == 0:
            return lease_ms
        return min(self.statement_timeout_ms, lease_ms)


def positive_int(text: str) -> int:
    """argparse type of a count that overrides a setting (--batch-size, --limit): 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ArgumentTypeError(f"must be 1 or more, got {value}")
    return value
