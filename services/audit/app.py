"""The audit service: an organisation reads its own deliveries; a privacy officer, a person's
disclosures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from carebus.auth import Principal, TokenCache
from carebus.config import Settings, get_settings
from carebus.db import create_pool
from carebus.http import ApiError, create_app, principal_dependency
from carebus.identity import subject_key, validate_nin
from carebus.telemetry import get_logger
from services.audit.paging import Cursor, PagingError, looks_like_cursor, parse_since
from services.audit.store import AuditStore

log = get_logger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# One text for "no such person" and "not your person", so the answer reveals neither.
NOT_RELATED = "this organisation has no data on the person"
SINCE_OR_CURSOR_PROBLEM = (
    "must be an RFC 3339 time with offset, e.g. 2026-11-23T08:15:00+01:00, or a `next` cursor"
)

Agency = Literal["dps", "municipality", "fastlege", "nav", "police", "housing"]

_DELIVERIES_DOC = f"""
The caller organisation's deliveries, oldest first (by the time the bus stored them, then by
`delivery_id`). Only `system` tokens may read them, and only their own organisation's.

- `since` (RFC 3339 with offset; URL-encode `+` as `%2B`): only deliveries stored at or after
  it. Without it the list starts at the first delivery.
- `limit`: 1 to {MAX_LIMIT}, default {DEFAULT_LIMIT}.
- `next` is an opaque cursor when more deliveries follow, else `null`. Pass it back unchanged as
  `cursor` (or in place of `since`) to get the page after it: the cursor names the last item by
  (stored time, delivery_id), so paging never repeats or skips an item, even when several
  deliveries share a time or deliveries are stored while you page. Keep `since` and `limit` as
  they were, or change `limit` only.

Each item has exactly the keys `delivery_id`, `event_id`, `event_type`, `occurred_at`,
`subject`, `basis`, `categories`, `payload` and, for emergency disclosures, `emergency`.
"""

_DISCLOSURES_DOC = """
Every routing decision about one person, ordered by `decided_at`: who received what (`basis`,
`fields`) and what was withheld from whom (`reason`). Events that had no candidate recipient at
all are recorded but not listed, since they name no recipient.

