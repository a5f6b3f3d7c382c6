"""Webhook registrations: each organisation's delivery URL and signing secrets in PostgreSQL.

Shared by the registry's `/v1/webhooks` API, `carebus webhook set` and the webhook dispatcher,
so all check URLs the same way (carebus.domain.webhook_targets) and all read secrets the same way.

Secrets are stored sealed (AES-256-GCM, the organisation number as associated data, so a sealed
secret copied to another organisation's row does not open) under a key derived from the
`webhook_secret_key` setting, never in clear. Every registration issues a fresh secret; the one
it replaces keeps signing, beside it, for `webhook_secret_grace_s`, so a receiver that has not
yet switched to the new secret still verifies every delivery (docs/design.md, "Receiving
webhooks").
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carebus.domain.webhook_targets import TargetPolicy
from carebus.runtime.config import LOCAL_WEBHOOK_SECRET_KEY, Settings, get_settings
from carebus.wire.outbound import Format, format_problem

Connection = asyncpg.Connection | PoolConnectionProxy

# Sealed secret: this version byte, a 96-bit nonce, the ciphertext and its 128-bit tag.
_SEALED_V1: Final = b"\x01"
_NONCE_BYTES: Final = 12
_KEY_INFO: Final = b"carebus webhook secrets v1"
# What any deployment accepts as a URL's shape; the deployment's own rules (https only, no
# private targets) are applied by `set_webhook`.
_ANY_DEPLOYMENT: Final = TargetPolicy(allow_http=True, allow_private=True)

_SET: Final = """
    INSERT INTO webhooks (org_id, url, secret_sealed, format)
        VALUES ($1, $2, $3, coalesce($5, 'carebus'))
    ON CONFLICT (org_id) DO UPDATE
        SET url = EXCLUDED.url, secret_sealed = EXCLUDED.secret_sealed,
            format = coalesce($5, webhooks.format),
            previous_secret_sealed = webhooks.secret_sealed,
            previous_secret_until = now() + $4::interval,
            updated_at = now()
    RETURNING org_id, url, format, secret_sealed, created_at, updated_at,
        CASE WHEN previous_secret_until > now() THEN previous_secret_sealed END AS previous_sealed,
        CASE WHEN previous_secret_until > now() THEN previous_secret_until END AS previous_until
"""
# The previous secret only while its grace period lasts.
_GET: Final = """
    SELECT org_id, url, format, secret_sealed, created_at, updated_at,
        CASE WHEN previous_secret_until > now() THEN previous_secret_sealed END AS previous_sealed,
        CASE WHEN previous_secret_until > now() THEN previous_secret_until END AS previous_until
    FROM webhooks WHERE org_id = $1
"""


class UnknownOrganisationError(Exception):
    """The organisation has no row in `organisations` (it gets one with its first token)."""


class SecretUnreadableError(Exception):
    """A sealed secret does not open with the configured key (the key changed, or the row was
    tampered with); names the organisation, never a secret."""


class SecretBox:
    """Seals and opens signing secrets with AES-256-GCM under a key derived from a setting."""

    def __init__(self, key_secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(
            key_secret.encode("utf-8")
        )
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box under the configured key; production refuses the public local default."""
        key = settings.webhook_secret_key.get_secret_value()
        if not settings.development and key == LOCAL_WEBHOOK_SECRET_KEY:
            raise ValueError(
                "webhook_secret_key: the local development key is public; production needs "
                "CAREBUS_WEBHOOK_SECRET_KEY or the file carebus_webhook_secret_key in "
                "CAREBUS_SECRETS_DIR"
            )
        return cls(key)

    def seal(self, org_id: str, secret: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), org_id.encode("ascii"))
        return _SEALED_V1 + nonce + sealed

    def open(self, org_id: str, sealed: bytes) -> str:
        if sealed[:1] != _SEALED_V1:
            raise SecretUnreadableError(f"the webhook secret of {org_id} has an unknown format")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, ciphertext, org_id.encode("ascii"))
        except InvalidTag:
            raise SecretUnreadableError(
                f"the webhook secret of {org_id} does not open with CAREBUS_WEBHOOK_SECRET_KEY"
            ) from None
        return plain.decode("utf-8")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where an organisation receives its deliveries, and the secrets that sign them now."""

    org_id: str
    url: str
    secret: str = field(repr=False)
    created_at: datetime
    updated_at: datetime
    # The secret this one replaced, while its grace period lasts.
    previous_secret: str | None = field(default=None, repr=False)
    previous_until: datetime | None = None
    format: Format = Format.CAREBUS

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        """Every secret a delivery is signed with: the current one first."""
        if self.previous_secret is None:
            return (self.secret,)
        return (self.secret, self.previous_secret)


def url_problem(url: object) -> str | None:
    """None if `url` is an absolute http(s) URL with a host and no credentials, else the
    problem; what the deployment allows on top is `Settings.webhook_targets()`'s to say."""
    return _ANY_DEPLOYMENT.url_problem(url)


