"""The gateway: agency systems publish events over HTTP; each is validated, keyed and published."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from carebus.adapters.auth import Principal, TokenCache
from carebus.adapters.db import create_pool
from carebus.adapters.directory import Directory
from carebus.adapters.http import (
    ApiError,
    BodyLimits,
    create_app,
    error_responses,
    principal_dependency,
)
from carebus.adapters.outages import OUTAGES
from carebus.adapters.publisher import Publisher
from carebus.adapters.refusals import RefusalLog
from carebus.adapters.resources import pool_answers
from carebus.domain.agencies import AGENCIES
from carebus.domain.authority import (
    Actor,
    AuthorityPolicy,
    NotEntitledError,
    Refusal,
    claim_problems,
    event_claims,
)
from carebus.domain.events import EVENT_TYPES, Event, Problem, parse_event
from carebus.domain.identity import subject_key
from carebus.domain.text import UNSHOWN_FIELD_PROBLEM, shown_field_name
from carebus.runtime import metrics
from carebus.runtime.config import Settings, get_settings
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_authority
from carebus.wire.sealing import KeyWrap
from services.gateway.ingest import Accepted, ConflictError, Ingest
from services.gateway.shedding import InFlight, ShedLoad

MAX_BATCH = 1000
INGEST_PATHS = ("/v1/events", "/v1/events:batch")
# An event cannot have happened after it is sent: a day of leeway for wrong clocks and time zones;
# beyond that it is a typo or a broken clock (year 9999 overflowed every deadline computed from it).
FUTURE_TOLERANCE = timedelta(days=1)
FUTURE_PROBLEM = "is more than a day in the future"

# DESIGN's event shape (docs/design.md, "HTTP contract"); the payload of each type is checked by
# the gateway (carebus.domain.events), so the document says only that it is an object.
_EVENT = {
    "type": "object",
    "description": "One event as in DESIGN's event shape.",
    "properties": {
        "event_id": {"type": "string", "minLength": 1},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "occurred_at": {"type": "string", "format": "date-time"},
        "source": {
            "type": "object",
            "properties": {
                "agency": {"type": "string", "enum": list(AGENCIES)},
                "org_id": {"type": "string", "pattern": "^[0-9]{9}$"},
                "system": {"type": "string"},
            },
            "required": ["agency", "org_id"],
        },
        "subject": {
            "type": "object",
            "properties": {"nin": {"type": "string", "pattern": "^[0-9]{11}$"}},
            "required": ["nin"],
        },
        "payload": {"type": "object"},
        "emergency": {"type": "object"},
    },
    "required": ["event_id", "event_type", "occurred_at", "source", "subject", "payload"],
}
_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _EVENT}},
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
                        "events": {"type": "array", "maxItems": MAX_BATCH, "items": _EVENT}
                    },
                    "required": ["events"],
                }
            }
        },
    }
}


class EventAccepted(BaseModel):
    event_id: str
    subject_key: str


class BatchAccepted(BaseModel):
    accepted: list[EventAccepted]


def build_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app wired to the real pool, producer and codec."""
    settings = settings or get_settings()
    authority = load_authority()
    # It seals every nin and free text under the person's data key: a deployment without its
    # key-encryption key refuses to start, not to accept.
    wrap = KeyWrap.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each request holds its connection while the broker acknowledges (and the person facts
        # are folded meanwhile): 10 capped 32 concurrent clients at 412 events/s, 20 gives 669.
        pool = await create_pool(settings, min_size=1, max_size=20)
        publisher = Publisher.connect(settings, "carebus-gateway")
        codec = Codec.default()
        app.state.secret = secret = settings.subject_key_secret.get_secret_value().encode()
        app.state.tokens = TokenCache(pool)
        app.state.authority = authority
        app.state.directory = Directory(pool)
        app.state.refusals = RefusalLog(publisher, codec, authority.version)
        app.state.ingest = Ingest(pool, publisher, codec, secret, authority, wrap)
        app.state.readiness.add("database", pool_answers(pool))
        app.state.readiness.add("broker", publisher.answers)
        try:
            yield
        finally:
            await asyncio.to_thread(publisher.close)
            await pool.close()

    app = create_app("gateway", title="carebus gateway", lifespan=lifespan, settings=settings)
    app.state.request_timeout_s = settings.gateway_request_timeout_s
    app.state.retry_after = str(settings.unavailable_retry_after_s)
    # Outermost: a shed request costs no body read, no token look-up, no metrics middleware.
    app.add_middleware(
        ShedLoad,
        paths=INGEST_PATHS,
        in_flight=InFlight(
            settings.gateway_max_in_flight,
            settings.gateway_max_bytes_in_flight,
            settings.gateway_max_in_flight_per_caller,
        ),
        unknown_length=BodyLimits.of(settings).of_path("/v1/events:batch"),
        retry_after_s=settings.unavailable_retry_after_s,
    )
    publisher_only = principal_dependency("system")

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=EventAccepted,
        responses=error_responses(409, 503),
        openapi_extra=_EVENT_BODY,
    )
    async def post_event(
        request: Request, principal: Principal = Depends(publisher_only)
    ) -> JSONResponse:
        raw = await _json_body(request)
        event = _checked([raw], principal, batch=False)[0]
        await _authorised(request, principal, [event], batch=False)
        accepted = await _accept(request, principal, [event], batch=False)
        return JSONResponse(_accepted_json(accepted[0]), status_code=202)

    @app.post(
        "/v1/events:batch",
        status_code=202,
        response_model=BatchAccepted,
        responses=error_responses(409, 503),
        openapi_extra=_BATCH_BODY,
    )
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
            detail = (
                (field, "not a batch field")
                if shown_field_name(field)
                else ("body", UNSHOWN_FIELD_PROBLEM)
            )
            raise ApiError(422, "the batch has unknown fields", [detail])
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
        await _authorised(request, principal, events, batch=True)
        accepted = await _accept(request, principal, events, batch=True)
        return JSONResponse({"accepted": [_accepted_json(a) for a in accepted]}, status_code=202)

    return app


