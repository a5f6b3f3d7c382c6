"""The audit service: an organisation reads its own deliveries; a privacy officer, a person's
disclosures; a patient, their own log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from carebus.adapters.auth import Principal, TokenCache
from carebus.adapters.db import create_pool
from carebus.adapters.http import ApiError, create_app, principal_dependency
from carebus.adapters.pages import add_page_routes
from carebus.adapters.resources import pool_answers
from carebus.adapters.sessions import Caller, PersonSessions
from carebus.domain.identity import subject_key, validate_nin
from carebus.domain.text import UNSHOWN_FIELD_PROBLEM, shown_field_name, text_problem
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import get_logger
from carebus.wire.cursor import Cursor, CursorError
from carebus.wire.sealing import KeyWrap
from services.audit.paging import PagingError, looks_like_cursor, parse_since
from services.audit.sign_in import (
    PATIENT,
    PRIVACY_OFFICER,
    add_audit_sign_in,
    caller_dependency,
    issuers,
)
from services.audit.store import AuditStore, Looker

log = get_logger(__name__)

DEFAULT_LIMIT = 100
STATIC: Final = Path(__file__).parent / "static"
ASSETS: Final = {"audit.js": "text/javascript", "audit.css": "text/css"}
ISSUER_TIMEOUT_S: Final = 10.0
MAX_LIMIT = 1000
# One text for "no such person" and "not your person", so the answer reveals neither.
NOT_RELATED = "this organisation has no data on the person"
SINCE_OR_CURSOR_PROBLEM = (
    "must be an RFC 3339 time with offset, e.g. 2026-11-23T08:15:00+01:00, or a `next` cursor"
)

Agency = Literal["dps", "municipality", "fastlege", "nav", "police", "housing", "corrections"]
Realm = Literal[
    "dps", "municipality", "fastlege", "nav", "police", "housing", "corrections", "operator"
]
MAX_PURPOSE: Final = 200

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

_DISCLOSURES_DOC = f"""
The routing decisions about one person in which the caller's organisation took part, ordered by
`decided_at`: what it sent (it is the event's source) or what it received or was refused (it is
the recipient), with `basis` and `fields`, or the `reason` it was withheld. Events that had no
candidate recipient at all are recorded but not listed, since they name no recipient.

Only a `privacy_officer` may ask (a token, or a person signed in at `/login`; a session's POST
needs the page's `X-Carebus-Request: audit` header and its own `Origin`), and only about a
person their organisation has data on: it published an event about the person, was a
candidate recipient of one (delivered or withheld), is or was in the person's care team, or
recorded a consent or care-team change for them. Otherwise the answer is `403` with the same
message whether or not carebus knows the person at all. The operator's privacy officer
(carebus's data protection officer) sees every decision about anyone. The nin travels in the
body only, never in the URL.

`purpose` (optional, at most {MAX_PURPOSE} characters, no control characters) says why you look.
Every answered query is recorded (who, when, why, how many items) before it is answered, and
shows in later answers and in the person's own log (`GET /v1/me/disclosures`).

Besides `items`: `lookups`, the earlier queries about the person by the caller's organisation
(by anyone, for the data protection officer); and `refusals`, the statements about the person
the caller's organisation made and carebus refused for want of authority (everyone's, for the
data protection officer).
"""

_ME_DOC = """
The patient's own log (pasientjournalloven §18): everything carebus did with information about
the person the token is bound to (or the person signed in with ID-porten at `/patient/login`),
oldest first. Only `patient` tokens and patients' sessions may ask, and either reads only its
own person's log; it takes no parameters.

Each row has `at`, `kind` and `text`, one sentence in plain words naming each organisation
(its name, agency and organisation number), plus the structured fields of its kind:

- `delivered`: an organisation was told about an event (`source`, `recipient`, `event_type`,
  `basis`, `categories`); `withheld`: it was not (`reason`);
- `consent`: a consent, withdrawal or objection was recorded (`status`, `state`, `recipient`,
  `categories`, `recorded_by`, `valid_from`, `valid_to`); `consent_confirmed`: a pending
  consent was confirmed and took effect (`confirmed_by`);
- `lookup`: a privacy officer looked at who received information about the person (`by`,
  `role`, `purpose`);
- `refusal`: an organisation tried to say something about the person that it is not entitled
  to say, and carebus refused (`actor`, `statement`, `rule_id`).
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
                        },
                        "purpose": {
                            "type": "string",
                            "maxLength": MAX_PURPOSE,
                            "description": "Why you look (recorded, and shown to the person).",
                        },
                    },
                    "required": ["nin"],
                    "additionalProperties": False,
                }
            }
        },
    }
}


