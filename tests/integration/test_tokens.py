"""API tokens expire, rotate with a grace period and are revoked within seconds everywhere
(issue 14, item 3: systems keep API tokens, with expiry, rotation and revocation)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
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


async def test_delete_revokes_for_the_token_itself_its_admin_or_the_operator_only(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    """DELETE /v1/tokens/{id}: 204 for the token itself, its organisation's admin and the
    operator; 404 for anyone else (another organisation's ids are never confirmed); the revoked
    token is then refused by the registry itself within the cache's 5 s."""
    registry = stack.start_service("registry")
    url = stack.settings.service_url(stack.settings.registry_port)
    other_dps = "983971636"  # another DPS organisation
    try:
        victim = await create_token(db, agency="dps", org_id=DPS, role="system")
        admin = await create_token(db, agency="dps", org_id=DPS, role="admin")
        stranger = await create_token(db, agency="dps", org_id=other_dps, role="admin")
        found = await find_token(db, victim)
        assert found is not None
        path = f"{url}/v1/tokens/{found.token_id}"
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.delete(path, headers=_bearer(stranger))
            assert refused.status_code == 404
            assert refused.json()["error"]["message"] == "no such token"
            assert await lookup_token(db, victim) is not None
            malformed = await client.delete(f"{url}/v1/tokens/not-a-uuid", headers=_bearer(admin))
            assert malformed.status_code == 422
            assert (await client.delete(path, headers=_bearer(admin))).status_code == 204
            assert (await client.delete(path, headers=_bearer(admin))).status_code == 204
            assert await lookup_token(db, victim) is None

            itself = await create_token(db, agency="dps", org_id=DPS, role="system")
            own = await find_token(db, itself)
            assert own is not None
            gone = await client.delete(f"{url}/v1/tokens/{own.token_id}", headers=_bearer(itself))
            assert gone.status_code == 204
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # the registry's own cache forgets it within 5 s
                again = await client.get(f"{url}/v1/organisations", headers=_bearer(itself))
                if again.status_code == 401:
                    break
                assert asyncio.get_running_loop().time() < deadline, "still accepted after 10 s"
                await asyncio.sleep(0.5)
    finally:
        registry.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
