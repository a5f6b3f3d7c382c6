"""The registry: the system of record for organisations, tokens, consents, care teams,
the operator's registers and webhooks.

Consent, care-team and register changes are judged by the authority policy
(`policy/authority.yaml`), appended to their history in PostgreSQL and streamed onto
care.events.v1 (key: the subject key) before the registry answers `201`, so every event
accepted after that answer is ordered after the change (see `services.registry.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Literal, TypeVar

import asyncpg
from fastapi import Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field

from carebus.adapters import directory, webhook_registrations
from carebus.adapters.auth import Principal, TokenCache, create_token, revoke_token
from carebus.adapters.db import create_pool
from carebus.adapters.http import ApiError, create_app, error_responses, principal_dependency
from carebus.adapters.publisher import Publisher
from carebus.adapters.refusals import RefusalLog
from carebus.adapters.resources import pool_answers
from carebus.adapters.webhook_registrations import SecretBox
from carebus.domain.authority import Actor, NotEntitledError, Refusal
from carebus.domain.events import ORG_ID_PROBLEM, rfc3339
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import get_logger
from carebus.wire.codec import Codec
from carebus.wire.outbound import Format
from carebus.wire.policy_files import load_authority
from carebus.wire.requests import RequestBody, parse, request_body
from carebus.wire.sealing import KeyWrap
from services.registry import erasure, places
from services.registry.history import (
    ChangeNotPublishedError,
    ConsentSupersededError,
    History,
    OrganisationMismatchError,
    UnknownConsentError,
)
from services.registry.operator import OperatorActions
from services.registry.outbox import Outbox
from services.registry.requests import (
    CareTeamChangeRequest,
    CareTeamContactRequest,
    ConsentRequest,
    ErasureRequest,
    GpListEntry,
    HomeMunicipalityEntry,
    HousingPlaceEntry,
    OrganisationEntry,
    Realm,
    Role,
    TokenRequest,
    WebhookRequest,
)

log = get_logger(__name__)

# Who may record care-team changes: agency systems and coordinators, for persons their
# organisation has a relation to (policy/authority.yaml). Not the privacy officer: that role
# audits the disclosures these records permit, and keeping it read-only separates recording a
# basis from auditing its use. Not an agency's admin (its own tokens and webhook only), not
# the operator (not a party to anyone's care).
CHANGE_ROLES: Final = ("system", "coordinator")
# Consents also from the patient, about themself (an objection, their own consent).
CONSENT_ROLES: Final = (*CHANGE_ROLES, "patient")
# A system or an agency's admin manages its own organisation's webhook; the operator any.
WEBHOOK_ROLES: Final = ("system", "admin", "operator")
# An agency's admin issues tokens for its own organisation; the operator for any.
TOKEN_ROLES: Final = ("admin", "operator")
# Only the operator records housing places; an agency's admin is let through to be refused with
# the rule (housing_place.operator, audited) rather than a bare 403.
PLACE_ROLES: Final = ("admin", "operator")
RETRY_AFTER_S: Final = "5"
# The contact roles only one agency's staff hold: the DPS's forløpskoordinator, the GP.
_ROLE_AGENCY: Final = {"pathway_coordinator": "dps", "gp": "fastlege"}
_ORG_ID: Final = re.compile(r"[0-9]{9}")

Body = TypeVar("Body", bound=RequestBody)


class TokenCreated(BaseModel):
    token: str
    agency: Realm
    org_id: str
    role: Role


class OrganisationShown(BaseModel):
    """A directory entry as stored: organisations that joined by their first token have no
    name yet (""), which a request to register one may not send."""

    org_id: str
    agency: str
    name: str
    her_id: str | None = None
    municipality_number: str | None = None


class Organisations(BaseModel):
    items: list[OrganisationShown]


class ChangeRecorded(BaseModel):
    change_id: str


class ContactRecorded(BaseModel):
    contact_id: str


class HousingPlaceRecorded(BaseModel):
    place_key: str = Field(
        description="the place's pseudonym: place alerts carry it as subject_key place:<key>"
    )
    owner_org: str
    municipality_org: str


class ErasureRecorded(BaseModel):
    erasure_id: str
    request_ref: str
    erased_at: str = Field(description="RFC 3339, UTC")
    keys_erased: int = Field(
        description="data key versions destroyed: 1, or 0 when carebus held no key for the person"
    )


class ConsentRecorded(BaseModel):
    consent_id: str
    state: Literal["effective", "pending", "confirmed"] = Field(
        description="effective: on the person's stream now; pending: waits for a health"
        " organisation with a relation that is not its recipient, or the patient, to confirm"
        " it (POST /v1/consents/{consent_id}/confirm)"
    )
    pending_reason: str | None = Field(
        default=None, description="The rule of policy/authority.yaml that made it pending."
    )


class CareTeamChangeRecorded(BaseModel):
    change_id: str


class WebhookRegistered(BaseModel):
    org_id: str
    url: str
    format: Format
    secret: str = Field(
        description="Signs every delivery (X-Carebus-Signature); shown once. The secret it"
        " replaces keeps signing beside it for the grace period (CAREBUS_WEBHOOK_SECRET_GRACE_S)."
    )


class WebhookShown(BaseModel):
    org_id: str
    url: str
    format: Format
    created_at: str
    updated_at: str
    previous_secret_valid_until: str | None = Field(
        default=None,
        description="Until when the secret replaced by the last registration still signs"
        " deliveries beside the current one; null when only the current one does.",
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    """The registry app wired to the real pool, producer, codec and outbox relay."""
    settings = settings or get_settings()
    authority = load_authority()
    # It seals webhook secrets: a deployment without its key refuses to start, not to register.
    SecretBox.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=10)
        publisher = Publisher.connect(settings, "carebus-registry")
        codec = Codec.default()
        outbox = Outbox(pool, publisher)
        secret = settings.subject_key_secret.get_secret_value().encode()
        app.state.pool = pool
        app.state.readiness.add("database", pool_answers(pool))
        app.state.readiness.add("broker", publisher.answers)
        app.state.tokens = TokenCache(pool)
        app.state.history = History(
            pool, outbox, codec, secret, authority, KeyWrap.from_settings(settings)
        )
        app.state.refusals = RefusalLog(publisher, codec, authority.version)
        app.state.operator = OperatorActions(pool, publisher, codec)
        app.state.secret = secret
        relay = asyncio.create_task(outbox.run_relay(settings.outbox_relay_interval_s))
        try:
            yield
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            await asyncio.to_thread(publisher.close)
            await pool.close()

    app = create_app("registry", title="carebus registry", lifespan=lifespan, settings=settings)
    token_issuer = principal_dependency(*TOKEN_ROLES)
    operator_only = principal_dependency("operator")
    anyone = principal_dependency()
    recorder = principal_dependency(*CHANGE_ROLES)
    consent_recorder = principal_dependency(*CONSENT_ROLES)
    webhook_owner = principal_dependency(*WEBHOOK_ROLES)
    place_recorder = principal_dependency(*PLACE_ROLES)

    @app.post("/v1/tokens", status_code=201, response_model=TokenCreated)
    async def post_token(
        body: TokenRequest, request: Request, principal: Principal = Depends(token_issuer)
    ) -> TokenCreated:
        """Issue a token; shown once, stored hashed. An agency's admin issues tokens for its own
        organisation only; the operator for any organisation, and patient tokens bound to a nin."""
        if not principal.is_operator and (body.org_id, body.agency) != (
            principal.org_id,
            principal.agency,
        ):
            raise await _refused(
                request,
                principal,
                "token",
                Refusal(
                    "operator.realm",
                    "org_id",
                    "an organisation's admin issues tokens for its own organisation only",
                ),
            )
        history: History = request.app.state.history
        key = None if body.nin is None else history.subject_key(body.nin)
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                token = await create_token(
                    conn,
                    agency=body.agency,
                    org_id=body.org_id,
                    role=body.role,
                    label=body.label,
                    subject_key=key,
                )
            except ValueError as error:
                raise ApiError(422, str(error), [("role", str(error))]) from error
        log.info("token_issued", org_id=body.org_id, role=body.role, by_org=principal.org_id)
        operator: OperatorActions = request.app.state.operator
        await operator.touched(
            principal, "token_issued", body.org_id, body.agency, {"role": body.role}, key
        )
        return TokenCreated(token=token, agency=body.agency, org_id=body.org_id, role=body.role)

    @app.delete("/v1/tokens/{token_id}", status_code=204, responses=error_responses(404))
    async def delete_token(
        token_id: uuid.UUID, request: Request, principal: Principal = Depends(anyone)
    ) -> Response:
        """Revoke a token: every service refuses it within 5 s. Any token may revoke itself (a
        system that finds its token leaked); an organisation's admin revokes its organisation's
        tokens; the operator any token. 404 for a token the caller may not see, so another
        organisation's token ids are never confirmed. Revoking twice is harmless (204)."""
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT t.org_id, o.agency, t.role, t.subject_key FROM api_tokens t"
                " JOIN organisations o USING (org_id) WHERE t.token_id = $1",
                token_id,
            )
            if row is None or not (
                principal.token_id == token_id
                or principal.is_operator
                or (principal.role == "admin" and principal.org_id == row["org_id"])
            ):
                raise ApiError(404, "no such token")
            revoked = await revoke_token(conn, token_id)
        if revoked:
            log.info(
                "token_revoked", org_id=row["org_id"], role=row["role"], by_org=principal.org_id
            )
            operator: OperatorActions = request.app.state.operator
            await operator.touched(
                principal,
                "token_revoked",
                row["org_id"],
                row["agency"],
                {"role": row["role"]},
                row["subject_key"],
            )
        return Response(status_code=204)

    @app.get("/v1/organisations", response_model=Organisations)
    async def get_organisations(
        request: Request,
        agency: Realm | None = Query(default=None, description="only this agency's"),
        principal: Principal = Depends(anyone),
    ) -> Organisations:
        """The organisation directory (any token): whom events and requests may name."""
        found = await directory.list_organisations(request.app.state.pool, agency)
        return Organisations(items=[OrganisationShown(**o.to_json()) for o in found])  # type: ignore[arg-type]

    @app.post("/v1/organisations", status_code=201, response_model=OrganisationEntry)
    async def post_organisation(
        body: OrganisationEntry, request: Request, principal: Principal = Depends(operator_only)
    ) -> OrganisationEntry:
        """Register an organisation or update its name, HER-id and kommunenummer (the operator
        only)."""
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                entry = await directory.add_organisation(
                    conn,
                    agency=body.agency,
                    org_id=body.org_id,
                    name=body.name,
                    her_id=body.her_id,
                    municipality_number=body.municipality_number,
                )
            except ValueError as error:
                raise ApiError(422, str(error), [("org_id", str(error))]) from error
        operator: OperatorActions = request.app.state.operator
        await operator.touched(principal, "organisation_registered", entry.org_id, entry.agency)
        return OrganisationEntry(**entry.to_json())  # type: ignore[arg-type]

    @app.post(
        "/v1/population-register",
        status_code=201,
        response_model=ChangeRecorded,
        responses=error_responses(503),
    )
    async def post_home_municipality(
        body: HomeMunicipalityEntry,
        request: Request,
        principal: Principal = Depends(operator_only),
    ) -> ChangeRecorded:
        """Set a person's home municipality (a stand-in for the national population register;
        the operator only). It outranks the home municipality a DPS admission states."""
        return await _register(
            request,
            principal,
            body.nin,
            "home_municipality",
            "municipality",
            body.home_municipality_org,
            "home_municipality_org",
        )

    @app.post(
        "/v1/gp-list",
        status_code=201,
        response_model=ChangeRecorded,
        responses=error_responses(503),
    )
    async def post_gp(
        body: GpListEntry, request: Request, principal: Principal = Depends(operator_only)
    ) -> ChangeRecorded:
        """Set a person's GP (a stand-in for the national GP register; the operator only). The
        GP then has a relation to the person; it is not added to the care team."""
        return await _register(
            request, principal, body.nin, "gp", "fastlege", body.org_id, "org_id"
        )

    @app.post(
        "/v1/housing-places",
        status_code=201,
        response_model=HousingPlaceRecorded,
        responses=error_responses(403, 422),
    )
    async def post_housing_place(
        body: HousingPlaceEntry, request: Request, principal: Principal = Depends(place_recorder)
    ) -> HousingPlaceRecorded:
        """Record a housing site (or a unit outside any site) with the housing organisation
        that owns or runs it and its municipality: both get the alerts about patterns at the
        place (policy/sla.yaml, place.repeated_incidents). Only the operator records a place
        (its first registration, a change of owner or municipality): whoever is recorded gets
        the place's alerts. A housing admin is refused 403 (rule housing_place.operator,
        audited, nothing written). Only the place's key is kept, never the site id; the
        response's `place_key` (its first 12 hex characters name the place in the alerts'
        summaries) lets the owner map the alerts to its site."""
        if not principal.is_operator:
            raise await _refused(request, principal, "housing_place", places.OPERATOR_ONLY)
        try:
            recorded = await places.record(
                request.app.state.pool,
                request.app.state.secret,
                body.place(),
                body.owner_org,
                body.municipality_org,
                principal.org_id,
            )
        except places.UnknownOrganisationError as error:
            raise ApiError(
                422, "the housing place is invalid", [(error.field, error.problem)]
            ) from error
        # The privacy officers of the organisations named, and of those a change replaced.
        touched = [(body.owner_org, "housing"), (body.municipality_org, "municipality")]
        if recorded.previous is not None:
            touched += [(recorded.previous[0], "housing"), (recorded.previous[1], "municipality")]
        operator: OperatorActions = request.app.state.operator
        for org_id, agency in dict.fromkeys(touched):
            await operator.touched(principal, "housing_place_recorded", org_id, agency)
        return HousingPlaceRecorded(
            place_key=recorded.place_key,
            owner_org=recorded.owner_org,
            municipality_org=recorded.municipality_org,
        )

    # Consents, care-team changes and webhooks read their own bodies (`_body`): after the
    # token is checked, whatever the Content-Type, within the size limit every route has
    # (carebus.adapters.http); their OpenAPI request bodies come from the same models.
    @app.post(
        "/v1/consents",
        status_code=201,
        response_model=ConsentRecorded,
        responses=error_responses(503),
        openapi_extra=request_body(ConsentRequest),
    )
    async def post_consent(
        request: Request, principal: Principal = Depends(consent_recorder)
    ) -> ConsentRecorded:
        """Record a consent, withdrawal or objection; 201 once it is on the person's stream, or
        once stored as `pending` when it widens access and needs a confirmation."""
        consent = (await _body(request, ConsentRequest, "the consent is invalid")).consent()
        history: History = request.app.state.history
        if (
            principal.role == "patient"
            and history.subject_key(consent.nin) != principal.subject_key
        ):
            raise ApiError(
                403,
                "a patient token speaks only for its own person",
                [("nin", "is not the token's person")],
            )
        async with _recording(request, principal, "consent"):
            recorded = await history.record_consent(consent, _actor(principal))
        return ConsentRecorded(
            consent_id=recorded.consent_id,
            state=recorded.state,  # type: ignore[arg-type]
            pending_reason=recorded.pending_reason,
        )

    @app.post(
        "/v1/consents/{consent_id}/confirm",
        response_model=ConsentRecorded,
        responses=error_responses(404, 409, 503),
    )
    async def confirm_consent(
        consent_id: str, request: Request, principal: Principal = Depends(consent_recorder)
    ) -> ConsentRecorded:
        """Confirm a pending consent: a health organisation with a relation to the person that
        is not the consent's recipient, or the patient. Confirming again is harmless."""
        try:
            identity = uuid.UUID(consent_id)
        except ValueError:
            raise ApiError(404, "no such consent") from None
        history: History = request.app.state.history
        async with _recording(request, principal, "consent_confirmation"):
            try:
                recorded = await history.confirm_consent(
                    identity,
                    _actor(principal),
                    principal.subject_key if principal.role == "patient" else None,
                )
            except UnknownConsentError:
                raise ApiError(404, "no such consent") from None
            except ConsentSupersededError:
                raise ApiError(
                    409,
                    "a withdrawal or objection for this recipient was recorded after the consent;"
                    " it can no longer be confirmed (record a new consent if it still holds)",
                    [("consent_id", "superseded by a later restriction")],
                ) from None
        return ConsentRecorded(consent_id=recorded.consent_id, state=recorded.state)  # type: ignore[arg-type]

    @app.post(
        "/v1/care-teams",
        status_code=201,
        response_model=CareTeamChangeRecorded,
        responses=error_responses(503),
        openapi_extra=request_body(CareTeamChangeRequest),
    )
    async def post_care_team_change(
        request: Request, principal: Principal = Depends(recorder)
    ) -> CareTeamChangeRecorded:
        """Add an organisation to or remove it from a person's care team; 201 once streamed."""
        body = await _body(request, CareTeamChangeRequest, "the care-team change is invalid")
        change = body.change()
        history: History = request.app.state.history
        async with _recording(request, principal, "care_team_change"):
            change_id = await history.record_care_team_change(change, _actor(principal))
        return CareTeamChangeRecorded(change_id=change_id)

    @app.post(
        "/v1/care-teams/contacts",
        status_code=201,
        response_model=ContactRecorded,
        responses=error_responses(503),
        openapi_extra=request_body(CareTeamContactRequest),
    )
    async def post_contact(
        request: Request, principal: Principal = Depends(recorder)
    ) -> ContactRecorded:
        """Name a member of the caller's own staff accountable for a person, or the deputy
        (issue 17, item 4): only while the caller is in the person's care team or is the GP on
        the GP list (`contact.own_staff`); anyone else 403, audited, nothing written."""
        body = await _body(request, CareTeamContactRequest, "the contact person is invalid")
        wrong_agency = _ROLE_AGENCY.get(body.role)
        if wrong_agency is not None and principal.agency != wrong_agency:
            raise ApiError(
                422,
                "the contact person is invalid",
                [("role", f"{body.role} is a role of a {wrong_agency} only")],
            )
        history: History = request.app.state.history
        async with _recording(request, principal, "contact"):
            contact_id = await history.record_contact(body.contact(), _actor(principal))
        return ContactRecorded(contact_id=contact_id)

    @app.post(
        "/v1/erasures",
        status_code=201,
        response_model=ErasureRecorded,
        openapi_extra=request_body(ErasureRequest),
    )
    async def post_erasure(
        request: Request, principal: Principal = Depends(anyone)
    ) -> ErasureRecorded:
        """Erase a person on a lawful request (the operator's data protection officer only):
        the person's data key is destroyed, so every copy of their nin and free text becomes
        unreadable; counts and the disclosure log stay. Anyone else: 403, audited."""
        body = await _body(request, ErasureRequest, "the erasure is invalid")
        history: History = request.app.state.history
        key = history.subject_key(body.nin)
        if not _may_erase(principal):
            raise await _refused(
                request,
                principal,
                "erasure",
                Refusal(
                    "erasure.data_protection_officer",
                    "nin",
                    "only the operator's data protection officer may erase a person",
                ),
                key,
            )
        done = await erasure.erase(request.app.state.pool, principal, key, body.request_ref)
        log.info(
            "person_erased",
            erasure_id=str(done.erasure_id),
            subject_key=key,
            keys_erased=done.keys_erased,
        )
        return ErasureRecorded(
            erasure_id=str(done.erasure_id),
            request_ref=done.request_ref,
            erased_at=rfc3339(done.erased_at),
            keys_erased=done.keys_erased,
        )

    @app.put(
        "/v1/webhooks",
        response_model=WebhookRegistered,
        openapi_extra=request_body(WebhookRequest),
    )
    async def put_webhook(
        request: Request, principal: Principal = Depends(webhook_owner)
    ) -> WebhookRegistered:
        """Register the organisation's webhook URL with a new signing secret (shown once); the
        secret it replaces keeps signing beside it for the grace period. Outside local
        development the URL must be https and must not name a private or metadata address."""
        body = await _body(request, WebhookRequest, "the webhook is invalid")
        org_id = await _webhook_org(request, principal, body.org_id)
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                chosen = None if body.format is None else Format(body.format)
                webhook = await webhook_registrations.set_webhook(
                    conn, org_id, body.url, settings, chosen
                )
            except webhook_registrations.UnknownOrganisationError as error:
                raise ApiError(
                    422, str(error), [("org_id", "is not a registered organisation")]
                ) from error
            except ValueError as error:  # the deployment's rules for targets, the agency's formats
                field, _, problem = str(error).partition(" ")
                field = field if field in ("url", "format") else "url"
                raise ApiError(422, "the webhook is invalid", [(field, problem)]) from error
        log.info("webhook_registered", org_id=org_id, by_org=principal.org_id)
        operator: OperatorActions = request.app.state.operator
        await operator.touched(principal, "webhook_registered", org_id)
        return WebhookRegistered(
            org_id=webhook.org_id, url=webhook.url, format=webhook.format, secret=webhook.secret
        )

    @app.get("/v1/webhooks", response_model=WebhookShown, responses=error_responses(404))
    async def get_webhook(
        request: Request,
        org_id: str | None = Query(
            default=None, description="operator only; default: the caller's"
        ),
        principal: Principal = Depends(webhook_owner),
    ) -> WebhookShown:
        """The organisation's webhook URL (never its secret); 404 if none is registered."""
        org = await _webhook_org(request, principal, org_id)
        webhook = await webhook_registrations.get_webhook(request.app.state.pool, org, settings)
        if webhook is None:
            raise ApiError(404, f"organisation {org} has no webhook")
        previous_until = webhook.previous_until
        return WebhookShown(
            org_id=webhook.org_id,
            url=webhook.url,
            format=webhook.format,
            created_at=rfc3339(webhook.created_at),
            updated_at=rfc3339(webhook.updated_at),
            previous_secret_valid_until=rfc3339(previous_until) if previous_until else None,
        )

    @app.delete("/v1/webhooks", status_code=204)
    async def delete_webhook(
        request: Request,
        org_id: str | None = Query(
            default=None, description="operator only; default: the caller's"
        ),
        principal: Principal = Depends(webhook_owner),
    ) -> Response:
        """Stop webhook delivery for the organisation; deleting a missing webhook is harmless."""
        org = await _webhook_org(request, principal, org_id)
        if await webhook_registrations.delete_webhook(request.app.state.pool, org):
            log.info("webhook_deleted", org_id=org, by_org=principal.org_id)
            operator: OperatorActions = request.app.state.operator
            await operator.touched(principal, "webhook_deleted", org)
        return Response(status_code=204)

    return app


