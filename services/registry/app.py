"""The registry: the system of record for organisations, tokens, consents, care teams and webhooks.

Consent and care-team changes are appended to their history in PostgreSQL and streamed onto
care.events.v1 (key: the subject key) before the registry answers `201`, so every event
accepted after that answer is ordered after the change (see `services.registry.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import asyncpg
from fastapi import Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from carebus import webhook_registrations
from carebus.auth import Principal, TokenCache, create_token
from carebus.codec import Codec
from carebus.config import Settings, get_settings
from carebus.db import create_pool
from carebus.events import ORG_ID_PROBLEM, Problem, rfc3339
from carebus.http import ApiError, create_app, principal_dependency
from carebus.publisher import Publisher
from carebus.telemetry import get_logger
from services.registry.changes import (
    CARE_TEAM_ROLES,
    CATEGORIES,
    CONSENT_STATUSES,
    MEMBERSHIP_STATUSES,
    parse_care_team_change,
    parse_consent,
)
from services.registry.history import ChangeNotPublishedError, History, OrganisationMismatchError
from services.registry.outbox import Outbox

log = get_logger(__name__)

Agency = Literal["dps", "municipality", "fastlege", "nav", "police", "housing"]
Role = Literal["system", "coordinator", "privacy_officer", "admin"]

# Who may record consents and care-team changes: agency systems, coordinators and registry
# administrators. Not the privacy officer: that role audits the disclosures these records
# permit, and keeping it read-only separates recording a basis from auditing its use.
CHANGE_ROLES: Final = ("system", "coordinator", "admin")
# A system registers its own organisation's webhook; an admin may register any organisation's.
WEBHOOK_ROLES: Final = ("system", "admin")
MAX_BODY_BYTES: Final = 64 * 1024
RETRY_AFTER_S: Final = "5"
_ORG_ID: Final = re.compile(r"[0-9]{9}")

_AGENCIES_SCHEMA: Final = {
    "type": "string",
    "enum": ["dps", "municipality", "fastlege", "nav", "police", "housing"],
}
_TIME_SCHEMA: Final = {"type": "string", "format": "date-time"}
_ORG_SCHEMA: Final = {"type": "string", "pattern": "^[0-9]{9}$"}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


_CONSENT_BODY: Final = _body(
    {
        "type": "object",
        "required": ["nin", "recipient", "categories", "status", "valid_from", "recorded_by"],
        "additionalProperties": False,
        "properties": {
            "nin": {"type": "string", "description": "fødselsnummer or D-nummer, 11 digits"},
            "recipient": {
                "type": "object",
                "required": ["agency"],
                "properties": {"agency": _AGENCIES_SCHEMA, "org_id": _ORG_SCHEMA},
            },
            "categories": {"type": "array", "items": {"type": "string", "enum": list(CATEGORIES)}},
            "status": {"type": "string", "enum": list(CONSENT_STATUSES)},
            "valid_from": _TIME_SCHEMA,
            "valid_to": _TIME_SCHEMA,
            "recorded_by": {"type": "string", "maxLength": 200},
        },
    },
    "A consent, its withdrawal or an objection; without recipient.org_id it covers every"
    " organisation of the agency.",
)
_CARE_TEAM_BODY: Final = _body(
    {
        "type": "object",
        "required": ["nin", "agency", "org_id", "role", "status"],
        "additionalProperties": False,
        "properties": {
            "nin": {"type": "string"},
            "agency": _AGENCIES_SCHEMA,
            "org_id": _ORG_SCHEMA,
            "role": {"type": "string", "enum": list(CARE_TEAM_ROLES)},
            "status": {"type": "string", "enum": list(MEMBERSHIP_STATUSES)},
        },
    },
    "An organisation joins (member) or leaves (removed) a person's care team.",
)
_WEBHOOK_BODY: Final = _body(
    {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "org_id": {**_ORG_SCHEMA, "description": "admin only; default: the caller's"},
        },
    },
    "Where the organisation receives its deliveries; each call issues a new signing secret.",
)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agency: Agency
    org_id: str = Field(pattern=r"^[0-9]{9}$", description="9-digit organisation number")
    role: Role
    label: str = Field(default="", max_length=200)


class TokenCreated(BaseModel):
    token: str
    agency: Agency
    org_id: str
    role: Role


class ConsentRecorded(BaseModel):
    consent_id: str


class CareTeamChangeRecorded(BaseModel):
    change_id: str


class WebhookRegistered(BaseModel):
    org_id: str
    url: str
    secret: str = Field(description="Signs every delivery (X-Carebus-Signature); shown once.")


class WebhookShown(BaseModel):
    org_id: str
    url: str
    created_at: str
    updated_at: str


def build_app(settings: Settings | None = None) -> FastAPI:
    """The registry app wired to the real pool, producer, codec and outbox relay."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=10)
        publisher = Publisher(settings, client_id="carebus-registry")
        outbox = Outbox(pool, publisher)
        secret = settings.subject_key_secret.get_secret_value().encode()
        app.state.pool = pool
        app.state.tokens = TokenCache(pool)
        app.state.history = History(pool, outbox, Codec.default(), secret)
        relay = asyncio.create_task(outbox.run_relay(settings.outbox_relay_interval_s))
        try:
            yield
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            publisher.close()
            await pool.close()

    app = create_app("registry", title="carebus registry", lifespan=lifespan)
    admin_only = principal_dependency("admin")
    recorder = principal_dependency(*CHANGE_ROLES)
    webhook_owner = principal_dependency(*WEBHOOK_ROLES)

    @app.post("/v1/tokens", status_code=201, response_model=TokenCreated)
    async def post_token(
        body: TokenRequest, request: Request, principal: Principal = Depends(admin_only)
    ) -> TokenCreated:
        """Issue a token for an organisation and role; the token is shown once, stored hashed."""
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                token = await create_token(
                    conn, agency=body.agency, org_id=body.org_id, role=body.role, label=body.label
                )
            except ValueError as error:
                raise ApiError(422, str(error), [("org_id", str(error))]) from error
        log.info("token_issued", org_id=body.org_id, role=body.role, by_org=principal.org_id)
        return TokenCreated(token=token, agency=body.agency, org_id=body.org_id, role=body.role)

    @app.post(
        "/v1/consents",
        status_code=201,
        response_model=ConsentRecorded,
        openapi_extra=_CONSENT_BODY,
    )
    async def post_consent(
        request: Request, principal: Principal = Depends(recorder)
    ) -> ConsentRecorded:
        """Record a consent, withdrawal or objection; 201 once it is on the person's stream."""
        consent, problems = parse_consent(await _json_body(request))
        if consent is None:
            raise _invalid("the consent is invalid", problems)
        history: History = request.app.state.history
        async with _recording():
            consent_id = await history.record_consent(consent, recorded_by_org=principal.org_id)
        return ConsentRecorded(consent_id=consent_id)

    @app.post(
        "/v1/care-teams",
        status_code=201,
        response_model=CareTeamChangeRecorded,
        openapi_extra=_CARE_TEAM_BODY,
    )
    async def post_care_team_change(
        request: Request, principal: Principal = Depends(recorder)
    ) -> CareTeamChangeRecorded:
        """Add an organisation to or remove it from a person's care team; 201 once streamed."""
        change, problems = parse_care_team_change(await _json_body(request))
        if change is None:
            raise _invalid("the care-team change is invalid", problems)
        history: History = request.app.state.history
        async with _recording():
            change_id = await history.record_care_team_change(
                change, recorded_by_org=principal.org_id
            )
        return CareTeamChangeRecorded(change_id=change_id)

    @app.put("/v1/webhooks", response_model=WebhookRegistered, openapi_extra=_WEBHOOK_BODY)
    async def put_webhook(
        request: Request, principal: Principal = Depends(webhook_owner)
    ) -> WebhookRegistered:
        """Register the organisation's webhook URL with a new signing secret (shown once)."""
        raw = await _json_body(request)
        if not isinstance(raw, dict):
            raise _invalid("the webhook is invalid", [Problem("body", "must be a JSON object")])
        problems = [
            Problem(str(name), "not a field of a webhook")
            for name in raw
            if name not in ("url", "org_id")
        ]
        url = raw.get("url")
        url_problem = "is required" if url is None else webhook_registrations.url_problem(url)
        if url_problem is not None:
            problems.append(Problem("url", url_problem))
        if problems:
            raise _invalid("the webhook is invalid", problems)
        assert isinstance(url, str)
        org_id = _webhook_org(principal, raw.get("org_id"))
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                webhook = await webhook_registrations.set_webhook(conn, org_id, url)
            except webhook_registrations.UnknownOrganisationError as error:
                raise ApiError(
                    422, str(error), [("org_id", "is not a registered organisation")]
                ) from error
        log.info("webhook_registered", org_id=org_id, by_org=principal.org_id)
        return WebhookRegistered(org_id=webhook.org_id, url=webhook.url, secret=webhook.secret)

    @app.get("/v1/webhooks", response_model=WebhookShown)
    async def get_webhook(
        request: Request,
        org_id: str | None = Query(default=None, description="admin only; default: the caller's"),
        principal: Principal = Depends(webhook_owner),
    ) -> WebhookShown:
        """The organisation's webhook URL (never its secret); 404 if none is registered."""
        org = _webhook_org(principal, org_id)
        webhook = await webhook_registrations.get_webhook(request.app.state.pool, org)
        if webhook is None:
            raise ApiError(404, f"organisation {org} has no webhook")
        return WebhookShown(
            org_id=webhook.org_id,
            url=webhook.url,
            created_at=rfc3339(webhook.created_at),
            updated_at=rfc3339(webhook.updated_at),
        )

    @app.delete("/v1/webhooks", status_code=204)
    async def delete_webhook(
        request: Request,
        org_id: str | None = Query(default=None, description="admin only; default: the caller's"),
        principal: Principal = Depends(webhook_owner),
    ) -> Response:
        """Stop webhook delivery for the organisation; deleting a missing webhook is harmless."""
        org = _webhook_org(principal, org_id)
        if await webhook_registrations.delete_webhook(request.app.state.pool, org):
            log.info("webhook_deleted", org_id=org, by_org=principal.org_id)
        return Response(status_code=204)

    return app


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "the body is not valid JSON", [("body", "malformed JSON")]) from error


