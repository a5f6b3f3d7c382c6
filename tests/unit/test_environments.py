"""Every environment but local development and the test stack gets production's checks: a
misspelt or unexpected CAREBUS_ENVIRONMENT fails closed (review of issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from carebus.adapters.webhook_registrations import SecretBox
from carebus.runtime.config import LOCAL_WEBHOOK_SECRET_KEY, Settings

OTHER_NAMES = ["production", "Production", "prod", "staging", "ci", ""]


@pytest.mark.parametrize("environment", OTHER_NAMES)
def test_the_public_subject_key_secret_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="subject_key_secret"):
        Settings(environment=environment)


@pytest.mark.parametrize("environment", OTHER_NAMES)
def test_other_environments_get_production_defaults(environment: str, tmp_path: Path) -> None:
    settings = Settings(
        environment=environment,
        state_dir=tmp_path,
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr(LOCAL_WEBHOOK_SECRET_KEY),
    )
    assert not settings.development
    assert not settings.public_metrics
    targets = settings.webhook_targets()
    assert not targets.allow_http
    assert not targets.allow_private
    with pytest.raises(ValueError, match="webhook_secret_key"):
        SecretBox.from_settings(settings)


@pytest.mark.parametrize("environment", ["local", "test"])
def test_development_keeps_its_conveniences(environment: str) -> None:
    settings = Settings(environment=environment)
    assert settings.development
    assert settings.public_metrics
    assert settings.webhook_targets().allow_http