def _may_erase(principal: Principal) -> bool:
    """Only the bus's data protection officer: the operator realm's privacy officer."""
    return principal.is_operator and principal.role == "privacy_officer"


def _actor(principal: Principal) -> Actor:
    return Actor(principal.org_id, principal.agency, principal.role)


async def _register(
    request: Request,
    principal: Principal,
    nin: str,
    register: str,
    agency: str,
    org_id: str | None,
    field: str,
) -> ChangeRecorded:
    history: History = request.app.state.history
    async with _recording(request, principal, "register_change", field=field):
        change_id = await history.record_register_change(
            nin, register, agency, org_id, principal.org_id
        )
    operator: OperatorActions = request.app.state.operator
    await operator.register_changed(
        principal, register, agency, org_id, history.subject_key(nin), change_id
    )
    return ChangeRecorded(change_id=change_id)


async def _refused(
    request: Request, principal: Principal, statement: str, refusal: Refusal, key: str | None = None
) -> ApiError:
    """Audit and count a refusal; the 403 to answer."""
    refusals: RefusalLog = request.app.state.refusals
    await refusals.refused(principal, statement, refusal, key)
    return ApiError(
        403,
        f"not entitled (rule {refusal.rule_id} of the authority policy)",
        [(refusal.field, refusal.message)],
    )


