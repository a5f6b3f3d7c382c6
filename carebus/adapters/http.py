"""What every carebus HTTP service shares: DESIGN's error body, auth, /healthz and /metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from carebus.adapters.auth import Principal, TokenCache
from carebus.runtime import metrics
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import configure_logging, get_logger
from carebus.runtime.worker import Readiness
from carebus.wire.requests import reword

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
    500: "internal_error",
    503: "unavailable",
}


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
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "body"


def _route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(service: str, *, title: str, lifespan: Lifespan | None = None) -> FastAPI:
    """A FastAPI app with carebus's error body everywhere, request metrics and health routes."""
    app = FastAPI(title=title, version="1", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return error_response(400, "the body is not valid JSON", [("body", "malformed JSON")])
        details = [(_validation_field(err.get("loc", ())), reword(err)) for err in exc.errors()]
        return error_response(422, "the request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, headers=headers)

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
        principal = await tokens.principal(bearer_token(request))
        if principal is None:
            raise ApiError(
                401, "the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
            )
        if roles and principal.role not in roles:
            raise ApiError(403, f"this call needs the role {' or '.join(roles)}")
        return principal

    return dependency


async def no_lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield


def serve(
    service: str, build_app: Callable[[Settings], FastAPI], port: Callable[[Settings], int]
) -> None:
    """Run one HTTP service with uvicorn on its configured port, logging as JSON."""
    settings = get_settings()
    configure_logging(service, settings)
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=port(settings),
        log_config=None,
        access_log=False,
    )
