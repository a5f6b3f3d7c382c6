"""Typed settings for every carebus process, read once from `CAREBUS_*` environment variables."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal, Self
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from carebus.domain.webhook_targets import TargetPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Public on purpose (the local stack and tests); production refuses to start with it.
LOCAL_SUBJECT_KEY_SECRET: Final = "carebus-local-development-secret"  # noqa: S105
# The same for the key that encrypts webhook signing secrets at rest.
LOCAL_WEBHOOK_SECRET_KEY: Final = "carebus-local-webhook-secret-key"  # noqa: S105
# The same for the key that wraps each person's data key (erasure by crypto-shredding).
LOCAL_PERSON_KEY_SECRET: Final = "carebus-local-person-key-secret"  # noqa: S105
LOCAL_ADAPTER_ID_SECRET: Final = "carebus-local-adapter-id-secret"  # noqa: S105
# Where http webhooks and, by default, webhook targets on private addresses are allowed.
DEVELOPMENT_ENVIRONMENTS: Final = frozenset({"local", "test"})
# HelseID's claim naming the legal entity (organisation number) a client belongs to.
HELSEID_ORG_CLAIM: Final = "helseid://claims/client/claims/orgnr_parent"
# Signing algorithms an issuer may be trusted with: public-key ones only, never `none` or HS*.
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)


class OAuthIssuer(BaseModel):
    """An issuer of OAuth2 client-credentials access tokens (JWTs) that systems may use instead
    of an API token (docs/security.md, 3c; carebus.adapters.access_tokens)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str  # exactly the tokens' `iss` (HelseID's metadata `issuer`)
    jwks_url: str  # the issuer's published signing keys
    audience: str  # must be in the tokens' `aud` (HelseID: the API's "kortnavn")
    scope: str | None = None  # if set, must be among the tokens' scopes
    algorithms: tuple[str, ...] = ("RS256", "PS256")
    org_claim: str = HELSEID_ORG_CLAIM

    @field_validator("algorithms")
    @classmethod
    def _public_key_only(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        refused = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if refused or not algorithms:
            raise ValueError(f"only public-key algorithms may be trusted, not {refused}")
        return algorithms


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
    # How this process authenticates to Kafka: PLAINTEXT (no authentication; refused in
    # production), or SASL_SSL with SCRAM-SHA-512 as `kafka_username`, the broker's certificate
    # checked against `kafka_ca_file` (docs/security.md, control 1; ACLs: infra/kafka/acls.yaml).
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_ca_file: Path | None = None
    # Every person-scoped topic has this many partitions, so one subject key lands on the same
    # partition number in each of them.
    person_partitions: int = 4
    # The cluster's replication: every catalogued topic and every topic faust creates for itself
    # (table changelogs) has this many replicas, min.insync.replicas following it (2 at 3, 1 at
    # 1: carebus.adapters.topic_admin.min_insync_replicas). The topic applier refuses a cluster
    # with fewer brokers instead of lowering it; the local single-broker stack sets 1.
    kafka_replication: int = Field(default=3, ge=1)

    # Locally `carebus` is the database owner (migrations, the operator's commands, tests); each
    # service of the local stack logs in as its own role, carebus_<service> (docs/security.md 2b).
    postgres_dsn: str = "postgresql://carebus@127.0.0.1:55432/carebus"
    # The database password, when it is not in the DSN (a file secret in production): put into
    # the DSN once, so every client (asyncpg, psycopg, alembic) uses it. Outside production, a
    # DSN without one gets the local stack's generated password for its role, if there is one.
    postgres_password: SecretStr | None = None

    # HMAC key for subject keys. The local default is public on purpose; production must set it.
    subject_key_secret: SecretStr = SecretStr(LOCAL_SUBJECT_KEY_SECRET)

    # Systems may also authenticate with OAuth2 client-credentials access tokens (JWTs) from
    # these issuers (docs/security.md, 3c), JSON: `[{"issuer": "https://helseid-sts.nhn.no",
    # "jwks_url": "https://helseid-sts.nhn.no/.well-known/openid-configuration/jwks",
    # "audience": "nhn:carebus"}]`. Empty: carebus's own API tokens only. Which client of an
    # issuer acts as which organisation is the reviewed file `oauth_clients`.
    oauth_issuers: tuple[OAuthIssuer, ...] = ()
    oauth_clients: Path = PROJECT_ROOT / "policy" / "oauth_clients.yaml"

    http_host: str = "127.0.0.1"
    gateway_port: int = 18080
    registry_port: int = 18081
    audit_port: int = 18082
    inbox_port: int = 18083
    # The local development OpenID Connect issuer (carebus_dev.oidc_issuer; never in production).
    oidc_issuer_port: int = 18084
    # The adapters (services/adapters): PLO, HL7 v2 and FHIR over HTTP on `adapters_port`, HL7 v2
    # over MLLP on `mllp_port`. They hand what they map to the gateway at `gateway_url` (unset:
    # this host's `gateway_port`) with the caller's own token.
    adapters_port: int = 18085
    mllp_port: int = 18086
    gateway_url: str | None = None
    # A FHIR Subscription (`POST /fhir/Subscription`) is the organisation's webhook: the adapters
    # hand it to the registry's `PUT /v1/webhooks` at `registry_url` (unset: this host's
    # `registry_port`) with the caller's own token.
    registry_url: str | None = None
    # The key of the adapters' event ids (`carebus.wire.translation.derived_event_id`: the same
    # message, or a later one about the same stay, maps to the same id without stored state). A
    # file secret in production (the local default is public and refused there); changing it
    # makes later messages' ids differ from earlier ones' (a cancellation finds nothing).
    adapter_id_secret: SecretStr = SecretStr(LOCAL_ADAPTER_ID_SECRET)
    # The MLLP listener's read limit per message, and how long a connection may stay silent.
    mllp_max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    # Open MLLP connections at once (more are closed at once: senders keep one or a few).
    mllp_max_connections: int = Field(default=64, ge=1)
    mllp_idle_timeout_s: float = Field(default=300.0, gt=0)
    # Request bodies over these sizes are refused (413) before they are read: every route but
    # `POST /v1/events:batch` (up to 1000 events) takes the first (carebus.adapters.http).
    http_max_body_bytes: int = Field(default=64 * 1024, ge=1)
    http_max_batch_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    # The adapters' message routes (PLO, HL7 v2, FHIR).
    http_max_message_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    # Each organisation's requests per second of one service process, after authentication,
    # and how many it may make at once beyond that (429 with Retry-After past them). Generous:
    # one process answers ~700 single events per second, so only a runaway client is held back.
    rate_limit_per_s: float = Field(default=1000.0, gt=0)
    rate_limit_burst: int = Field(default=2000, ge=1)
    # Every process serves /metrics and /healthz on this internal port, never published: the
    # workers (sinks, stream processors) only here, the HTTP services besides their API port.
    # The local stack gives each process its own port, containers all use one.
    metrics_port: int = 18090
    # Whether an HTTP service also serves /metrics on its API port. Unset: yes in local
    # development and tests (the HTTP contract's tests read it there), never in production.
    metrics_on_public_port: bool | None = None
    # `carebus up --with-prometheus`: Debian's Prometheus on the local stack.
    prometheus_port: int = 19090

    # How long the gateway waits for the broker's delivery report before answering 503.
    produce_timeout_s: float = 10.0
    # Resource limits (docs/operations.md, "Resource limits"; docs/reliability.md, "Load
    # shedding"). Every asyncpg pool (carebus.adapters.db): at most this many connections per
    # pool, a connection waited for at most `postgres_acquire_timeout_s`, a statement answered
    # within `postgres_command_timeout_s` (client side, so a frozen server cannot hang a caller)
    # and cut by the server after `postgres_statement_timeout_s`; past any of them the caller
    # gets DependencyUnavailableError, which the HTTP services answer with 503 + Retry-After.
    postgres_pool_max_size: int = Field(default=20, ge=1)
    postgres_connect_timeout_s: float = Field(default=3.0, gt=0)
    postgres_acquire_timeout_s: float = Field(default=3.0, gt=0)
    postgres_command_timeout_s: float = Field(default=5.0, gt=0)
    postgres_statement_timeout_s: float = Field(default=30.0, gt=0)
    # The producer's local queue (librdkafka queue.buffering.max.*): a full queue is refused at
    # once (503 at the gateway) instead of growing while the broker is away.
    producer_queue_max_messages: int = Field(default=100_000, ge=1)
    producer_queue_max_kbytes: int = Field(default=64 * 1024, ge=1)
    # The gateway sheds ingest requests with 503 + Retry-After, before reading their bodies,
    # beyond this many at once or this many declared body bytes at once.
    gateway_max_in_flight: int = Field(default=128, ge=1)
    gateway_max_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=1)
    # One credential's share of those requests (services/gateway/shedding.py).
    gateway_max_in_flight_per_caller: int = Field(default=32, ge=1)
    # An ingest request still unanswered after this long is answered 503 (a frozen dependency
    # that no other time-out caught); above produce_timeout_s so a slow acknowledgement is waited.
    gateway_request_timeout_s: float = Field(default=15.0, gt=0)
    # What a 503 for an unavailable dependency tells the client to wait, in seconds.
    unavailable_retry_after_s: int = Field(default=5, ge=1)
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
    # Webhook signing secrets are stored encrypted (AES-256-GCM) under a key derived from this
    # secret (a file secret in production; the local default is public and refused there by the
    # only processes that hold the key: the registry, webhook delivery and the migrations,
    # `carebus.adapters.webhook_registrations.SecretBox.from_settings`).
    webhook_secret_key: SecretStr = SecretStr(LOCAL_WEBHOOK_SECRET_KEY)
    # Each person's data key (which seals their nin and free text in every store and topic) is
    # stored wrapped (AES-256-GCM) under a key derived from this secret (a file secret in
    # production; the local default is public and refused there by the processes that hold it:
    # the gateway, audit, inbox and webhook delivery,
    # `carebus.wire.sealing.KeyWrap.from_settings`). docs/retention.md, "Erasure".
    person_key_secret: SecretStr = SecretStr(LOCAL_PERSON_KEY_SECRET)
    # After a new signing secret is issued, the previous one still signs (beside it) this long.
    webhook_secret_grace_s: float = 24 * 3600.0
    # Webhook targets on loopback and private addresses (docs/security.md, 4b); unset: allowed
    # in DEVELOPMENT_ENVIRONMENTS only (receivers of the local stack and tests on 127.0.0.1).
    webhook_allow_private_targets: bool | None = None

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
    # Open live streams (/v1/alerts/stream) one inbox process holds: each keeps a connection
    # and a queue of up to 1,000 frames. Past the total a new stream is 503 (another process may
    # have room), past one organisation's share 429: one office cannot take every stream.
    inbox_max_streams: int = Field(default=500, ge=1)
    inbox_max_streams_per_org: int = Field(default=100, ge=1)

    # Retention (docs/retention.md): the inventory of stores of personal data and their periods,
    # per-table overrides as JSON (`{"events": "P400D"}`; never below a table's minimum), rows
    # removed per statement (short locks), and how often `carebus retention serve` runs.
    retention_inventory: Path = PROJECT_ROOT / "infra" / "retention.yaml"
    retention_overrides: dict[str, timedelta] = Field(default_factory=dict)
    retention_batch_size: int = Field(default=1000, ge=1, le=10_000)
    retention_interval_s: float = Field(default=3600.0, gt=0)

    # People sign in to the inbox with OpenID Connect (authorization code + PKCE; docs/security.md
    # 3b). The issuer: HelseID in production; unset, the bundled development issuer on
    # `oidc_issuer_port` in DEVELOPMENT_ENVIRONMENTS, and no sign-in elsewhere.
    oidc_issuer_url: str | None = None
    oidc_client_id: str = "carebus-inbox"
    # The inbox's private key (PEM) for authenticating to the issuer's token endpoint with a
    # signed JWT (`private_key_jwt`, which HelseID requires): the file secret
    # carebus_oidc_client_key in production. Unset: a public client (PKCE only), as locally.
    oidc_client_key: SecretStr | None = None
    # Where the issuer sends people back (registered with it); unset: the inbox's /callback.
    oidc_redirect_url: str | None = None
    # The ID token claims naming the person's organisation (the first present wins) and carebus
    # role: HelseID's are in docs/operations.md.
    oidc_org_claims: str = "carebus_org"
    oidc_role_claim: str = "carebus_role"
    # A person's inbox session ends this long after sign-in, or after this long unused.
    inbox_session_max_s: float = Field(default=8 * 3600.0, gt=0)
    inbox_session_idle_s: float = Field(default=30 * 60.0, gt=0)
    # The privacy officer signs in to the audit service at the same issuer as the inbox (HelseID),
    # as its own client, with its own key and redirect URL (unset: the audit service's /callback).
    audit_oidc_client_id: str = "carebus-audit"
    audit_oidc_client_key: SecretStr | None = None
    audit_oidc_redirect_url: str | None = None
    # The patient signs in to the audit service with ID-porten: another issuer (unset: the bundled
    # development issuer in DEVELOPMENT_ENVIRONMENTS, and no patient sign-in elsewhere), its own
    # client, key and redirect URL (unset: the audit service's /patient/callback). The claim with
    # the national identity number is read once, into the subject key, and never kept; the level
    # of assurance (`acr`) must be `patient_oidc_acr`.
    patient_oidc_issuer_url: str | None = None
    patient_oidc_client_id: str = "carebus-audit-patient"
    patient_oidc_client_key: SecretStr | None = None
    patient_oidc_redirect_url: str | None = None
    patient_oidc_pid_claim: str = "pid"
    patient_oidc_acr: str = "idporten-loa-high"
    # A person's session at the audit service ends this long after sign-in, or this long unused.
    audit_session_max_s: float = Field(default=8 * 3600.0, gt=0)
    audit_session_idle_s: float = Field(default=30 * 60.0, gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        if self.postgres_password is not None:
            self.postgres_dsn = with_password(
                self.postgres_dsn, self.postgres_password.get_secret_value()
            )
        elif self.development:
            self.postgres_dsn = with_local_password(self.postgres_dsn, self.state_dir)
        if not self.development and (
            self.subject_key_secret.get_secret_value() == LOCAL_SUBJECT_KEY_SECRET
        ):
            raise ValueError(
                "subject_key_secret: the local development secret is public; production needs "
                "CAREBUS_SUBJECT_KEY_SECRET or the file carebus_subject_key_secret in "
                "CAREBUS_SECRETS_DIR"
            )
        return self

    @property
    def development(self) -> bool:
        """Local development or the test stack. Every other environment name ("production",
        "staging", "prod", a typo) gets production's checks: they fail closed."""
        return self.environment in DEVELOPMENT_ENVIRONMENTS

    def webhook_targets(self) -> TargetPolicy:
        """Which webhook URLs may be registered and connected to (docs/security.md, 4a-4b)."""
        development = self.development
        private = self.webhook_allow_private_targets
        return TargetPolicy(
            allow_http=development, allow_private=development if private is None else private
        )

    @property
    def public_metrics(self) -> bool:
        """Whether /metrics is served on the API ports too (`metrics_on_public_port`)."""
        if self.metrics_on_public_port is None:
            return self.development
        return self.metrics_on_public_port

    def service_url(self, port: int) -> str:
        return f"http://{self.http_host}:{port}"

    @property
    def gateway_base_url(self) -> str:
        """Where the adapters post events: `gateway_url`, or this host's gateway."""
        return (self.gateway_url or self.service_url(self.gateway_port)).rstrip("/")

    @property
    def registry_base_url(self) -> str:
        """Where the adapters register FHIR Subscriptions: `registry_url`, or this host's
        registry."""
        return (self.registry_url or self.service_url(self.registry_port)).rstrip("/")

    @property
    def oidc_issuer(self) -> str | None:
        """The issuer people sign in with (`oidc_issuer_url`, or locally the bundled one)."""
        if self.oidc_issuer_url is not None:
            return self.oidc_issuer_url.rstrip("/")
        if self.environment in DEVELOPMENT_ENVIRONMENTS:
            return self.service_url(self.oidc_issuer_port)
        return None

    @property
    def oidc_redirect(self) -> str:
        """The inbox's redirect URL (`oidc_redirect_url`, or its /callback on this host)."""
        return self.oidc_redirect_url or f"{self.service_url(self.inbox_port)}/callback"

    @property
    def audit_oidc_redirect(self) -> str:
        """The privacy officer's redirect URL at the audit service."""
        return self.audit_oidc_redirect_url or f"{self.service_url(self.audit_port)}/callback"

    @property
    def patient_oidc_issuer(self) -> str | None:
        """The issuer patients sign in with (ID-porten; locally the bundled one)."""
        if self.patient_oidc_issuer_url is not None:
            return self.patient_oidc_issuer_url.rstrip("/")
        if self.environment in DEVELOPMENT_ENVIRONMENTS:
            return self.service_url(self.oidc_issuer_port)
        return None

    @property
    def patient_oidc_redirect(self) -> str:
        """The patient's redirect URL at the audit service."""
        return (
            self.patient_oidc_redirect_url
            or f"{self.service_url(self.audit_port)}/patient/callback"
        )


def with_password(dsn: str, password: str) -> str:
    """`dsn` with `password` for its user, unless it names a password already."""
    parts = urlsplit(dsn)
    if parts.password is not None or parts.username is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def local_password_file(state_dir: Path, role: str) -> Path:
    """Where the local stack keeps the password it generated for database role `role` (0600)."""
    return state_dir / "secrets" / "postgres" / role


def with_local_password(dsn: str, state_dir: Path) -> str:
    """`dsn` with the local stack's password for its user, if it has none and the stack made one:
    a `carebus` command or a service of the local stack then needs no password setting."""
    user = urlsplit(dsn).username
    if user is None:
        return dsn
    try:
        password = local_password_file(state_dir, unquote(user)).read_text().strip()
    except OSError:
        return dsn
    return with_password(dsn, password) if password else dsn


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


# A secret a key is derived from needs this many characters of randomness outside development
# (`openssl rand -base64 48` gives 64): HKDF and HMAC do not stretch a weak one.
MIN_SECRET_CHARS: Final = 43


def production_secret(settings: Settings, name: str, local_default: str) -> str:
    """The secret setting `name`, refused (ValueError naming it) outside development when it is
    the public local default or shorter than MIN_SECRET_CHARS."""
    value = getattr(settings, name)
    secret = str(value.get_secret_value() if isinstance(value, SecretStr) else value)
    if settings.development:
        return secret
    if secret == local_default:
        raise ValueError(
            f"{name}: the local development key is public; production needs "
            f"CAREBUS_{name.upper()} or the file carebus_{name} in CAREBUS_SECRETS_DIR"
        )
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{name}: at least {MIN_SECRET_CHARS} characters of random secret are needed "
            "outside development (e.g. `openssl rand -base64 48`)"
        )
    return secret
