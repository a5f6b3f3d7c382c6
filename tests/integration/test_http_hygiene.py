"""HTTP hygiene on the real services (issue 14, items 3 and 5): an open alert stream ends when
its token is revoked; an organisation over its rate gets 429 while others are served; a body
over its limit is refused before it is read."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token, find_token
from carebus_dev.testing import ServiceProcess, TestStack, free_ports

pytestmark = pytest.mark.integration


def new_org() -> str:
    """A fresh 9-digit organisation number, so no other test shares its tokens or limits."""
    return f"6{uuid.uuid4().int % 10**8:08d}"


@pytest.fixture(scope="module")
def registry(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("registry")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def inbox(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("inbox")
    yield service
    service.stop()


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_open_stream_ends_within_seconds_of_its_token_being_revoked(
    registry: ServiceProcess, inbox: ServiceProcess, db: asyncpg.Connection
) -> None:
    """The stream of a token revoked with DELETE /v1/tokens/{id} ends within 10 s (the token
    cache's 5 s and the stream's recheck), and reconnecting is refused; a stream of another,
    valid token of the same organisation stays open."""
    org_id = new_org()
    revoked = await create_token(db, agency="municipality", org_id=org_id, role="coordinator")
    kept = await create_token(db, agency="municipality", org_id=org_id, role="coordinator")
    found = await find_token(db, revoked)
    assert found is not None
    loop = asyncio.get_running_loop()
    async with (
        httpx.AsyncClient(base_url=inbox.url or "", timeout=30) as client,
        client.stream("GET", "/v1/alerts/stream", headers=auth(revoked)) as doomed,
        client.stream("GET", "/v1/alerts/stream", headers=auth(kept)) as other,
    ):
        assert (doomed.status_code, other.status_code) == (200, 200)
        doomed_lines, other_lines = doomed.aiter_lines(), other.aiter_lines()
        assert await asyncio.wait_for(anext(doomed_lines), 10) == ": connected"
        assert await asyncio.wait_for(anext(other_lines), 10) == ": connected"

        deleted = await client.delete(
            f"{registry.url}/v1/tokens/{found.token_id}", headers=auth(revoked)
        )
        assert deleted.status_code == 204, deleted.text
        revoked_at = loop.time()

        async def until_the_end() -> None:
            async for line in doomed_lines:
                assert line in ("", ": keepalive"), line

        await asyncio.wait_for(until_the_end(), 10)
        assert loop.time() - revoked_at < 10
        assert await anext(other_lines) == ""  # the end of ": connected"
        with pytest.raises(TimeoutError):  # the other token's stream goes on
            await asyncio.wait_for(anext(other_lines), 3)

        again = await client.get("/v1/alerts/stream", headers=auth(revoked))
        assert again.status_code == 401


async def test_an_organisation_over_its_rate_is_refused_with_429_others_are_served(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    """With a low limit, an organisation's third request in quick succession (from either of
    its tokens) is 429 with an integer Retry-After in the error shape, counted by route (on the
    internal metrics port); another organisation's request is answered."""
    port = free_ports(1)[0]
    slow = stack.start_service(
        "registry",
        name="registry_rate_limited",
        port=port,
        env={
            "CAREBUS_RATE_LIMIT_PER_S": "0.2",
            "CAREBUS_RATE_LIMIT_BURST": "2",
            "CAREBUS_METRICS_ON_PUBLIC_PORT": "false",
        },
    )
    internal = f"http://127.0.0.1:{slow.env['CAREBUS_METRICS_PORT']}"
    try:
        busy_org = new_org()
        busy = await create_token(db, agency="municipality", org_id=busy_org, role="system")
        busy_too = await create_token(db, agency="municipality", org_id=busy_org, role="system")
        other = await create_token(db, agency="municipality", org_id=new_org(), role="system")
        async with httpx.AsyncClient(base_url=slow.url or "", timeout=30) as client:
            # Any authenticated call counts: revoking an unknown token id is a cheap 404.
            path = f"/v1/tokens/{uuid.uuid4()}"
            answered = [await client.delete(path, headers=auth(t)) for t in (busy, busy_too)]
            refused = await client.delete(path, headers=auth(busy))
            served = await client.delete(path, headers=auth(other))
            metrics = (await client.get(f"{internal}/metrics")).text
    finally:
        slow.stop()
    assert [r.status_code for r in answered] == [404, 404]
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 5
    assert refused.json()["error"]["code"] == "rate_limited"
    assert served.status_code == 404, served.text
    line = 'carebus_http_rate_limited_total{route="/v1/tokens/{token_id}",service="registry"} 1.0'
    assert line in metrics.splitlines()


async def test_a_body_over_the_limit_is_refused_before_the_token_is_even_looked_up(
    registry: ServiceProcess,
) -> None:
    """A declared Content-Length over the limit is 413 in the error shape, at once."""
    async with httpx.AsyncClient(base_url=registry.url or "", timeout=30) as client:
        response = await client.post(
            "/v1/consents",
            content=b" " * (64 * 1024 + 1),
            headers={**auth("cbt_unknown"), "Content-Type": "application/json"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_metrics_and_health_are_served_on_the_internal_port(
    stack: TestStack, registry: ServiceProcess, inbox: ServiceProcess
) -> None:
    """Every HTTP service serves /metrics and /healthz on its internal metrics port; the API
    port serves /metrics only where the settings say so (locally, yes; here, off: 404)."""
    internal = f"http://127.0.0.1:{registry.env['CAREBUS_METRICS_PORT']}"
    assert internal != registry.url
    port = free_ports(1)[0]
    private = stack.start_service(
        "registry",
        name="registry_private_metrics",
        port=port,
        env={"CAREBUS_METRICS_ON_PUBLIC_PORT": "false"},
    )
    private_internal = f"http://127.0.0.1:{private.env['CAREBUS_METRICS_PORT']}"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            scraped = await client.get(f"{internal}/metrics")
            inbox_internal = f"http://127.0.0.1:{inbox.env['CAREBUS_METRICS_PORT']}"
            inbox_scraped = await client.get(f"{inbox_internal}/metrics")
            health = await client.get(f"{internal}/healthz")
            public = await client.get(f"{registry.url}/metrics")
            hidden = await client.get(f"{private.url}/metrics")
            still_scraped = await client.get(f"{private_internal}/metrics")
            openapi = await client.get(f"{private.url}/openapi.json")
    finally:
        private.stop()
    assert scraped.status_code == 200
    assert "carebus_http_requests_total" in scraped.text
    assert (health.status_code, health.json()["service"]) == (200, "registry")
    assert "carebus_inbox_streams" in inbox_scraped.text
    assert public.status_code == 200  # the local default: the HTTP contract's /metrics
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"
    assert still_scraped.status_code == 200
    assert openapi.status_code == 200
