"""The adapters: agencies' systems send the messages they already send (PLO, HL7 v2, FHIR R4)
and get the answer their protocol expects; what the messages say goes to the gateway as carebus
events, under the caller's own token (docs/adapters.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from carebus.adapters.auth import Principal, TokenCache
from carebus.adapters.db import create_pool
from carebus.adapters.http import ApiError, create_app, error_responses, principal_dependency
from carebus.adapters.resources import pool_answers
from carebus.runtime import metrics
from carebus.runtime.config import (
    LOCAL_ADAPTER_ID_SECRET,
    Settings,
    get_settings,
    production_secret,
)
from services.adapters.directory import DirectorySnapshot
from services.adapters.fhir import FHIR_JSON, FhirAdapter
from services.adapters.gateway import Gateway, GatewayUnauthorizedError, GatewayUnavailableError
from services.adapters.hl7v2 import HL7_TYPE, Hl7Adapter
from services.adapters.mllp import MllpListener
from services.adapters.plo import Answer, PloAdapter
from services.adapters.registry import (
    Registry,
    RegistryUnauthorizedError,
    RegistryUnavailableError,
)
from services.adapters.subscription import SubscriptionAdapter

_XML_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/xml": {"schema": {"type": "string"}}},
        "description": "A MsgHead 1.2 document carrying a PLO 1.6 (or 1.5) message.",
    }
}
_FHIR_BODY = {
    "requestBody": {
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object"}}},
        "description": "A FHIR R4 resource (JSON).",
    }
}
_OUTCOME: dict[str, Any] = {
    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
    "description": "A FHIR OperationOutcome.",
}
_HL7_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            HL7_TYPE: {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
        "description": "One HL7 v2 message (ER7), MLLP framing optional.",
    }
}
_ACK: dict[str, Any] = {
    "content": {HL7_TYPE: {"schema": {"type": "string"}}},
    "description": "The HL7 v2 ACK message.",
}
_APPREC: dict[str, Any] = {
    "content": {"application/xml": {"schema": {"type": "string"}}},
    "description": "An AppRec 1.1 document.",
}


def build_app(settings: Settings | None = None) -> FastAPI:
    """The adapters app wired to the real pool and gateway."""
    settings = settings or get_settings()
    secret = production_secret(settings, "adapter_id_secret", LOCAL_ADAPTER_ID_SECRET).encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=5)
        gateway = Gateway(
            settings.gateway_base_url,
            settings.gateway_request_timeout_s,
            settings.unavailable_retry_after_s,
        )
        registry = Registry(
            settings.registry_base_url,
            settings.gateway_request_timeout_s,
            settings.unavailable_retry_after_s,
        )
        directory = DirectorySnapshot(pool)
        app.state.subscriptions = SubscriptionAdapter(registry)
        app.state.tokens = tokens = TokenCache(pool)
        app.state.plo = PloAdapter(gateway, directory, secret)
        app.state.fhir = FhirAdapter(gateway, directory, secret)
        app.state.hl7v2 = hl7 = Hl7Adapter(gateway, directory, secret, tokens)
        mllp = MllpListener(
            hl7.handle_framed,
            max_message_bytes=settings.mllp_max_message_bytes,
            idle_timeout_s=settings.mllp_idle_timeout_s,
            max_connections=settings.mllp_max_connections,
        )
        await mllp.start(settings.http_host, settings.mllp_port)
        app.state.readiness.add("database", pool_answers(pool))
        # Not the gateway: without it every message is answered 503 (retry), which is the
        # protocol's own answer; the adapters start and stop independently of it.
        try:
            yield
        finally:
            await mllp.stop()
            await gateway.close()
            await registry.close()
            await pool.close()

    app = create_app("adapters", title="carebus adapters", lifespan=lifespan, settings=settings)
    system_only = principal_dependency("system")
    # The registry decides who may set the organisation's webhook (its own roles), as it does
    # for PUT /v1/webhooks: any valid token gets that far.
    any_role = principal_dependency()

    @app.post(
        "/v1/adapters/plo",
        responses=_answers(_APPREC, 200, 400, 403, 409, 422),
        openapi_extra=_XML_BODY,
    )
    async def post_plo(request: Request, principal: Principal = Depends(system_only)) -> Response:
        """A PLO message (MsgHead 1.2) from the caller's organisation; answered with an AppRec:
        `OK` (200) once the gateway has its events, or `Avvist` naming the problem."""
        body = await request.body()
        adapter: PloAdapter = request.app.state.plo
        return _respond(
            await _unless_unavailable(
                request, "plo", adapter.handle(body, principal, _authorization(request))
            )
        )

    @app.post(
        "/v1/adapters/hl7v2",
        responses=_answers(_ACK, 200, 400, 403, 409, 422),
        openapi_extra=_HL7_BODY,
    )
    async def post_hl7v2(request: Request, principal: Principal = Depends(system_only)) -> Response:
        """An HL7 v2 ADT message (A01, A04, A03, A08, A11, A13; segments ended by \\r, \\n or
        \\r\\n); answered with its ACK: AA (200) once the gateway has its events, AE or AR with
        an ERR segment naming the field."""
        adapter: Hl7Adapter = request.app.state.hl7v2
        body = await request.body()
        return _respond(
            await _unless_unavailable(
                request, "hl7v2", adapter.handle(body, principal, _authorization(request))
            )
        )

    @app.post(
        "/fhir/Encounter",
        status_code=201,
        responses=_answers(_OUTCOME, 200, 201, 400, 403, 409, 422),
        openapi_extra=_FHIR_BODY,
    )
    async def post_encounter(
        request: Request, principal: Principal = Depends(system_only)
    ) -> Response:
        """A FHIR R4 Encounter (create or update), its Patient contained or named by identifier;
        answered with an OperationOutcome: 201 once the gateway has its events."""
        adapter: FhirAdapter = request.app.state.fhir
        body = await request.body()
        return _respond(
            await _unless_unavailable(
                request, "fhir", adapter.encounter(body, principal, _authorization(request))
            )
        )

    @app.post(
        "/fhir",
        responses=_answers(_OUTCOME, 200, 400, 403, 409, 422),
        openapi_extra=_FHIR_BODY,
    )
    async def post_bundle(
        request: Request, principal: Principal = Depends(system_only)
    ) -> Response:
        """A FHIR R4 Bundle (message, transaction, batch or collection): every Encounter in it
        mapped, all or none; answered with an OperationOutcome."""
        adapter: FhirAdapter = request.app.state.fhir
        body = await request.body()
        return _respond(
            await _unless_unavailable(
                request, "fhir", adapter.bundle(body, principal, _authorization(request))
            )
        )

    @app.post(
        "/fhir/Subscription",
        status_code=201,
        responses=_answers(_OUTCOME, 201, 400, 403, 422),
        openapi_extra=_FHIR_BODY,
    )
    async def post_subscription(
        request: Request, principal: Principal = Depends(any_role)
    ) -> Response:
        """A FHIR R4 Subscription (rest-hook, payload application/fhir+json): the organisation's
        webhook, whose deliveries are then FHIR messages; 201 with the Subscription (id: the
        organisation number) and its signing secret, shown once."""
        adapter: SubscriptionAdapter = request.app.state.subscriptions
        body = await request.body()
        return _respond(
            await _unless_unavailable(
                request, "fhir", adapter.create(body, _authorization(request))
            )
        )

    @app.get(
        "/fhir/Subscription/{subscription_id}",
        responses=_answers(_OUTCOME, 200, 403, 404),
    )
    async def get_subscription(
        subscription_id: str, request: Request, principal: Principal = Depends(any_role)
    ) -> Response:
        """The organisation's own Subscription (its webhook, if it receives FHIR), without
        its secret."""
        adapter: SubscriptionAdapter = request.app.state.subscriptions
        return _respond(
            await _unless_unavailable(
                request,
                "fhir",
                adapter.read(subscription_id, principal, _authorization(request)),
            )
        )

    @app.delete(
        "/fhir/Subscription/{subscription_id}",
        status_code=204,
        responses=_answers(_OUTCOME, 204, 403, 404),
    )
    async def delete_subscription(
        subscription_id: str, request: Request, principal: Principal = Depends(any_role)
    ) -> Response:
        """End the organisation's own Subscription: its webhook is deleted."""
        adapter: SubscriptionAdapter = request.app.state.subscriptions
        return _respond(
            await _unless_unavailable(
                request,
                "fhir",
                adapter.delete(subscription_id, principal, _authorization(request)),
            )
        )

    return app


def _answers(body: dict[str, Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: the protocol's body for `statuses`, DESIGN's error for 503."""
    return dict.fromkeys(statuses, body) | error_responses(503)


def _authorization(request: Request) -> str:
    # The dependency has checked it is a valid bearer token; the gateway checks it again.
    return request.headers["authorization"]


async def _unless_unavailable(
    request: Request, protocol: str, handling: Coroutine[Any, Any, Answer]
) -> Answer:
    try:
        return await handling
    except (GatewayUnauthorizedError, RegistryUnauthorizedError) as unauthorized:
        raise ApiError(
            401, "the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        ) from unauthorized
    except (GatewayUnavailableError, RegistryUnavailableError) as unavailable:
        metrics.ADAPTER_MESSAGES.labels(protocol, "unavailable").inc()
        raise ApiError(
            503,
            "the message could not be handed on; retry later (it is taken once)",
            headers={"Retry-After": str(unavailable.retry_after_s)},
        ) from unavailable


def _respond(answer: Answer) -> Response:
    return Response(
        answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers
    )