Only `privacy_officer` tokens may ask, and only about a person their organisation has data on:
it published an event about the person, was a candidate recipient of one (delivered or
withheld), is or was in the person's care team, or recorded a consent or care-team change for
them. Otherwise the answer is `403` with the same message whether or not carebus knows the
person at all. The nin travels in the body only, never in the URL.
"""


# The body is read by hand, like the gateway's, so malformed JSON is 400 whatever the
# Content-Type, and every other problem is 422 naming `nin`.
_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "nin": {
                            "type": "string",
                            "description": "National identity number (fødselsnummer or "
                            "D-nummer) of the person.",
                        }
                    },
                    "required": ["nin"],
                    "additionalProperties": False,
                }
            }
        },
    }
}
MAX_QUERY_BYTES = 4096


class Organisation(BaseModel):
    agency: Agency
    org_id: str


class Subject(BaseModel):
    nin: str


class EmergencyNotice(BaseModel):
    justification: str
    accountable: str


class Delivery(BaseModel):
    delivery_id: str
    event_id: str
    event_type: str
    occurred_at: datetime
    subject: Subject
    basis: Literal["statutory", "presumed", "consent", "emergency"]
    categories: list[str]
    payload: dict[str, Any]
    emergency: EmergencyNotice | None = Field(
        default=None, description="Present only for emergency disclosures."
    )


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next: str | None = Field(description="Cursor for the next page; null when none follows.")


class Disclosure(BaseModel):
    event_id: str
    event_type: str
    recipient: Organisation
    decision: Literal["delivered", "withheld"]
    reason: str | None = Field(default=None, description="Only when withheld.")
    basis: str | None = Field(default=None, description="Only when delivered.")
    fields: list[str] | None = Field(default=None, description="Only when delivered.")
    rule_id: str | None
    policy_version: str
    decided_at: datetime


class Disclosures(BaseModel):
    items: list[Disclosure]


def build_app(settings: Settings | None = None) -> FastAPI:
    """The audit app wired to the real database."""
    settings = settings or get_settings()
    secret = settings.subject_key_secret.get_secret_value()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=10)
        app.state.tokens = TokenCache(pool)
        app.state.store = AuditStore(pool)
        try:
            yield
        finally:
            await pool.close()

    app = create_app("audit", title="carebus audit", lifespan=lifespan)
    system_only = principal_dependency("system")
    privacy_officer_only = principal_dependency("privacy_officer")

    @app.get("/v1/deliveries", response_model=DeliveryPage, description=_DELIVERIES_DOC)
    async def get_deliveries(
        request: Request,
        since: str | None = Query(default=None, description="RFC 3339 time with offset."),
        cursor: str | None = Query(default=None, description="`next` of the previous page."),
        limit: int = Query(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        principal: Principal = Depends(system_only),
    ) -> Response:
        start, after = _paging(since, cursor)
        store: AuditStore = request.app.state.store
        page = await store.deliveries(principal.org_id, since=start, after=after, limit=limit)
        # The bodies are stored as JSON already; they are passed through, not re-encoded.
        next_cursor = json.dumps(page.next.encode() if page.next else None)
        content = '{"items":[' + ",".join(page.bodies) + '],"next":' + next_cursor + "}"
        return Response(content, media_type="application/json")

    @app.post(
        "/v1/disclosures/query",
        response_model=Disclosures,
        description=_DISCLOSURES_DOC,
        openapi_extra=_QUERY_BODY,
    )
    async def query_disclosures(
        request: Request, principal: Principal = Depends(privacy_officer_only)
    ) -> JSONResponse:
        nin = _nin(await request.body())
        key = subject_key(nin, secret)
        store: AuditStore = request.app.state.store
        if not await store.related(principal.org_id, key):
            log.info("disclosures.refused", org_id=principal.org_id, subject_key=key)
            raise ApiError(403, NOT_RELATED, [("nin", "no relation to this organisation")])
        items = await store.disclosures(key)
        log.info("disclosures.queried", org_id=principal.org_id, subject_key=key, items=len(items))
        return JSONResponse({"items": items})

    return app


def _paging(since: str | None, cursor: str | None) -> tuple[datetime | None, Cursor | None]:
    """The `since` bound and the cursor to continue after; 422 naming the parameter at fault."""
    cursor_field = "cursor"
    if since is not None and cursor is None and looks_like_cursor(since):
        # `next` passed back in place of `since`.
        since, cursor, cursor_field = None, since, "since"
    try:
        start = parse_since(since) if since is not None else None
    except PagingError as error:
        raise ApiError(422, "`since` is invalid", [("since", error.problem)]) from None
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except PagingError as error:
        problem = error.problem if cursor_field == "cursor" else SINCE_OR_CURSOR_PROBLEM
        raise ApiError(422, f"`{cursor_field}` is invalid", [(cursor_field, problem)]) from None
    return start, after


def _nin(body: bytes) -> str:
    """The valid nin of a query body; 400 for malformed JSON, 422 naming the field at fault."""
    if len(body) > MAX_QUERY_BYTES:
        raise ApiError(413, "the request body is too large")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", [("body", "malformed JSON")]) from None
    if not isinstance(raw, dict):
        raise ApiError(422, "the body must be an object", [("body", 'must be {"nin": ...}')])
    unknown = sorted(set(raw) - {"nin"})
    if unknown:
        raise ApiError(422, "the query has unknown fields", [(unknown[0], "not a query field")])
    if "nin" not in raw:
        raise ApiError(422, "the nin is missing", [("nin", "is required")])
    problem = validate_nin(raw["nin"])
    if problem is not None:
        raise ApiError(422, "the nin is invalid", [("nin", problem)])
    nin: str = raw["nin"]
    return nin
