"""Every response of a carebus HTTP service carries `Cache-Control: no-store` (it may carry
personal data) and `X-Content-Type-Options: nosniff`; /metrics is on the API port only outside
production (issue 14, item 5)."""

from __future__ import annotations

import httpx
from fastapi.responses import JSONResponse

from carebus.adapters.http import create_app
from carebus.runtime.config import Settings


def service(settings: Settings | None = None) -> httpx.AsyncClient:
    app = create_app("header-test", title="header test", settings=settings or Settings())

    @app.get("/v1/person")
    async def person() -> JSONResponse:
        return JSONResponse({"subject": {"nin": "not a real one"}})

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_personal_data_is_never_cached_or_sniffed() -> None:
    async with service() as client:
        for path in ("/v1/person", "/healthz", "/v1/nowhere"):
            response = await client.get(path)
            assert response.headers["cache-control"] == "no-store", path
            assert response.headers["x-content-type-options"] == "nosniff", path


async def test_metrics_may_be_cached_but_not_sniffed() -> None:
    async with service() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "cache-control" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_metrics_leave_the_api_port_when_the_settings_say_so() -> None:
    """With `metrics_on_public_port` off, /metrics on the API port is 404 like any unknown path
    (it is served on the internal metrics port instead); /healthz stays."""
    async with service(Settings(metrics_on_public_port=False)) as client:
        metrics = await client.get("/metrics")
        health = await client.get("/healthz")
    assert metrics.status_code == 404
    assert metrics.json()["error"]["code"] == "not_found"
    assert health.json()["service"] == "header-test"


def test_metrics_are_on_the_api_port_by_default_except_in_production() -> None:
    """Locally and in tests by default; in production only when set explicitly."""
    assert Settings().public_metrics
    assert Settings(environment="test").public_metrics
    # Not validated: production settings need secrets this test has no business with.
    production = Settings.model_construct(environment="production")
    assert not production.public_metrics
    explicit = Settings.model_construct(environment="production", metrics_on_public_port=True)
    assert explicit.public_metrics
