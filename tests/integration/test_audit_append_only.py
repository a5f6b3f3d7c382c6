"""The audit trail is append-only in the database itself (issue 14, item 2): no role, not even
the one every carebus service connects as today, can change or remove an audit record."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from carebus_dev.testing import TestStack

pytestmark = pytest.mark.integration

AUDIT_TABLES = (
    "disclosures",
    "deliveries",
    "authority_refusals",
    "operator_actions",
    "register_changes",
    "disclosure_lookups",
)


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.mark.parametrize("table", AUDIT_TABLES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET {column} = {column}",
        "DELETE FROM {table}",
        "TRUNCATE {table}",
    ],
)
async def test_no_audit_record_can_be_changed_or_removed(
    db: asyncpg.Connection, table: str, statement: str
) -> None:
    column = await db.fetchval(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "ORDER BY ordinal_position LIMIT 1",
        table,
    )
    assert column is not None, f"{table} does not exist"
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement.format(table=table, column=column))


async def test_other_tables_are_not_append_only(db: asyncpg.Connection) -> None:
    """The control is the audit tables', not a blanket refusal: the webhook queue, for one,
    changes as deliveries are sent."""
    await db.execute("UPDATE webhook_queue SET attempts = attempts WHERE false")
