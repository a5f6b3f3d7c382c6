"""What stops the local stack from running as production: every default it would run with.

`carebus up --production` refuses to start while any of these holds and lists them all. The
local stack can meet them all only with three Kafka brokers (`--brokers 3`), file secrets and
no development tokens; the production deployment is the compose stack.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from carebus.runtime.config import (
    LOCAL_PERSON_KEY_SECRET,
    LOCAL_SUBJECT_KEY_SECRET,
    LOCAL_WEBHOOK_SECRET_KEY,
    Settings,
)
from carebus_dev.stack.devdata import dev_tokens_path

# What production runs: a broker may be lost without losing an acknowledged event.
PRODUCTION_BROKERS = 3


def production_problems(settings: Settings, brokers: int = 1) -> list[str]:
    """Each default `settings` (on a cluster of `brokers` Kafka nodes) would run production
    with, as a sentence naming the fix."""
    problems = []
    if settings.subject_key_secret.get_secret_value() == LOCAL_SUBJECT_KEY_SECRET:
        problems.append(
            "the subject-key secret is the public development one: set "
            "CAREBUS_SUBJECT_KEY_SECRET (or the file carebus_subject_key_secret in "
            "CAREBUS_SECRETS_DIR) to a long random secret"
        )
    if settings.webhook_secret_key.get_secret_value() == LOCAL_WEBHOOK_SECRET_KEY:
        problems.append(
            "the webhook secret key is the public development one: set "
            "CAREBUS_WEBHOOK_SECRET_KEY (or the file carebus_webhook_secret_key in "
            "CAREBUS_SECRETS_DIR) to a long random secret"
        )
    if settings.person_key_secret.get_secret_value() == LOCAL_PERSON_KEY_SECRET:
        problems.append(
            "the person-key secret is the public development one: set "
            "CAREBUS_PERSON_KEY_SECRET (or the file carebus_person_key_secret in "
            "CAREBUS_SECRETS_DIR) to a long random secret"
        )
    targets = settings.webhook_targets()
    if targets.allow_http or targets.allow_private:
        problems.append(
            "webhooks may be sent to http URLs or private addresses: set CAREBUS_ENVIRONMENT to "
            "production (and leave CAREBUS_WEBHOOK_ALLOW_PRIVATE_TARGETS unset)"
        )
    if urlsplit(settings.postgres_dsn).password is None:
        problems.append(
            "PostgreSQL: no password for the database role: set CAREBUS_POSTGRES_PASSWORD (or "
            "the file carebus_postgres_password in CAREBUS_SECRETS_DIR); every service logs in "
            'as its own role with SCRAM (docs/operations.md, "Database roles")'
        )
    # The local broker authenticates every client (SASL/SCRAM over TLS, ACLs: docs/security.md,
    # control 1), but one node's lost disk loses every accepted event.
    if brokers < PRODUCTION_BROKERS:
        problems.append(
            f"Kafka: {brokers} broker(s) with replication factor {brokers}; production runs "
            f"{PRODUCTION_BROKERS} (replication 3, min.insync.replicas 2): `carebus down`, then "
            "`carebus up --brokers 3` (docker-compose.yml describes the production stack)"
        )
    if dev_tokens_path(settings).exists():
        problems.append(
            f"development tokens exist ({dev_tokens_path(settings)}): production state must "
            "not carry the well-known local tokens"
        )
    return problems