class Organisation(BaseModel):
    agency: Agency
    org_id: str


class Subject(BaseModel):
    nin: str


class EmergencyNotice(BaseModel):
    justification: str | None = Field(description="null only when the person was erased since.")
    accountable: str | None = Field(description="null only when the person was erased since.")


class Delivery(BaseModel):
    delivery_id: str
    event_id: str
    event_type: str
    occurred_at: datetime
    subject: Subject | None = Field(
        description="null only when the person was erased since (then `erased` is true)."
    )
    erased: bool | None = Field(
        default=None,
        description=(
            "Present, and true, only when the person was erased since: the nin and the free "
            "text (`payload.ward`, `payload.service`, `emergency.justification`, "
            "`emergency.accountable`) are null."
        ),
    )
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
    retracted_by: str | None = Field(
        default=None,
        description="Only when the sender withdrew the event since: the retraction's event_id.",
    )


class DisclosureLookup(BaseModel):
    org_id: str
    agency: Realm
    role: str
    purpose: str | None
    looked_at: datetime


class AuthorityRefusal(BaseModel):
    actor: Organisation
    statement: str = Field(description="`event:<event_type>`, `care_team_change`, `consent`, …")
    rule_id: str = Field(description="The rule of policy/authority.yaml that refused it.")
    field: str | None
    decided_at: datetime


class Disclosures(BaseModel):
    items: list[Disclosure]
    lookups: list[DisclosureLookup] = Field(description="Who looked, when and why.")
    refusals: list[AuthorityRefusal] = Field(description="Statements refused: no authority.")


class Party(BaseModel):
    agency: str
    org_id: str | None = Field(description="null for a consent covering a whole agency.")
    name: str | None = Field(description="The organisation's name, when the directory has one.")


class _Row(BaseModel):
    at: datetime
    text: str = Field(description="One sentence in plain words.")


class DecisionRow(_Row):
    kind: Literal["delivered", "withheld"]
    event_id: str
    event_type: str
    source: Party
    recipient: Party
    basis: str | None = Field(default=None, description="Only when delivered.")
    categories: list[str] | None = Field(default=None, description="Only when delivered.")
    reason: str | None = Field(default=None, description="Only when withheld.")
    retracted_by: str | None = Field(
        default=None, description="Only when the sender withdrew the event since (a retraction)."
    )


class ConsentRow(_Row):
    kind: Literal["consent"]
    status: Literal["given", "withdrawn", "objection"]
    state: Literal["effective", "pending", "confirmed"]
    recipient: Party
    categories: list[str]
    recorded_by: Party
    valid_from: datetime
    valid_to: datetime | None


class ConfirmationRow(_Row):
    kind: Literal["consent_confirmed"]
    status: str
    recipient: Party
    categories: list[str]
    confirmed_by: Party | None


class LookupRow(_Row):
    kind: Literal["lookup"]
    by: Party
    role: str
    purpose: str | None


class RefusalRow(_Row):
    kind: Literal["refusal"]
    actor: Party
    statement: str
    rule_id: str


class PatientLog(BaseModel):
    items: list[
        Annotated[
            DecisionRow | ConsentRow | ConfirmationRow | LookupRow | RefusalRow,
            Field(discriminator="kind"),
        ]
    ]


@dataclass(frozen=True, slots=True)
class DisclosureQuery:
    """A valid disclosure query: the person, and why the caller looks (if it said)."""

    nin: str
    purpose: str | None


