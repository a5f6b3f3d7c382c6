"""Typed settings for every carebus process, read once from `CAREBUS_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Everything a carebus process needs to know about its surroundings.

    Defaults run the local stack that `carebus up` starts; production sets every value
    through the environment (see docker-compose.yml).
    """

    model_config = SettingsConfigDict(env_prefix="CAREBUS_", extra="ignore")

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

    # HMAC key for subject keys. The local default is public on purpose; production must set it.
    subject_key_secret: SecretStr = SecretStr("carebus-local-development-secret")

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

    def service_url(self, port: int) -> str:
        return f"http://{self.http_host}:{port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