def _invalid(message: str, problems: Sequence[Problem]) -> ApiError:
    return ApiError(422, message, [(p.field, p.problem) for p in problems])


def _webhook_org(principal: Principal, requested: object) -> str:
    """The organisation a webhook call is about: the caller's, or any for an admin."""
    if requested is None:
        return principal.org_id
    if not isinstance(requested, str) or not _ORG_ID.fullmatch(requested):
        raise ApiError(422, "org_id is invalid", [("org_id", ORG_ID_PROBLEM)])
    if requested != principal.org_id and principal.role != "admin":
        raise ApiError(
            403,
            "a system token manages only its own organisation's webhook",
            [("org_id", "must be the token's organisation")],
        )
    return requested


@asynccontextmanager
async def _recording() -> AsyncIterator[None]:
    """Map the history's failures to DESIGN's answers."""
    try:
        yield
    except OrganisationMismatchError as error:
        raise ApiError(
            422,
            "an organisation is registered under another agency",
            [(error.field, error.problem)],
        ) from error
    except ChangeNotPublishedError as error:
        # Committed, so the relay publishes it; repeating the request is harmless (a second,
        # identical history entry) and its 201 then guarantees the ordering.
        raise ApiError(
            503,
            f"change {error.change_id} is recorded but the broker has not acknowledged it yet;"
            " it will be published when the broker is back. Repeat the request to be sure"
            " later events are ordered after it.",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from error
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as error:
        raise ApiError(
            503,
            "the change could not be recorded; retry later",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from error