async def _body(request: Request, model: type[Body], refusal: str) -> Body:
    """The request's JSON body as `model` (its size is limited before it is read: 413, in
    carebus.adapters.http): 400 when not JSON, 422 with `refusal` and every problem with its
    field path when `model` refuses it."""
    raw = await request.body()  # at most the route's limit (carebus.adapters.http)
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ApiError(400, "the body is not valid JSON", [("body", "malformed JSON")]) from error
    body, problems = parse(model, decoded)
    if body is None:
        raise ApiError(422, refusal, [(p.field, p.problem) for p in problems])
    return body


async def _webhook_org(request: Request, principal: Principal, requested: str | None) -> str:
    """The organisation a webhook call is about: the caller's, or any for the operator."""
    if requested is None:
        return principal.org_id
    if not _ORG_ID.fullmatch(requested):  # a query parameter; a body's org_id is checked
        raise ApiError(422, "org_id is invalid", [("org_id", ORG_ID_PROBLEM)])
    if requested != principal.org_id and not principal.is_operator:
        raise await _refused(
            request,
            principal,
            "webhook",
            Refusal(
                "operator.realm",
                "org_id",
                "an organisation manages only its own webhook; the operator manages any",
            ),
        )
    return requested


@asynccontextmanager
async def _recording(
    request: Request, principal: Principal, statement: str, *, field: str | None = None
) -> AsyncIterator[None]:
    """Map the history's failures to DESIGN's answers; refusals are audited."""
    try:
        yield
    except NotEntitledError as refused:
        raise await _refused(
            request, principal, statement, refused.refusal, refused.subject_key
        ) from refused
    except OrganisationMismatchError as error:
        raise ApiError(
            422,
            "the request names an organisation that is not registered as claimed",
            [(field or error.field, error.problem)],
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
