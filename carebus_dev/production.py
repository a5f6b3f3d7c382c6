"""What stops the local stack from running as production: every default it would run with.

`carebus up --production` refuses to start while any of these holds and lists them all. One
cannot be fixed on the local stack yet (its single Kafka broker), so today it always refuses: a
production deployment is the compose stack, with file secrets.
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


def production_problems(settings: Settings) -> list[str]:
    """Each default `settings` would run production with, as a sentence naming the fix."""
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
    # control 1), but it is one node: a lost disk loses every accepted event.
    problems.append(
        "Kafka: the local stack runs one broker with replication factor 1; production runs "
        "three (docker-compose.yml describes the production stack)"
    )
    if dev_tokens_path(settings).exists():
        problems.append(
            f"development tokens exist ({dev_tokens_path(settings)}): production state must "
            "not carry the well-known local tokens"
        )
    return problems
