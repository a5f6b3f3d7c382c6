"""API tokens expire, rotate with a grace period and are revoked within seconds everywhere
(issue 14, item 3: systems keep API tokens, with expiry, rotation and revocation)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from carebus.adapters.auth import (
    TokenCache,
    create_token,
    find_token,
    lookup_token,
    revoke_token,
    rotate_token,
)
from carebus_dev.testing import TestStack

pytestmark = pytest.mark.integration

DPS = "974705788"


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


def carebus(stack: TestStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carebus.ops.cli", "token", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_token_is_refused_once_it_expires(db: asyncpg.Connection) -> None:
    token = await create_token(
        db, agency="dps", org_id=DPS, role="system", lifetime=timedelta(seconds=1)
    )
    assert await lookup_token(db, token) is not None
    await db.execute("SELECT pg_sleep(1.2)")
    assert await lookup_token(db, token) is None


async def test_a_token_needs_a_positive_lifetime(db: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        await create_token(db, agency="dps", org_id=DPS, role="system", lifetime=timedelta(0))


async def test_rotation_keeps_both_valid_for_the_grace_period_then_only_the_new(
    db: asyncpg.Connection,
) -> None:
    old = await create_token(db, agency="dps", org_id=DPS, role="system", label="epj")
    found = await find_token(db, old)
    assert found is not None
    new = await rotate_token(db, found.token_id, grace=timedelta(seconds=1))

    old_principal, new_principal = await lookup_token(db, old), await lookup_token(db, new)
    assert old_principal is not None
    assert new_principal is not None
    assert (new_principal.org_id, new_principal.role) == (DPS, "system")
    replacement = await find_token(db, new)
    assert replacement is not None
    assert replacement.label == "epj"
    await db.execute("SELECT pg_sleep(1.2)")
    assert await lookup_token(db, old) is None
    assert await lookup_token(db, new) is not None
    with pytest.raises(ValueError, match="no valid token"):
        await rotate_token(db, found.token_id)  # an expired token cannot be rotated again


async def test_a_revoked_token_is_refused_within_the_cache_ttl(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    pool = await asyncpg.create_pool(stack.settings.postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        cache = TokenCache(pool, ttl_s=0.5)
        token = await create_token(db, agency="dps", org_id=DPS, role="system")
        assert await cache.principal(token) is not None
        found = await find_token(db, token)
        assert found is not None
        assert await revoke_token(db, found.token_id) is True
        assert await revoke_token(db, found.token_id) is False  # once
        await db.execute("SELECT pg_sleep(0.6)")
        assert await cache.principal(token) is None
    finally:
        await pool.close()


async def test_the_cli_revokes_by_token_or_by_id_and_rotates(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    by_token = await create_token(db, agency="dps", org_id=DPS, role="system")
    revoked = carebus(stack, "revoke", by_token)
    assert revoked.returncode == 0, revoked.stderr
    assert by_token not in revoked.stdout  # the secret is never echoed
    assert await lookup_token(db, by_token) is None

    by_id = await create_token(db, agency="dps", org_id=DPS, role="system")
    found = await find_token(db, by_id)
    assert found is not None
    rotated = carebus(stack, "rotate", str(found.token_id), "--grace-hours", "1")
    assert rotated.returncode == 0, rotated.stderr
    replacement = rotated.stdout.strip()
    assert replacement.startswith("cbt_")
    assert await lookup_token(db, replacement) is not None
    assert await lookup_token(db, by_id) is not None  # within its grace period
    assert carebus(stack, "revoke", str(found.token_id)).returncode == 0
    assert await lookup_token(db, by_id) is None

    unknown = carebus(stack, "revoke", "cbt_not-a-real-token")
    assert unknown.returncode == 1
    assert "no such token" in unknown.stderr
    assert "cbt_not-a-real-token" not in unknown.stderr
    garbage = carebus(stack, "revoke", "something")
    assert garbage.returncode == 1
    assert "not a token id" in garbage.stderr