def new_secret() -> str:
    """A fresh signing secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


async def set_webhook(
    conn: Connection,
    org_id: str,
    url: str,
    settings: Settings | None = None,
    format: Format | None = None,
) -> Webhook:
    """Register `url` for `org_id` with a new secret, replacing any earlier registration; the
    secret it replaces keeps signing for `settings.webhook_secret_grace_s`. The deliveries go
    in `format` (carebus.wire.outbound), from the next one sent, queued ones included; None
    keeps the registration's format (carebus JSON for a new one), so renewing a secret never
    switches a PLO or FHIR receiver back to JSON.

    Raises ValueError for a URL the deployment refuses (`Settings.webhook_targets`), starting
    "url ", or a format the organisation's agency may not take, starting "format ";
    UnknownOrganisationError for an organisation that is not registered.
    """
    settings = settings or get_settings()
    problem = settings.webhook_targets().url_problem(url)
    if problem is not None:
        raise ValueError(f"url {problem}")
    box = SecretBox.from_settings(settings)
    grace = timedelta(seconds=settings.webhook_secret_grace_s)
    async with conn.transaction():
        agency = await conn.fetchval("SELECT agency FROM organisations WHERE org_id = $1", org_id)
        if agency is None:
            raise UnknownOrganisationError(f"organisation {org_id} is not registered")
        chosen = None if format is None else Format(format)
        refused = None if chosen is None else format_problem(chosen, agency)
        if refused is not None:
            raise ValueError(f"format {refused}")
        sealed = box.seal(org_id, new_secret())
        value = None if chosen is None else chosen.value
        row = await conn.fetchrow(_SET, org_id, url, sealed, grace, value)
    assert row is not None
    return _webhook(box, row)


async def get_webhook(
    conn: Connection | asyncpg.Pool, org_id: str, settings: Settings | None = None
) -> Webhook | None:
    """The registration of `org_id`, or None."""
    row = await conn.fetchrow(_GET, org_id)
    box = SecretBox.from_settings(settings or get_settings())
    return None if row is None else _webhook(box, row)


async def delete_webhook(conn: Connection | asyncpg.Pool, org_id: str) -> bool:
    """Remove the registration of `org_id`; False if there was none."""
    deleted = await conn.fetchval("DELETE FROM webhooks WHERE org_id = $1 RETURNING org_id", org_id)
    return deleted is not None


def _webhook(box: SecretBox, row: asyncpg.Record) -> Webhook:
    org_id = row["org_id"]
    previous = row["previous_sealed"]
    return Webhook(
        org_id=org_id,
        url=row["url"],
        secret=box.open(org_id, bytes(row["secret_sealed"])),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secret=None if previous is None else box.open(org_id, bytes(previous)),
        previous_until=row["previous_until"],
        format=Format(row["format"]),
    )