def build_app(settings: Settings | None = None) -> FastAPI:
    """The audit app wired to the real database."""
    settings = settings or get_settings()
    secret = settings.subject_key_secret.get_secret_value()
    # Deliveries are read with the person's nin and free text opened: refuse to start without
    # the key-encryption key rather than answer with erased persons.
    wrap = KeyWrap.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=10)
        app.state.tokens = TokenCache(pool)
        app.state.store = AuditStore(pool, wrap)
        app.state.sessions = PersonSessions(
            pool,
            service="audit",
            max_age=timedelta(seconds=settings.audit_session_max_s),
            idle=timedelta(seconds=settings.audit_session_idle_s),
        )
        http = httpx.AsyncClient(timeout=ISSUER_TIMEOUT_S, follow_redirects=False)
        app.state.issuers = issuers(settings, http)
        app.state.readiness.add("database", pool_answers(pool))
        try:
            yield
        finally:
            await http.aclose()
            await pool.close()

    app = create_app("audit", title="carebus audit", lifespan=lifespan, settings=settings)
    system_only = principal_dependency("system")
    privacy_officer_only = caller_dependency(settings, PRIVACY_OFFICER)
    patient_only = caller_dependency(settings, PATIENT)
    add_audit_sign_in(app, settings)
    add_page_routes(app, STATIC, ASSETS)

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
        request: Request, caller: Caller = Depends(privacy_officer_only)
    ) -> JSONResponse:
        principal, actor = caller.principal, caller.actor
        query = _query(await request.body())
        key = subject_key(query.nin, secret)
        store: AuditStore = request.app.state.store
        # The operator's privacy officer is carebus's data protection officer: every decision.
        scope = None if principal.is_operator else principal.org_id
        if scope is not None and not await store.related(scope, key):
            log.info("disclosures.refused", org_id=principal.org_id, subject_key=key)
            raise ApiError(403, NOT_RELATED, [("nin", "no relation to this organisation")])
        looker = Looker(
            principal.org_id, principal.role, actor.token_id, actor.subject, actor.issuer
        )
        report = await store.report(key, scope, looker, query.purpose)
        log.info(
            "disclosures.queried",
            org_id=principal.org_id,
            subject_key=key,
            items=len(report.items),
            everything=scope is None,
        )
        return JSONResponse(report.to_json())

    @app.get("/v1/me/disclosures", response_model=PatientLog, description=_ME_DOC)
    async def my_disclosures(
        request: Request, caller: Caller = Depends(patient_only)
    ) -> JSONResponse:
        principal = caller.principal
        if principal.subject_key is None:  # the database forbids it; never read "everyone"
            raise ApiError(403, "this token is not bound to a person")
        store: AuditStore = request.app.state.store
        rows = await store.patient_log(principal.subject_key)
        log.info("patient_log.read", subject_key=principal.subject_key, rows=len(rows))
        return JSONResponse({"items": rows})

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
    except CursorError as error:
        problem = error.problem if cursor_field == "cursor" else SINCE_OR_CURSOR_PROBLEM
        raise ApiError(422, f"`{cursor_field}` is invalid", [(cursor_field, problem)]) from None
    return start, after


def _query(body: bytes) -> DisclosureQuery:
    """The valid query of a body; 400 for malformed JSON, 422 naming every field at fault."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "the body is not valid JSON", [("body", "malformed JSON")]) from None
    if not isinstance(raw, dict):
        raise ApiError(422, "the body must be an object", [("body", 'must be {"nin": ...}')])
    unknown = sorted(set(raw) - {"nin", "purpose"})
    if unknown:
        shown = shown_field_name(unknown[0])
        detail = (unknown[0], "not a query field") if shown else ("body", UNSHOWN_FIELD_PROBLEM)
        raise ApiError(422, "the query has unknown fields", [detail])
    problems: list[tuple[str, str]] = []
    nin_problem = "is required" if "nin" not in raw else validate_nin(raw["nin"])
    if nin_problem is not None:
        problems.append(("nin", nin_problem))
    purpose = raw.get("purpose")
    purpose_problem = purpose_problem_of(purpose)
    if purpose_problem is not None:
        problems.append(("purpose", purpose_problem))
    if problems:
        raise ApiError(422, "the query is invalid", problems)
    text = purpose.strip() if purpose else ""
    return DisclosureQuery(raw["nin"], text or None)  # a blank purpose says no more than none


def purpose_problem_of(purpose: object) -> str | None:
    """What is wrong with a query's `purpose` (None or text), or None if nothing is."""
    if purpose is None:
        return None
    if not isinstance(purpose, str):
        return "must be a string"
    if len(purpose) > MAX_PURPOSE:
        return f"must be at most {MAX_PURPOSE} characters"
    # The purpose is shown as written in the patient's log: carebus's one text rule.
    return text_problem(purpose)
