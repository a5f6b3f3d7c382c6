"""Migration 0010 seals the clear-text webhook secrets already stored, and undoes it on the way
down, in a database of its own next to the test stack's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from alembic import command
from psycopg import sql

from carebus.adapters.db import alembic_config, migrate
from carebus.adapters.webhook_registrations import SecretBox
from carebus.runtime.config import Settings
from carebus_dev.testing import TestStack

pytestmark = pytest.mark.integration

ORG = "940493021"


@pytest.fixture
def scratch_dsn(stack: TestStack) -> Iterator[str]:
    """A fresh database in the stack's cluster, owned by the stack's migration role (which may
    not create databases itself: the cluster's superuser does), dropped afterwards."""
    database = f"migration_{uuid.uuid4().hex[:12]}"
    name = sql.Identifier(database)
    dsn = stack.settings.postgres_dsn
    owner = sql.Identifier(urlsplit(dsn).username or "")
    with stack.local.postgres.superuser("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, owner))
    try:
        yield dsn.rsplit("/", 1)[0] + f"/{database}"
    finally:
        with stack.local.postgres.superuser("postgres") as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


async def test_existing_secrets_are_sealed_and_unsealed_on_the_way_down(scratch_dsn: str) -> None:
    """A secret stored in clear before 0010 is sealed by it, opens to the same secret under the
    settings' key, and is in clear again after a downgrade to 0009."""
    migrate(scratch_dsn, "0009")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute(
            "INSERT INTO organisations (org_id, agency) VALUES ($1, 'municipality')", ORG
        )
        await conn.execute(
            "INSERT INTO webhooks (org_id, url, secret) VALUES ($1, 'https://k.example/h', 'old')",
            ORG,
        )
        migrate(scratch_dsn, "0010")
        columns = {
            row["column_name"]
            for row in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'webhooks'"
            )
        }
        assert "secret" not in columns
        sealed = bytes(await conn.fetchval("SELECT secret_sealed FROM webhooks"))
        assert b"old" not in sealed
        assert SecretBox.from_settings(Settings()).open(ORG, sealed) == "old"
        # Only the one secret signs (the registration code of today reads later columns too).
        assert await conn.fetchval("SELECT previous_secret_sealed FROM webhooks") is None

        command.downgrade(alembic_config(scratch_dsn), "0009")
        assert await conn.fetchval("SELECT secret FROM webhooks WHERE org_id = $1", ORG) == "old"
    finally:
        await conn.close()
