"""Per-organisation token buckets (`carebus.adapters.ratelimit`) and the 429 every service
answers with them after authentication (issue 14, item 5)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import Depends
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from carebus.adapters.auth import Principal
from carebus.adapters.http import create_app, principal_dependency
from carebus.adapters.ratelimit import TokenBuckets
from carebus.runtime.config import Settings


class Clock:
    """A clock tests step by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_a_burst_then_refuses_with_the_wait() -> None:
    """`burst` requests at once, then a refusal saying how long until the next token."""
    clock = Clock()
    buckets = TokenBuckets(2.0, 3, clock=clock)
    assert [buckets.take("974705788") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("974705788") == pytest.approx(0.5)
    clock.now += 0.25
    assert buckets.take("974705788") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("974705788") == 0.0


def test_tokens_refill_at_the_rate_up_to_the_burst_only() -> None:
    clock = Clock()
    buckets = TokenBuckets(10.0, 2, clock=clock)
    buckets.take("a")
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_each_key_has_its_own_bucket() -> None:
    clock = Clock()
    buckets = TokenBuckets(1.0, 1, clock=clock)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    clock = Clock()
    buckets = TokenBuckets(1.0, 1, clock=clock)
    buckets.take("a")
    clock.now -= 100
    assert buckets.take("a") == pytest.approx(1.0)


def test_memory_stays_bounded_by_forgetting_full_buckets_first() -> None:
    """Past `max_keys`, full buckets are forgotten (a full bucket is as good as none); when
    none is full, the longest idle one is."""
    clock = Clock()
    buckets = TokenBuckets(1.0, 5, clock=clock, max_keys=3)
    for _ in range(5):
        buckets.take("a")  # empty: full again in 5 s
    clock.now += 0.1
    buckets.take("idle")  # full again in 1 s
    clock.now += 2
    buckets.take("b")
    buckets.take("c")
    assert sorted(buckets) == ["a", "b", "c"]
    clock.now += 0.1
    buckets.take("d")
    assert sorted(buckets) == ["b", "c", "d"]


def test_a_bucket_needs_a_positive_rate_and_burst() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBuckets(0.0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(1.0, 0)


# --- in a service ------------------------------------------------------------------------------


# Tokens "a1"/"a2" of one organisation and "b1" of another.
TOKEN_ORGS = {"a1": "911111111", "a2": "911111111", "b1": "922222222"}


class FakeTokens:
    """The token cache's one method, over TOKEN_ORGS."""

    async def principal(self, token: str) -> Principal | None:
        org_id = TOKEN_ORGS.get(token)
        if org_id is None:
            return None
        return Principal(uuid.uuid4(), org_id, "municipality", "system", None)


def service(rate_per_s: float = 0.5, burst: int = 2) -> httpx.AsyncClient:
    settings = Settings(rate_limit_per_s=rate_per_s, rate_limit_burst=burst)
    app = create_app("ratelimit-test", title="rate limit test", settings=settings)
    app.state.tokens = FakeTokens()
    caller = principal_dependency()
    coordinator = principal_dependency("coordinator")

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str, principal: Principal = Depends(caller)) -> JSONResponse:
        return JSONResponse({"thing_id": thing_id})

    @app.get("/v1/coordinators-only")
    async def restricted(principal: Principal = Depends(coordinator)) -> JSONResponse:
        return JSONResponse({})

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused() -> float:
    value = REGISTRY.get_sample_value(
        "carebus_http_rate_limited_total",
        {"service": "ratelimit-test", "route": "/v1/things/{thing_id}"},
    )
    return value or 0.0


async def test_an_organisation_over_its_rate_gets_429_with_retry_after_others_are_served() -> None:
    """Every token of the organisation shares its bucket; another organisation is served; the
    refusal is in the error shape and counted by route template, with no organisation label."""
    before = refused()
    async with service() as http:
        first = [await http.get(f"/v1/things/{n}", headers=auth("a1")) for n in range(2)]
        over = await http.get("/v1/things/3", headers=auth("a2"))
        other = await http.get("/v1/things/4", headers=auth("b1"))
    assert [r.status_code for r in first] == [200, 200]
    assert over.status_code == 429, over.text
    assert over.headers["retry-after"] == "2"  # 1 token at 0.5/s, whole seconds, rounded up
    assert over.json()["error"]["code"] == "rate_limited"
    assert over.json()["error"]["details"] == []
    assert other.status_code == 200
    assert refused() == before + 1


async def test_retry_after_is_a_whole_number_of_seconds_at_least_one() -> None:
    async with service(rate_per_s=50.0, burst=1) as http:
        await http.get("/v1/things/1", headers=auth("a1"))
        over = await http.get("/v1/things/2", headers=auth("a1"))
    assert over.status_code == 429
    assert over.headers["retry-after"] == "1"


async def test_unauthenticated_calls_take_no_organisations_tokens() -> None:
    """Limiting follows authentication: a bad token is 401 and spends nothing."""
    async with service(burst=1) as http:
        unknown = [await http.get("/v1/things/1", headers=auth("nobody")) for _ in range(3)]
        known = await http.get("/v1/things/1", headers=auth("a1"))
    assert [r.status_code for r in unknown] == [401, 401, 401]
    assert known.status_code == 200


async def test_requests_refused_by_role_count_against_the_organisation_too() -> None:
    """The limit applies to every authenticated call, before the role is checked."""
    async with service(burst=1) as http:
        wrong_role = await http.get("/v1/coordinators-only", headers=auth("a1"))
        after = await http.get("/v1/things/1", headers=auth("a1"))
    assert wrong_role.status_code == 403
    assert after.status_code == 429


def test_the_default_limits_are_generous() -> None:
    """The defaults never hold back the test suite or `make bench` (~700 requests/s per
    process at most)."""
    settings = Settings()
    assert settings.rate_limit_per_s >= 1000
    assert settings.rate_limit_burst >= 1000
