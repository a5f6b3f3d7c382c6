"""The local stack's generated database passwords reach its processes, and never production's."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from carebus.runtime.config import Settings, local_password_file
from carebus_dev.stack.postgres import ensure_password, with_user

DSN = "postgresql://carebus_gateway@127.0.0.1:55432/carebus"


def test_a_local_process_finds_its_roles_password_in_the_state_dir(tmp_path: Path) -> None:
    """A DSN without a password gets the one the stack generated for its role (0600)."""
    password = ensure_password(tmp_path, "carebus_gateway")
    assert ensure_password(tmp_path, "carebus_gateway") == password  # generated once
    assert local_password_file(tmp_path, "carebus_gateway").stat().st_mode & 0o777 == 0o600
    settings = Settings(state_dir=tmp_path, postgres_dsn=DSN)
    assert settings.postgres_dsn == DSN.replace("_gateway@", f"_gateway:{password}@")
    assert Settings(
        state_dir=tmp_path, postgres_dsn=with_user(DSN, "carebus_sla")
    ).postgres_dsn == (
        "postgresql://carebus_sla@127.0.0.1:55432/carebus"  # no file for that role: unchanged
    )


def test_production_never_reads_the_local_stacks_passwords(tmp_path: Path) -> None:
    """In production the password comes from its setting (a file secret) or nowhere."""
    ensure_password(tmp_path, "carebus_gateway")
    settings = Settings(
        environment="production",
        state_dir=tmp_path,
        postgres_dsn=DSN,
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
        webhook_secret_key=SecretStr("another-long-random-secret-from-a-file"),
    )
    assert settings.postgres_dsn == DSN
