"""Typed settings for every carebus process, read once from `CAREBUS_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Final, Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Public on purpose (the local stack and tests); production refuses to start with it.
LOCAL_SUBJECT_KEY_SECRET: Final = "carebus-local-development-secret"  # noqa: S105


class Settings(BaseSettings):
    """Everything a carebus process needs to know about its surroundings.

    Defaults run the local stack that `carebus up` starts; production sets every value
    through the environment (see docker-compose.yml).
    """

    # A secret may also come from a file named like its variable (`carebus_subject_key_secret`)
    # in CAREBUS_SECRETS_DIR: compose mounts its file secrets at /run/secrets.
    model_config = SettingsConfigDict(
        env_prefix="CAREBUS_", extra="ignore", secrets_dir=os.environ.get("CAREBUS_SECRETS_DIR")
    )

    environment: str = "local"
    state_dir: Path = PROJECT_ROOT / ".carebus"

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    # Every person-scoped topic has this many partitions, so one subject key lands on the same
    # partition number in each of them.
    person_partitions: int = 4
    # Replication of the topics faust creates for itself (table changelogs); 3 in production.
    internal_topic_replication: int = 1

    postgres_dsn: str = "postgresql://carebus@127.0.0.1:55432/carebus"
    # The database password, when it is not in the DSN (a file secret in production): put into
    # the DSN once, so every client (asyncpg, psycopg, alembic) uses it.
    postgres_password: SecretStr | None = None

    # HMAC key for subject keys. The local default is public on purpose; production must set it.
    subject_key_secret: SecretStr = SecretStr(LOCAL_SUBJECT_KEY_SECRET)

    http_host: str = "127.0.0.1"
    gateway_port: int = 18080
    registry_port: int = 18081
    audit_port: int = 18082
    inbox_port: int = 18083
    # /metrics and /healthz of the event-store sink, which has no other HTTP surface.
    # Workers without an HTTP API (sinks, stream processors) serve /metrics and /healthz here;
    # the local stack gives each worker its own port, containers all use one.
    metrics_port: int = 18090
    # `carebus up --with-prometheus`: Debian's Prometheus on the local stack.
    prometheus_port: int = 19090

    # How long the gateway waits for the broker's delivery report before answering 503.
    produce_timeout_s: float = 10.0
    log_level: str = "info"
    log_dir: Path | None = Field(default=None)

    # Routing: the reviewed policy file the router loads (and refuses to start on if invalid).
    routing_policy: Path = PROJECT_ROOT / "policy" / "routing.yaml"

    # The registry republishes outbox records a crash left behind this often.
    outbox_relay_interval_s: float = 1.0

    # Webhook delivery: 5xx and timeouts are retried with exponential backoff (capped) for at
    # least `webhook_retry_for_s` (DESIGN: at least 24 h) before the delivery is dead-lettered.
    webhook_timeout_s: float = 10.0
    webhook_backoff_initial_s: float = 1.0
    webhook_backoff_max_s: float = 600.0
    webhook_retry_for_s: float = 48 * 3600.0
    webhook_concurrency: int = 32

    # Deadline alerts: the reviewed SLA rule file, and a file of the same format whose rules
    # replace same-id rules for one run (`carebus up --sla-rules FILE`: tests use seconds).
    sla_rules: Path = PROJECT_ROOT / "policy" / "sla.yaml"
    sla_rules_override: Path | None = None
    # How often the SLA engine scans the deadline index for breached obligations. The scan reads
    # the index by deadline (under a millisecond with a million open obligations), so a short
    # interval costs little and bounds how late an alert can be.
    sla_scan_interval_s: float = 0.25
    # How often the inbox flags alerts left unacknowledged past their escalation time.
    inbox_escalation_interval_s: float = 1.0

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        if self.postgres_password is not None:
            self.postgres_dsn = with_password(
                self.postgres_dsn, self.postgres_password.get_secret_value()
            )
        if self.environment == "production" and (
            self.subject_key_secret.get_secret_value() == LOCAL_SUBJECT_KEY_SECRET
        ):
            raise ValueError(
                "subject_key_secret: the local development secret is public; production needs "
                "CAREBUS_SUBJECT_KEY_SECRET or the file carebus_subject_key_secret in "
                "CAREBUS_SECRETS_DIR"
            )
        return self

    def service_url(self, port: int) -> str:
        return f"http://{self.http_host}:{port}"


def with_password(dsn: str, password: str) -> str:
    """`dsn` with `password` for its user, unless it names a password already."""
    parts = urlsplit(dsn)
    if parts.password is not None or parts.username is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
