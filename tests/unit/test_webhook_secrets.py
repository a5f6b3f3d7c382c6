"""Webhook signing secrets at rest (carebus.adapters.webhook_registrations.SecretBox), and the
settings that refuse the public development key in production."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from carebus.adapters.webhook_registrations import SecretBox, SecretUnreadableError, new_secret
from carebus.runtime.config import LOCAL_WEBHOOK_SECRET_KEY, Settings
from services.registry.app import build_app as registry_app

ORG = "940493021"


def test_a_sealed_secret_opens_to_itself_and_is_not_clear_text() -> None:
    """What is stored holds neither the secret nor any fixed encoding of it."""
    box = SecretBox("a-long-random-key")
    secret = new_secret()
    sealed = box.seal(ORG, secret)
    assert box.open(ORG, sealed) == secret
    assert secret.encode() not in sealed
    assert box.seal(ORG, secret) != sealed  # a fresh nonce each time


def test_a_sealed_secret_opens_only_for_its_organisation_and_key() -> None:
    """A sealed secret copied to another organisation's row, or read with another key, or
    altered, does not open; the error names the organisation, never a secret."""
    box = SecretBox("a-long-random-key")
    secret = new_secret()
    sealed = box.seal(ORG, secret)
    with pytest.raises(SecretUnreadableError, match="974705788") as other_org:
        box.open("974705788", sealed)
    with pytest.raises(SecretUnreadableError):
        SecretBox("another-key").open(ORG, sealed)
    with pytest.raises(SecretUnreadableError):
        box.open(ORG, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(SecretUnreadableError, match="format"):
        box.open(ORG, b"\x02" + sealed[1:])
    assert secret not in str(other_org.value)


def test_production_refuses_the_public_webhook_secret_key() -> None:
    """The local key is public: the processes that hold the key (the registry, webhook delivery,
    the migration) refuse it in production; the others never need one."""
    public = Settings(
        environment="production",
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr(LOCAL_WEBHOOK_SECRET_KEY),
    )
    with pytest.raises(ValueError, match="webhook_secret_key"):
        SecretBox.from_settings(public)
    with pytest.raises(ValueError, match="webhook_secret_key"):
        registry_app(public)
    assert SecretBox.from_settings(public.model_copy(update={"environment": "local"}))
    settings = Settings(
        environment="production",
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr("another-long-random-secret-from-a-file"),
    )
    assert (
        SecretBox.from_settings(settings).open(
            ORG, SecretBox("another-long-random-secret-from-a-file").seal(ORG, "s")
        )
        == "s"
    )
