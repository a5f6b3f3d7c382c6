"""What every carebus HTTP service shares: DESIGN's error body, auth, request-size and rate
limits, /healthz and /metrics (on an internal port, and locally on the API port too)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carebus.adapters.auth import Principal, TokenCache, TokenRefusedError
from carebus.adapters.outages import OUTAGES
from carebus.adapters.ratelimit import TokenBuckets
from carebus.domain.text import UNSHOWN_FIELD_PROBLEM
from carebus.runtime import metrics
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import configure_logging, get_logger
from carebus.runtime.worker import Readiness, serve_health
from carebus.wire.requests import field_path, reword, shown_loc

log = get_logger(__name__)

_STATUS_CODES = {
    400: "malformed_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    field: str
    problem: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorBody(BaseModel):
    """DESIGN's error body, the same for every status and service."""

    error: ErrorInfo


_ERROR_MEANINGS = {
    400: "Malformed: the body is not JSON, or the Content-Length is not a number.",
    401: "No valid bearer token (or session).",
    403: "Outside the caller's organisation or role, or a statement it may not make.",
    404: "No such resource, or one the caller may not see.",
    409: "In conflict with what is recorded.",
    413: "The body is over the route's size limit.",
    422: "Invalid: every problem with the field it is about.",
    429: "The organisation is over its request rate; retry after Retry-After seconds.",
    503: "A dependency is unavailable; retry after Retry-After seconds.",
}
# What every route may answer (the size limit reads every request, whatever its route), and
# what every /v1 route answers besides (the caller check and the rate limit).
_EVERY_ROUTE = (400, 413, 422)
_V1_ROUTES = (401, 403, 429)
_ERROR_REF = "#/components/schemas/ErrorBody"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's own error statuses, each with DESIGN's error body
    (the statuses every route answers are declared by `create_app`)."""
    return {status: _error_response(status) for status in statuses}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_MEANINGS.get(status, "An error."),
        "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
    }


def declare_errors(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the error answers every route really gives: DESIGN's error body
    for 422 (not FastAPI's own, which no route answers) and for the statuses every route, or
    every /v1 route, may answer."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas["ErrorBody"] = body
    for path, operations in document.get("paths", {}).items():
        # Every route that takes a token: /v1, and the adapters' FHIR base.
        with_token = path.startswith(("/v1/", "/fhir"))
        common = (422, *_EVERY_ROUTE, *(_V1_ROUTES if with_token else ()))
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if _is_fastapis_validation_error(responses.get("422")):
                del responses["422"]
            for status in common:
                _declare(responses, status)
    return document


def _is_fastapis_validation_error(response: dict[str, Any] | None) -> bool:
    schema = ((response or {}).get("content") or {}).get("application/json", {}).get("schema")
    return bool(schema) and "HTTPValidationError" in str(schema.get("$ref", ""))


def _declare(responses: dict[str, Any], status: int) -> None:
    """DESIGN's error body for `status`; beside a route's own body in another format (an
    adapter's AppRec or OperationOutcome), which it answers for the same status."""
    declared = responses.get(str(status))
    if declared is None:
        responses[str(status)] = _error_response(status)
        return
    # A new mapping: a route may share one response object among its statuses.
    content = {"application/json": _error_response(status)["content"]["application/json"]}
    responses[str(status)] = {**declared, "content": content | declared.get("content", {})}


@dataclass
class ApiError(Exception):
    """An error answered with DESIGN's body: {"error": {"code", "message", "details"}}."""

    status: int
    message: str
    details: Sequence[tuple[str, str]] = field(default_factory=list)
    code: str = ""
    headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.details, self.code, self.headers)