async def _json_body(request: Request) -> Any:
    body = await request.body()  # at most its route's limit (carebus.adapters.http)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
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


async def _authorised(
    request: Request, principal: Principal, events: list[Event], *, batch: bool
) -> None:
    """403 for an event its agency may not send; 422 for an organisation it names that is not
    registered as the agency it claims (policy/authority.yaml, the organisation directory)."""
    authority: AuthorityPolicy = request.app.state.authority
    actor = Actor(principal.org_id, principal.agency, principal.role)
    for index, event in enumerate(events):
        refusal = authority.sender_refusal(actor, event.event_type, event.emergency is not None)
        if refusal is not None:
            key = subject_key(event.nin, request.app.state.secret)
            raise await _refusal(request, principal, event, index, refusal, key, batch=batch)
    claims = [
        (index, event_claims(event.payload, event.emergency)) for index, event in enumerate(events)
    ]
    directory: Directory = request.app.state.directory
    # One look-up for the whole batch, however many organisations its events name.
    registered = await directory.agencies(c.org_id for _, named in claims for c in named)
    problems = [
        (_field(index, problem, batch=batch), problem.problem)
        for index, named in claims
        for problem in claim_problems(named, registered)
    ]
    if problems:
        metrics.EVENTS_REJECTED.labels("invalid").inc()
        raise ApiError(
            422, "the event names an organisation that is not registered as claimed", problems
        )


async def _refusal(
    request: Request,
    principal: Principal,
    event: Event,
    index: int,
    refusal: Refusal,
    key: str | None,
    *,
    batch: bool,
) -> ApiError:
    """Audit and count the refusal; the error to answer (403, or a retraction's 422 or 409),
    naming the field at fault and the rule."""
    kind = {409: "conflict", 422: "invalid"}.get(refusal.status, "forbidden")
    metrics.EVENTS_REJECTED.labels(kind).inc()
    refusals: RefusalLog = request.app.state.refusals
    await refusals.refused(principal, f"event:{event.event_type}", refusal, key)
    return ApiError(
        refusal.status,
        f"{'not entitled' if refusal.status == 403 else 'refused'} (rule {refusal.rule_id}"
        " of the authority policy)",
        [(_field(index, Problem(refusal.field, refusal.message), batch=batch), refusal.message)],
    )


async def _accept(
    request: Request, principal: Principal, events: list[Event], *, batch: bool
) -> list[Accepted]:
    ingest: Ingest = request.app.state.ingest
    try:
        # The backstop for a dependency that hangs where no narrower time-out applies: the
        # transaction rolls back, so nothing answered 503 is recorded as accepted.
        async with asyncio.timeout(request.app.state.request_timeout_s):
            return await ingest.accept(
                events, Actor(principal.org_id, principal.agency, principal.role)
            )
    except NotEntitledError as refused:
        event = events[refused.index]
        raise await _refusal(
            request,
            principal,
            event,
            refused.index,
            refused.refusal,
            refused.subject_key,
            batch=batch,
        ) from refused
    except ConflictError as conflict:
        metrics.EVENTS_REJECTED.labels("conflict").inc()
        field = f"events[{conflict.index}].event_id" if batch else "event_id"
        raise ApiError(
            409,
            "this event_id was already accepted with other content",
            [(field, "already used for other content")],
        ) from conflict
    except OUTAGES as error:
        # The one list every service answers 503 for (carebus.adapters.outages): a database
        # shutting down, starting up or gone mid-transaction, a pool not acquired in time, a
        # broker that does not acknowledge.
        metrics.EVENTS_REJECTED.labels("unavailable").inc()
        raise ApiError(
            503,
            "the event could not be stored; retry later",
            headers={"Retry-After": request.app.state.retry_after},
        ) from error


def _accepted_json(accepted: Accepted) -> dict[str, str]:
    return {"event_id": accepted.event_id, "subject_key": accepted.subject_key}
