"""`carebus up --production` refuses every default a production deployment must not run with
(issue 14, item 7), and starts nothing while any holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from carebus.runtime.config import Settings
from carebus_dev.production import production_problems


def test_every_local_default_is_named(tmp_path: Path) -> None:
    (tmp_path / "dev_tokens.json").write_text("{}")
    problems = production_problems(Settings(state_dir=tmp_path))
    assert any("subject-key secret" in p for p in problems)
    assert any("webhook secret key is the public development one" in p for p in problems)
    assert any("person-key secret is the public development one" in p for p in problems)
    assert any(p.startswith("webhooks may be sent to http URLs") for p in problems)
    assert any(p.startswith("PostgreSQL: no password") for p in problems)
    assert any(p.startswith("Kafka:") for p in problems)
    assert any("development tokens exist" in p for p in problems)


def test_a_set_secret_and_database_password_are_not_problems(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr("another-long-random-secret-from-a-file"),
        person_key_secret=SecretStr("a-third-long-random-secret-from-a-file"),
        postgres_dsn="postgresql://carebus@db:5432/carebus",
        postgres_password=SecretStr("from-a-file"),
    )
    problems = production_problems(settings)
    assert not any("subject-key" in p or p.startswith("PostgreSQL") for p in problems)
    assert not any("webhook secret key" in p for p in problems)
    assert not any("person-key secret" in p for p in problems)
    assert not any("development tokens" in p for p in problems)
    # The local broker is secured, but one node is not production; three are.
    assert [p for p in problems if p.startswith("Kafka: 1 broker(s)")]
    assert not [p for p in production_problems(settings, brokers=3) if p.startswith("Kafka:")]


def test_up_production_refuses_before_starting_anything(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CAREBUS_STATE_DIR": str(tmp_path / ".carebus")}
    result = subprocess.run(
        [sys.executable, "-m", "carebus.ops.cli", "up", "--production"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "refuses to start" in result.stderr
    assert "subject-key secret is the public development one" in result.stderr
    assert not (tmp_path / ".carebus").exists()  # nothing was started or created


def test_webhooks_to_private_targets_are_a_problem_wherever_they_are_allowed(
    tmp_path: Path,
) -> None:
    """Outside local development http and private targets are refused by default; allowing
    private targets explicitly is named as a problem all the same."""
    production = Settings(
        state_dir=tmp_path,
        environment="production",
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr("another-long-random-secret-from-a-file"),
    )
    assert not any(p.startswith("webhooks may be sent") for p in production_problems(production))
    allowed = production.model_copy(update={"webhook_allow_private_targets": True})
    assert any(p.startswith("webhooks may be sent") for p in production_problems(allowed))
