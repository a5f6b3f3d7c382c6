"""Alembic environment: runs the carebus migrations online against one PostgreSQL database."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from carebus.adapters.db import sqlalchemy_url
from carebus.runtime.config import Settings

config = context.config

# carebus.adapters.db.migrate() passes configure_logger=False so a CLI or test run keeps its
# logging.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or sqlalchemy_url(Settings().postgres_dsn)


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # The migrations are raw SQL (op.execute); there is no SQLAlchemy model to compare.
        context.configure(
            connection=connection, target_metadata=None, transaction_per_migration=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("carebus migrations run online only: they need the database")
run_migrations_online()
