"""What stops the local stack from running as production: every default it would run with.

`carebus up --production` refuses to start while any of these holds and lists them all. Some
cannot be fixed on the local stack yet (its PostgreSQL trusts local connections; its Kafka has
no authentication or TLS: docs/security.md, controls 1 and 2), so today it always refuses: a
production deployment is the compose stack, with file secrets.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from carebus.runtime.config import LOCAL_SUBJECT_KEY_SECRET, Settings
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
    if urlsplit(settings.postgres_dsn).password is None:
        problems.append(
            "PostgreSQL: no password; the local cluster trusts every local connection "
            "(per-service roles with SCRAM passwords are not yet supported by the local stack)"
        )
    problems.append(
        "Kafka: the local broker has no authentication, TLS or ACLs "
        "(SASL/SCRAM per service is not yet supported by the local stack)"
    )
    if dev_tokens_path(settings).exists():
        problems.append(
            f"development tokens exist ({dev_tokens_path(settings)}): production state must "
            "not carry the well-known local tokens"
        )
    return problems
