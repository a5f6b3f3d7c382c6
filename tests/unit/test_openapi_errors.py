"""Every service's OpenAPI document declares the errors its routes answer, with DESIGN's body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from carebus.runtime.config import Settings
from services.audit.app import build_app as audit_app
from services.gateway.app import build_app as gateway_app
from services.inbox.app import build_app as inbox_app
from services.registry.app import build_app as registry_app

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
APPS: dict[str, Callable[[Settings], FastAPI]] = {
    "gateway": gateway_app,
    "registry": registry_app,
    "audit": audit_app,
    "inbox": inbox_app,
}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


@pytest.mark.parametrize("service", APPS)
def test_every_operation_declares_the_shared_errors_with_the_error_body(service: str) -> None:
    """400, 413 and 422 on every route, 401, 403 and 429 on every /v1 route, each with DESIGN's
    error body; FastAPI's own validation error, which no route answers, is gone."""
    document = APPS[service](Settings()).openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    for path, method, operation in operations(document):
        expected = {"400", "413", "422"} | (
            {"401", "403", "429"} if path.startswith("/v1/") else set()
        )
        responses = operation["responses"]
        assert expected <= set(responses), (path, method)
        for status in expected:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == ERROR_BODY, (path, method, status)


def test_route_specific_errors_and_success_bodies_are_declared() -> None:
    """A route's own answers are in its document: the gateway's 202 body, 409 and 503; the
    registry's 404 for an unknown token; the sign-in's 303 redirect."""
    gateway = gateway_app(Settings()).openapi()["paths"]["/v1/events"]["post"]["responses"]
    assert {"202", "409", "503"} <= set(gateway)
    assert gateway["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventAccepted"
    }
    registry = registry_app(Settings()).openapi()["paths"]["/v1/tokens/{token_id}"]["delete"]
    assert "404" in registry["responses"]
    login = audit_app(Settings()).openapi()["paths"]["/login"]["get"]["responses"]
    assert {"303", "503"} <= set(login)
    assert "200" not in login
