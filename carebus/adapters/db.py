"""PostgreSQL access for carebus processes: an asyncpg pool, and the alembic migration runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from carebus.runtime.config import PROJECT_ROOT, Settings

MIGRATIONS = PROJECT_ROOT / "infra" / "postgres" / "migrations"
ALEMBIC_INI = PROJECT_ROOT / "infra" / "postgres" / "alembic.ini"


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A connection pool on `settings.postgres_dsn`; the caller closes it."""
    pool = await asyncpg.create_pool(
        settings.postgres_dsn, min_size=min_size, max_size=max_size, **kwargs
    )
    if pool is None:  # only when the pool is created with `init` returning early; never here
        raise RuntimeError("asyncpg.create_pool returned no pool")
    return pool


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL for a postgresql:// DSN (alembic runs on psycopg 3)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    raise ValueError("the PostgreSQL DSN must start with postgresql://")


def alembic_config(dsn: str) -> Config:
    """An alembic configuration for the migrations in infra/postgres/migrations against `dsn`."""
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%', which percent-encoded DSNs contain.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    # env.py must not reconfigure logging of the calling process (the CLI, a test session).
    config.attributes["configure_logger"] = False
    return config


def migrate(dsn: str, revision: str = "head") -> None:
    """Bring the database at `dsn` up to `revision` (idempotent)."""
    command.upgrade(alembic_config(dsn), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused/x")).get_current_head()


def current_revision(dsn: str) -> str | None:
    """The revision the database at `dsn` is at (None before the first migration)."""
    engine = create_engine(sqlalchemy_url(dsn), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def migrations_path() -> Path:
    return MIGRATIONS
