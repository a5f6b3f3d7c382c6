"""The gateway: agency systems publish events over HTTP; each is validated, keyed and published."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from carebus import metrics
from carebus.auth import Principal, TokenCache
from carebus.codec import Codec
from carebus.config import Settings, get_settings
from carebus.events import Event, Problem, parse_event
from carebus.http import ApiError, create_app, principal_dependency
from carebus.publisher import BrokerUnavailableError, Publisher
from services.gateway.ingest import Accepted, ConflictError, Ingest

MAX_BATCH = 1000
MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_AFTER_S = "5"
# An event cannot have happened after it is sent: a day of leeway for wrong clocks and time zones;
# beyond that it is a typo or a broken clock (year 9999 overflowed every deadline computed from it).
FUTURE_TOLERANCE = timedelta(days=1)
FUTURE_PROBLEM = "is more than a day in the future"

_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
        "description": "One event as in DESIGN's event shape.",
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "events": {
                            "type": "array",
                            "maxItems": MAX_BATCH,
                            "items": {"type": "object"},
                        }
                    },
                    "required": ["events"],
                }
            }
        },
    }
}


def build_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app wired to the real pool, producer and codec."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=10)
        publisher = Publisher(settings, client_id="carebus-gateway")
        secret = settings.subject_key_secret.get_secret_value().encode()
        app.state.tokens = TokenCache(pool)
        app.state.ingest = Ingest(pool, publisher, Codec.default(), secret)
        try:
            yield
        finally:
            publisher.close()
            await pool.close()

    app = create_app("gateway", title="carebus gateway", lifespan=lifespan)
    publisher_only = principal_dependency("system")

    @app.post("/v1/events", status_code=202, openapi_extra=_EVENT_BODY)
    async def post_event(
        request: Request, principal: Principal = Depends(publisher_only)
    ) -> JSONResponse:
        raw = await _json_body(request)
        event = _checked([raw], principal, batch=False)[0]
        accepted = await _accept(request, [event], batch=False)
        return JSONResponse(_accepted_json(accepted[0]), status_code=202)

    @app.post("/v1/events:batch", status_code=202, openapi_extra=_BATCH_BODY)
    async def post_batch(
        request: Request, principal: Principal = Depends(publisher_only)
    ) -> JSONResponse:
        raw = await _json_body(request)
        if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
            raise ApiError(
                422,
                "the body must be an object with a list `events`",
                [("events", "must be a list of events")],
            )
        if set(raw) - {"events"}:
            field = sorted(set(raw) - {"events"})[0]
            raise ApiError(422, "the batch has unknown fields", [(field, "not a batch field")])
        if len(raw["events"]) > MAX_BATCH:
            metrics.EVENTS_REJECTED.labels("too_large").inc()
            raise ApiError(
                413,
                f"a batch holds at most {MAX_BATCH} events",
                [("events", f"has {len(raw['events'])} events; at most {MAX_BATCH}")],
            )
        if not raw["events"]:
            raise ApiError(422, "the batch is empty", [("events", "must not be empty")])
        events = _checked(raw["events"], principal, batch=True)
        accepted = await _accept(request, events, batch=True)
        return JSONResponse({"accepted": [_accepted_json(a) for a in accepted]}, status_code=202)

    return app


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "the request body is too large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        metrics.EVENTS_REJECTED.labels("malformed").inc()
        raise ApiError(400, "the body is not valid JSON", [("body", "malformed JSON")]) from error


def _checked(raws: list[Any], principal: Principal, *, batch: bool) -> list[Event]:
    """Parse every event; 422 with every problem, then 403 for a source that is not the caller."""
    events: list[Event] = []
    problems: list[tuple[str, str]] = []
    latest = datetime.now(UTC) + FUTURE_TOLERANCE
    for index, raw in enumerate(raws):
        event, found = parse_event(raw)
        if event is not None and event.occurred_at > latest:
            found = [Problem("occurred_at", FUTURE_PROBLEM)]
            event = None
        problems.extend((_field(index, p, batch=batch), p.problem) for p in found)
        if event is not None:
            events.append(event)
    if problems:
        metrics.EVENTS_REJECTED.labels("invalid").inc()
        raise ApiError(
            422, "the event is invalid" if not batch else "the batch is invalid", problems
        )
    for index, event in enumerate(events):
        if (event.source_org, event.source_agency) != (principal.org_id, principal.agency):
            metrics.EVENTS_REJECTED.labels("forbidden").inc()
            field = f"events[{index}].source" if batch else "source"
            raise ApiError(
                403,
                "the event's source is not the token's organisation",
                [(field, "must be the token's organisation")],
            )
    return events


def _field(index: int, problem: Problem, *, batch: bool) -> str:
    if not batch:
        return problem.field or "body"
    return f"events[{index}].{problem.field}" if problem.field else f"events[{index}]"


async def _accept(request: Request, events: list[Event], *, batch: bool) -> list[Accepted]:
    ingest: Ingest = request.app.state.ingest
    try:
        return await ingest.accept(events)
    except ConflictError as conflict:
        metrics.EVENTS_REJECTED.labels("conflict").inc()
        field = f"events[{conflict.index}].event_id" if batch else "event_id"
        raise ApiError(
            409,
            "this event_id was already accepted with other content",
            [(field, "already used for other content")],
        ) from conflict
    except (BrokerUnavailableError, OSError, asyncpg.PostgresConnectionError) as error:
        metrics.EVENTS_REJECTED.labels("unavailable").inc()
        raise ApiError(
            503,
            "the event could not be stored; retry later",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from error


def _accepted_json(accepted: Accepted) -> dict[str, str]:
    return {"event_id": accepted.event_id, "subject_key": accepted.subject_key}
