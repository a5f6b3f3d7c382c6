"""PostgreSQL access for carebus processes: an asyncpg pool, and the alembic migration runner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from carebus.adapters.unavailable import DependencyUnavailableError
from carebus.runtime.config import PROJECT_ROOT, Settings

MIGRATIONS = PROJECT_ROOT / "infra" / "postgres" / "migrations"
ALEMBIC_INI = PROJECT_ROOT / "infra" / "postgres" / "alembic.ini"


class DatabaseUnavailableError(DependencyUnavailableError):
    """No connection could be had within the acquisition time-out, or PostgreSQL did not answer."""


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose every `acquire` (and so every `pool.fetch`, `pool.execute`) waits
    at most the settings' acquisition time-out: a saturated pool or a frozen server raises
    DatabaseUnavailableError instead of queueing callers without end."""

    __slots__ = ("_acquire_timeout_s",)

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        # The same time-out bounds the connection's release (reset) into the pool.
        return super().acquire(timeout=self._acquire_timeout_s if timeout is None else timeout)

    # asyncpg's one acquisition path (the context manager and `await pool.acquire()` both end
    # here; asyncpg is pinned by the lock files): its TimeoutError becomes the typed error.
    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 - asyncpg's signature
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        except TimeoutError as error:
            raise DatabaseUnavailableError(
                f"no database connection within {timeout} s (pool of {self.get_max_size()})"
            ) from error


def pool_limits(settings: Settings, *, max_size: int) -> dict[str, Any]:
    """The one resource-limit policy of every asyncpg pool (docs/operations.md, "Resource
    limits"): its size capped by the settings, connect/acquire/command time-outs, and a
    server-side statement time-out that ends a runaway query even if its client is gone."""
    statement_ms = int(settings.postgres_statement_timeout_s * 1000)
    return {
        "max_size": min(max_size, settings.postgres_pool_max_size),
        "timeout": settings.postgres_connect_timeout_s,
        "command_timeout": settings.postgres_command_timeout_s,
        "acquire_timeout_s": settings.postgres_acquire_timeout_s,
        "server_settings": {
            "statement_timeout": str(statement_ms),
            # A transaction left open by a client that stopped talking (a frozen process)
            # releases its row locks; no carebus transaction idles this long on purpose.
            "idle_in_transaction_session_timeout": str(2 * statement_ms),
        },
    }


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A bounded pool on `settings.postgres_dsn` (pool_limits); the caller closes it."""
    limits = pool_limits(settings, max_size=max_size)
    limits["server_settings"] = {**limits["server_settings"], **kwargs.pop("server_settings", {})}
    options = {**limits, **kwargs}
    pool = BoundedPool(
        settings.postgres_dsn,
        min_size=min(min_size, options["max_size"]),
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.connection.Connection,
        record_class=asyncpg.Record,
        **options,
    )
    try:
        await asyncio.wait_for(pool, timeout=settings.postgres_connect_timeout_s * 2)
    except TimeoutError as error:
        pool.terminate()
        raise DatabaseUnavailableError(
            "the database did not answer the pool's first connections"
        ) from error
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
