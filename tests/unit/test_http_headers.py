"""Every response of a carebus HTTP service carries `Cache-Control: no-store` (it may carry
personal data) and `X-Content-Type-Options: nosniff` (issue 14, item 5)."""

from __future__ import annotations

import httpx
from fastapi.responses import JSONResponse

from carebus.adapters.http import create_app


def service() -> httpx.AsyncClient:
    app = create_app("header-test", title="header test")

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