def error_response(
    status: int,
    message: str,
    details: Sequence[tuple[str, str]] = (),
    code: str = "",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": code or _STATUS_CODES.get(status, "error"),
            "message": message,
            "details": [{"field": name, "problem": problem} for name, problem in details],
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_field(loc: Sequence[Any]) -> str:
    parts = [part for part in loc if part not in ("body", "query", "path", "header")]
    return field_path(parts) or "body"


def _validation_problem(error: Any) -> str:
    # A field name that may not be shown (a control character, a nin) is not quoted anywhere.
    return reword(error) if shown_loc(error.get("loc", ())) else UNSHOWN_FIELD_PROBLEM


def _route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


@dataclass(frozen=True)
class BodyLimits:
    """Every service's request-size policy: one default, and the routes that take another."""

    default: int
    routes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        # The one route whose bodies are larger than one request's: a batch of up to 1000
        # events. Every other body (one event, a consent, a query) fits in the default.
        # The adapters take messages in agencies' own formats: a PLO message may carry
        # attachments, an HL7 v2 batch or a FHIR Bundle several resources.
        message = settings.http_max_message_body_bytes
        return cls(
            settings.http_max_body_bytes,
            {
                "/v1/events:batch": settings.http_max_batch_body_bytes,
                "/v1/adapters/plo": message,
                "/v1/adapters/hl7v2": message,
                "/fhir": message,
                "/fhir/Encounter": message,
            },
        )

    def of_path(self, path: str) -> int:
        return self.routes.get(path, self.default)


class _BodyTooLargeError(StarletteHTTPException):
    """Raised by the limited `receive` once a body crosses its limit: FastAPI passes HTTP
    exceptions on while it reads a body, so the app's own handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class LimitRequestBody:
    """ASGI middleware refusing a body over its route's limit with 413, before it is read.

    A declared Content-Length over the limit is refused without reading a byte (a client that
    sent `Expect: 100-continue` never sends the body); a body without one (chunked) is counted
    as the app reads it and refused at the first chunk past the limit, nothing more buffered.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.of_path(scope["path"])
        declared = _content_length(scope)
        if declared == -1:
            problem = [("Content-Length", "must be a number of bytes")]
            await error_response(400, "the Content-Length is invalid", problem)(
                scope, receive, send
            )
            return
        if declared is not None and declared > limit:
            await _too_large(limit).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            if started:
                raise
            await _too_large(limit).response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length; None when there is none, -1 when it is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than {limit} bytes",
        [("body", f"at most {limit} bytes")],
    )


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    service: str,
    *,
    title: str,
    lifespan: Lifespan | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """A FastAPI app with carebus's error body everywhere, request-size and rate limits,
    request metrics and health routes."""
    settings = settings or get_settings()
    app = FastAPI(title=title, version="1", lifespan=lifespan)
    app.state.service = service
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_errors(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Per process: each organisation's requests of this service, after authentication.
    app.state.rate_limits = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    # Inside the request metrics (added below, so outside this), which count its 413s too.
    app.add_middleware(LimitRequestBody, limits=BodyLimits.of(settings))

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(_BodyTooLargeError)
    async def _body_too_large(_request: Request, exc: _BodyTooLargeError) -> JSONResponse:
        return _too_large(exc.limit).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return error_response(400, "the body is not valid JSON", [("body", "malformed JSON")])
        details = [
            (_validation_field(err.get("loc", ())), _validation_problem(err))
            for err in exc.errors()
        ]
        return error_response(422, "the request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, headers=headers)

    # A dependency that is down, frozen or saturated (a pool not acquired in time, a statement
    # unanswered, a broker that does not acknowledge): 503 with Retry-After, never 500.
    retry_after = {"Retry-After": str(settings.unavailable_retry_after_s)}

    async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
        metrics.HTTP_UNAVAILABLE.labels(service, type(exc).__name__).inc()
        log.warning("dependency_unavailable", error_type=type(exc).__name__)
        return error_response(
            503, "a dependency is unavailable; retry later", headers=dict(retry_after)
        )

    for outage in OUTAGES:
        if issubclass(outage, Exception):
            app.add_exception_handler(outage, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The exception text may quote input; only its type is logged.
        log.error("unhandled_error", error_type=type(exc).__name__)
        return error_response(500, "internal error")

    @app.middleware("http")
    async def _observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        route = _route_template(request)
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            # Any response but the metrics may carry personal data: no cache keeps it, and no
            # browser second-guesses its content type.
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            if request.url.path != "/metrics":
                response.headers.setdefault("Cache-Control", "no-store")
            return response
        finally:
            metrics.HTTP_LATENCY.labels(service, route, request.method).observe(
                time.perf_counter() - started
            )
            metrics.HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()

    # Readiness, as every worker reports it (carebus.runtime.worker): a service's lifespan adds
    # its dependencies' checks (database, broker); 503 names the failing ones.
    app.state.readiness = Readiness()

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        readiness: Readiness = request.app.state.readiness
        checks = readiness.report()  # the last answers of checks run in the background
        ok = all(checks.values())
        body = {"status": "ok" if ok else "unready", "service": service, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    # Always on the internal metrics port (`serve`); on the API port only where the settings
    # say so (locally, for the HTTP contract), never in production.
    if settings.public_metrics:

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def principal_dependency(
    *roles: str,
) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, `401` without a valid token, `403` by role."""

    async def dependency(request: Request) -> Principal:
        tokens: TokenCache = request.app.state.tokens
        try:
            principal = await tokens.principal(bearer_token(request))
        except TokenRefusedError as refused:  # a system's access token (JWT) that fails
            raise ApiError(
                401, str(refused), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from None
        if principal is None:
            raise ApiError(
                401, "the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
            )
        _within_rate(request, principal)
        if roles and principal.role not in roles:
            raise ApiError(403, f"this call needs the role {' or '.join(roles)}")
        return principal

    return dependency


def _within_rate(request: Request, principal: Principal) -> None:
    """429 with Retry-After when the caller's organisation has used up its requests."""
    buckets: TokenBuckets = request.app.state.rate_limits
    wait_s = buckets.take(principal.org_id)
    if wait_s <= 0:
        return
    metrics.HTTP_RATE_LIMITED.labels(request.app.state.service, _route_template(request)).inc()
    raise ApiError(
        429,
        "too many requests from this organisation; retry after the time in Retry-After",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


async def no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def serve(
    service: str,
    build_app: Callable[[Settings], FastAPI],
    port: Callable[[Settings], int],
    *,
    graceful_shutdown_s: int | None = None,
) -> None:
    """Run one HTTP service with uvicorn on its configured port, logging as JSON, with
    /metrics and /healthz on the internal `metrics_port` (for Prometheus and probes).

    With `graceful_shutdown_s`, requests still open that long after a shutdown was asked for
    (live streams, which never end by themselves) are cut."""
    settings = get_settings()
    configure_logging(service, settings)
    app = build_app(settings)
    serve_health(service, settings.http_host, settings.metrics_port, app.state.readiness)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=port(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
