"""Settings from the environment (prefix INBOX_). Each one is documented here and in the README."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INBOX_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="PostgreSQL 15+ connection string. Unset: an embedded PostgreSQL in INBOX_DATA_DIR.",
    )
    data_dir: Path = Field(Path(".inbox-data"), description="Where the embedded PostgreSQL keeps its files.")
    http_host: str = Field("127.0.0.1", description="Address the HTTP ingestor listens on.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP ingestor.")
    api_token: SecretStr | None = Field(
        None, description="When set, POST /events needs 'Authorization: Bearer <token>'."
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
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

    def effective_statement_timeout_ms(self) -> int:
        """A statement must end before its lease does, or a stuck statement could outlive its claim."""
        lease_ms = int(self.lease_seconds * 1000)
        if self.statement_timeout_ms == 0:
            return lease_ms
        return min(self.statement_timeout_ms, lease_ms)
