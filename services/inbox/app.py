"""The inbox service: coordinators', privacy officers' and the operator's alerts over HTTP, live,
and as a page.

Wiring only: the rules (who sees what, the JSON, the filters) are in `alerts.py`, the SQL in
`store.py`, the live fan-out in `live.py`. Two background tasks run with the app: the feed's
LISTEN connection and the escalation scan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final, Literal

import asyncpg
import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from carebus.adapters.auth import OPERATOR, Principal, TokenCache
from carebus.adapters.db import create_pool
from carebus.adapters.http import ApiError, bearer_token, create_app, error_responses
from carebus.adapters.oidc import issuer_client
from carebus.adapters.pages import PAGE_HEADERS, add_page_routes
from carebus.adapters.refusals import refusal_record
from carebus.adapters.resources import pool_answers
from carebus.adapters.sessions import Caller, PersonSessions, session_caller
from carebus.domain.authority import PERSON_VIEW, PERSON_VIEW_REFUSAL
from carebus.domain.text import text_problem
from carebus.runtime import metrics
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import get_logger
from carebus.wire.cursor import Cursor, CursorError
from carebus.wire.policy_files import load_authority, load_rules
from carebus.wire.sealing import KeyWrap
from services.inbox.alerts import (
    AUDIENCE_OF_ROLE,
    AlertRow,
    FilterError,
    alert_json,
    can_see,
    parse_filter,
)
from services.inbox.live import AlertFeed, Subscriber
from services.inbox.person import DEFAULT_LIMIT as PERSON_DEFAULT_LIMIT
from services.inbox.person import MAX_LIMIT as PERSON_MAX_LIMIT
from services.inbox.person import VIEW_ROLES, view, well_formed
from services.inbox.person_store import Looker, PersonStore, RefusalKeeper, refusal_id
from services.inbox.sign_in import (
    STAFF_ISSUER,
    add_inbox_sign_in,
    caller_dependency,
    inbox_site,
)
from services.inbox.store import AlertStore, Change

log = get_logger(__name__)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
KEEPALIVE_S: Final = 15.0
# When a refused live stream (over a cap) is worth asking for again.
STREAM_RETRY_AFTER_S: Final = 30
# How often an open stream asks whether its token is still valid. The token cache answers
# from memory and asks the database at most every TOKEN_CACHE_TTL_S, so a stream ends within
# about 6 s of its token being revoked or expiring.
TOKEN_RECHECK_S: Final = 1.0
STATIC: Final = Path(__file__).parent / "static"
PERSON_PAGE: Final = STATIC / "person.html"
# One answer for an unknown key, a malformed one and a person the caller is not related to.
NO_SUCH_PERSON: Final = "no such person"
# What a malformed key is looked up as: never a subject key (64 hex digits), safe to send.
NO_KEY: Final = "-"
ASSETS: Final = {
    "inbox.js": "text/javascript",
    "inbox.css": "text/css",
    "favicon.svg": "image/svg+xml",
    "person.js": "text/javascript",
}
STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
ISSUER_TIMEOUT_S: Final = 10.0
_DATABASE_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Organisation(BaseModel):
    agency: str
    org_id: str


class Subject(BaseModel):
    nin: str


class ActingPerson(BaseModel):
    sub: str = Field(description="The person's pseudonymous id at their issuer.")
    issuer: str


class NamedContact(BaseModel):
    """A member of staff a care-team organisation named for the person (the registry's
    `POST /v1/care-teams/contacts`)."""

    name: str
    role: Literal["coordinator", "pathway_coordinator", "gp", "contact"]
    hpr_number: str | None
    phone: str | None


class Alert(BaseModel):
    alert_id: str
    rule_id: str
    title: str
    kind: str
    status: Literal["open", "acknowledged", "resolved"]
    resolution: str | None = Field(
        description="fulfilled_late, fulfilled_late_report, cancelled, retracted (the event that"
        " opened it was withdrawn by its sender) or resolved_by_recipient."
    )
    escalated: bool
    deadline: datetime | None
    breached_at: datetime
    escalate_at: datetime
    recipient: Organisation | None = Field(description="null: the unassigned queue.")
    recipient_role: str | None = Field(
        default=None,
        description="The SLA rule's role that chose the recipient (source,"
        " municipal_coordinator, pathway_coordinator, home_municipality, gp, ...); null for"
        " the unassigned queue, an operator action, or an alert raised before it was recorded.",
    )
    subject: Subject | None = Field(
        default=None,
        description="Present only when the recipient may know the person; null once the person"
        " was erased (then `erased` is true).",
    )
    subject_key: str | None = Field(
        default=None,
        description="Present only with `subject`: the person's subject key (a keyed hash, not"
        " the nin), for the person view.",
    )
    person_url: str | None = Field(
        default=None,
        description="Present only with `subject`: `/persons/<subject_key>`, the person view.",
    )
    erased: bool | None = Field(
        default=None,
        description="Present, and true, only when the person was erased since: the alert names"
        " no one, and its summary reads `(erased)` where it quoted a sealed text.",
    )
    accountable: NamedContact | None = Field(
        default=None,
        description="Present only with `subject`: the person the recipient organisation named"
        " accountable for the person in the role the alert was routed by (else its first role"
        " with a named person: coordinator, pathway_coordinator, gp, contact), read from the"
        " registry now; null when it named no one.",
    )
    deputy: NamedContact | None = Field(
        default=None, description="Present only with `subject`: the deputy, as `accountable`."
    )
    contact: Organisation | None
    summary: str
    event_ids: list[str]
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    acknowledged_by: ActingPerson | None = Field(
        default=None, description="The person who acknowledged it; null for a system's token."
    )
    resolved_by: ActingPerson | None = Field(
        default=None, description="The person who resolved it; null for a system's token."
    )


class PersonTimeline(BaseModel):
    subject: dict[str, str | bool | None] | None = Field(
        description='`{"nin"}` as the caller\'s organisation was told it; `{"nin": null,'
        ' "erased": true}` once the person was erased; null when it holds nothing naming them.'
    )
    relations: list[str] = Field(
        description="care_team, home_municipality, gp, admitting: how the caller's organisation"
        " is related to the person; `alert` alone: it has no relation left (a DPS after the"
        " discharge) but holds an unresolved alert that names the person."
    )
    care_team: list[dict[str, object]] = Field(
        description="{agency, org_id, role, contacts}: every member for a health organisation"
        " (dps, municipality, fastlege), only its own entry for anyone else; `contacts` the"
        " staff each named for the person ({position, name, role, hpr_number, phone}),"
        " accountable first."
    )
    plan: dict[str, object] | None = Field(
        default=None,
        description="{plan_id, status, coordinator, next_review_at, crisis_plan: {exists, id,"
        " owner, reviewed_at}, event_id, occurred_at}: the latest individual plan the caller's"
        " organisation was delivered or sent, only the fields it was given; null if none.",
    )
    obligations: list[dict[str, str | None]] = Field(
        description="{rule_id, title, deadline, status}: owed obligations (open or breached)"
        " whose trigger the caller's organisation sent or was delivered; the rule's neutral"
        " title where it may not read what the rule's condition reads."
    )
    brukerplan: dict[str, object] | None = Field(
        default=None,
        description="{event_id, assessed_at, scores: {domain: green|yellow|red}}: the latest"
        " Brukerplan assessment, the domains the caller's organisation was given of it (health"
        " domains to health services in the care team only); null if it was told of none.",
    )
    events: dict[str, object] = Field(
        description="{items, next}: the caller's deliveries about the person (`direction`"
        " received, as delivered) and the events it sent (`direction` sent), newest first."
    )


_PERSON_DOC = f"""
What the caller's organisation may know about one person, for a coordinator or a privacy
officer (a token or a signed-in person); a `system` token and the operator are `403`.

`404`, always with the same body, for a person the caller's organisation has no relation to
(care team, home municipality, GP list, open admission) and no unresolved alert naming them,
for a subject key carebus does not know and for anything that is not a subject key (64
lower-case hex digits), so the answer never tells whether a person exists. The subject key is
the keyed hash of the nin, never the nin. A refused look at a person carebus knows is kept in
the person's log (rule `person_view.relation`).

`events` pages newest first: `limit` 1 to {PERSON_MAX_LIMIT} (default {PERSON_DEFAULT_LIMIT}),
`next` an opaque cursor to pass back as `before`. Every answered call is recorded in the
disclosure log (`disclosure_lookups`, what `person_timeline`: organisation, role, token or
person, subject key, time), which the person reads in their own log.
"""


class AlertList(BaseModel):
    items: list[Alert]
    next: str | None = Field(description="Cursor for the next page; null when none follows.")


_LIST_DOC = (
    "The caller's alerts, ordered by breached_at then alert_id. A coordinator sees its "
    "organisation's coordinator alerts; a privacy officer its organisation's privacy-officer "
    "alerts (emergency disclosures, operator actions). The unassigned queue (no recipient "
    "organisation found) is the operator's: only the operator realm's `operator` and "
    "`privacy_officer` tokens see it."
)
_STREAM_DOC = (
    "Server-sent events: `event: alert` with the alert JSON whenever one the caller may see is "
    "raised or changes, `event: resync` when changes may have been missed (reload the list), "
    "and a `: keepalive` comment every 15 s."
)


def build_app(settings: Settings | None = None) -> FastAPI:
    """The inbox app wired to the real database."""
    settings = settings or get_settings()
    # Alerts are shown with the person's nin opened: refuse to start without the key.
    wrap = KeyWrap.from_settings(settings)
    # The person view titles obligations as the alerts do: the same rule file as the SLA engine.
    rules = load_rules(settings.sla_rules, settings.sla_rules_override)
    # A refused person-view look-up is kept under the authority policy's version, as every
    # refusal is.
    authority_version = load_authority().version

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=10)
        store = AlertStore(pool, wrap)
        people = PersonStore(pool, wrap)
        app.state.people = people
        app.state.authority_version = authority_version
        refusals = RefusalKeeper(people)
        app.state.refusals = refusals
        feed = AlertFeed(settings.postgres_dsn, store.load)
        app.state.tokens = TokenCache(pool)
        app.state.store = store
        app.state.feed = feed
        app.state.sessions = PersonSessions(
            pool,
            service="inbox",
            max_age=timedelta(seconds=settings.inbox_session_max_s),
            idle=timedelta(seconds=settings.inbox_session_idle_s),
        )
        http = httpx.AsyncClient(timeout=ISSUER_TIMEOUT_S, follow_redirects=False)
        app.state.issuers = {
            STAFF_ISSUER: issuer_client(
                settings.oidc_issuer, settings.oidc_client_id, http, settings.oidc_client_key
            )
        }
        app.state.readiness.add("database", pool_answers(pool))
        background = [
            asyncio.create_task(feed.run(), name="inbox-feed"),
            asyncio.create_task(
                escalate_forever(store, settings.inbox_escalation_interval_s),
                name="inbox-escalation",
            ),
            asyncio.create_task(refusals.run(), name="inbox-refusals"),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await refusals.drain()
            await http.aclose()
            await pool.close()

    app = create_app("inbox", title="carebus inbox", lifespan=lifespan, settings=settings)
    inbox_roles = caller_dependency(settings)
    person_roles = session_caller(inbox_site(settings), *VIEW_ROLES)
    add_inbox_sign_in(app, settings)

    add_page_routes(app, STATIC, ASSETS)

    @app.get("/v1/alerts", response_model=AlertList, description=_LIST_DOC)
    async def list_alerts(
        request: Request,
        status: str | None = Query(default=None, description="open, acknowledged or resolved."),
        rule_id: str | None = Query(default=None),
        escalated: str | None = Query(default=None, description="true or false."),
        cursor: str | None = Query(default=None, description="`next` of the previous page."),
        limit: int = Query(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        caller: Caller = Depends(inbox_roles),
    ) -> JSONResponse:
        try:
            wanted = parse_filter(status, rule_id, escalated)
        except FilterError as error:
            raise ApiError(
                422, f"`{error.field}` is invalid", [(error.field, error.problem)]
            ) from None
        try:
            after = Cursor.decode(cursor) if cursor is not None else None
        except CursorError as error:
            raise ApiError(422, "`cursor` is invalid", [("cursor", str(error))]) from None
        store: AlertStore = request.app.state.store
        found = await store.page(caller.principal, wanted, after=after, limit=limit)
        return JSONResponse(
            {
                "items": [alert_json(row) for row in found.rows],
                "next": found.next.encode() if found.next else None,
            }
        )

    # Declared before /v1/alerts/{alert_id}, which would otherwise take "stream" for an id.
    @app.get(
        "/v1/alerts/stream",
        description=_STREAM_DOC,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_alerts(
        request: Request, caller: Caller = Depends(inbox_roles)
    ) -> StreamingResponse:
        feed: AlertFeed = request.app.state.feed
        admit_stream(feed, caller.principal, settings)
        if caller.session is not None:
            sessions: PersonSessions = request.app.state.sessions
            still_valid = partial(_session_valid, sessions, caller.session)
        else:
            tokens: TokenCache = request.app.state.tokens
            still_valid = partial(_token_valid, tokens, bearer_token(request))
        return StreamingResponse(
            _frames(feed, caller.principal, still_valid),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )

    @app.get("/v1/alerts/{alert_id}", response_model=Alert, responses=error_responses(404))
    async def get_alert(
        request: Request, alert_id: str, caller: Caller = Depends(inbox_roles)
    ) -> JSONResponse:
        _checked_alert_id(alert_id)
        store: AlertStore = request.app.state.store
        return JSONResponse(alert_json(_visible(await store.get(alert_id), caller.principal)))

    @app.post("/v1/alerts/{alert_id}/ack", response_model=Alert, responses=error_responses(404))
    async def acknowledge(
        request: Request, alert_id: str, caller: Caller = Depends(inbox_roles)
    ) -> JSONResponse:
        _checked_alert_id(alert_id)
        store: AlertStore = request.app.state.store
        _visible(await store.get(alert_id), caller.principal)
        change = await store.acknowledge(alert_id, caller.actor)
        return _changed("ack", change, caller)

    @app.post("/v1/alerts/{alert_id}/resolve", response_model=Alert, responses=error_responses(404))
    async def resolve(
        request: Request, alert_id: str, caller: Caller = Depends(inbox_roles)
    ) -> JSONResponse:
        _checked_alert_id(alert_id)
        store: AlertStore = request.app.state.store
        _visible(await store.get(alert_id), caller.principal)
        change = await store.resolve(alert_id, caller.actor)
        return _changed("resolve", change, caller)

    @app.get(
        "/v1/persons/{subject_key}/timeline",
        response_model=PersonTimeline,
        description=_PERSON_DOC,
        responses=error_responses(404),
    )
    async def person_timeline(
        request: Request,
        subject_key: str,
        before: str | None = Query(default=None, description="`next` of the previous page."),
        limit: int = Query(default=PERSON_DEFAULT_LIMIT, ge=1, le=PERSON_MAX_LIMIT),
        caller: Caller = Depends(person_roles),
    ) -> JSONResponse:
        # The cursor is checked before the person: a bad cursor is 422 for every key alike.
        try:
            after = Cursor.decode(before) if before is not None else None
        except CursorError as error:
            raise ApiError(422, "`before` is invalid", [("before", str(error))]) from None
        principal = caller.principal
        people: PersonStore = request.app.state.people
        # A malformed key is looked up too (as one no person has), and every key is asked
        # about alerts, so each answer takes the same queries: none may tell another apart.
        key = subject_key if well_formed(subject_key) else NO_KEY
        person = await people.person(key)
        named = await people.named_in_alert(key, principal.org_id, AUDIENCE_OF_ROLE[principal.role])
        related = person is not None and bool(person.routing.relations(principal.org_id))
        if person is None or not (related or named):
            metrics.PERSON_VIEWS.labels("not_found").inc()
            _refuse_look(request, caller, None if person is None else subject_key)
            raise ApiError(404, NO_SUCH_PERSON, [("subject_key", "unknown")])
        alerted = not related
        looker = Looker(principal.org_id, principal.role, caller.actor)
        found = await people.timeline(subject_key, person, looker, before=after, limit=limit)
        metrics.PERSON_VIEWS.labels("shown").inc()
        log.info(
            "inbox.person_timeline",
            org_id=principal.org_id,
            role=principal.role,
            subject_key=subject_key,
            items=len(found.items),
            by="person" if caller.session is not None else "token",
        )
        return JSONResponse(
            view(
                subject=found.subject,
                routing=person.routing,
                state=person.state,
                rules=rules,
                agency=principal.agency,
                org_id=principal.org_id,
                seen=found.seen,
                items=found.items,
                next_cursor=found.next.encode() if found.next else None,
                contacts=found.contacts,
                latest_plan=found.plan,
                alerted=alerted,
            )
        )

    @app.get("/persons/{subject_key}", include_in_schema=False)
    async def person_page(subject_key: str) -> Response:
        # The same page for any key: it holds no data; its script asks the API, which decides.
        return Response(PERSON_PAGE.read_bytes(), media_type="text/html", headers=PAGE_HEADERS)

    return app


def _refuse_look(request: Request, caller: Caller, subject_key: str | None) -> None:
    """Log a refused person-view look-up; when the key names a person carebus knows
    (`subject_key`), count it as a refusal of `person_view.relation` and keep it in the person's
    log, after the answer (RefusalKeeper). The operator realm's data protection officer reads
    the log through the audit API and is not counted as having tried."""
    principal = caller.principal
    if subject_key is None or principal.agency == OPERATOR:
        log.info("inbox.person_not_found", org_id=principal.org_id, role=principal.role)
        return
    refusal = PERSON_VIEW_REFUSAL
    now = datetime.now(UTC)
    record = refusal_record(
        principal,
        PERSON_VIEW,
        refusal,
        subject_key,
        request.app.state.authority_version,
        audit_id=refusal_id(principal.org_id, principal.role, subject_key, now),
    )
    metrics.AUTHORITY_REFUSALS.labels(refusal.rule_id).inc()
    log.info(
        "inbox.person_not_found",
        org_id=principal.org_id,
        role=principal.role,
        rule_id=refusal.rule_id,
        audit_id=record["audit_id"],
        token_id=str(caller.actor.token_id) if caller.actor.token_id else None,
    )
    keeper: RefusalKeeper = request.app.state.refusals
    keeper.keep(record)


def _checked_alert_id(alert_id: str) -> None:
    """422 for an alert id with characters carebus refuses in any input (a NUL, PostgreSQL
    cannot even compare); any other unknown id is 404 like one the caller may not see."""
    problem = text_problem(alert_id)
    if problem is not None:
        raise ApiError(422, "`alert_id` is invalid", [("alert_id", problem)])


def _visible(row: AlertRow | None, caller: Principal) -> AlertRow:
    """The alert if `caller` may see it; 404 otherwise.

    Someone else's alert is 404 like an unknown one: alert ids are derived from event ids and
    organisation numbers, so a 403 would tell a prober that another organisation was alerted
    about an event.
    """
    if row is None or not can_see(caller, row["recipient_org"], row["audience"]):
        raise ApiError(404, "no such alert", [("alert_id", "unknown")])
    return row


def _changed(action: str, change: Change | None, caller: Caller) -> JSONResponse:
    if change is None:  # visible a moment ago; alerts are never deleted, but be exact
        raise ApiError(404, "no such alert", [("alert_id", "unknown")])
    result = "changed" if change.changed else "unchanged"
    metrics.INBOX_ACTIONS.labels(action, result).inc()
    row = change.row
    if action == "ack" and change.changed and row["acknowledged_at"] is not None:
        waited = (row["acknowledged_at"] - row["breached_at"]).total_seconds()
        metrics.ALERT_ACK_LATENCY.labels(row["rule_id"]).observe(max(0.0, waited))
    log.info(
        f"inbox.{action}",
        alert_id=row["alert_id"],
        event_ids=list(row["event_ids"]),
        result=result,
        by="person" if caller.session is not None else "token",
    )
    return JSONResponse(alert_json(change.row))


def admit_stream(feed: AlertFeed, caller: Principal, settings: Settings) -> None:
    """A new live stream, or 429/503 with Retry-After when the process or the caller's
    organisation holds as many as it may (settings `inbox_max_streams*`)."""
    full = feed.room_for(
        caller, total=settings.inbox_max_streams, per_org=settings.inbox_max_streams_per_org
    )
    if full is None:
        return
    log.warning("inbox.stream_refused", cap=full, org_id=caller.org_id)
    retry_after = {"Retry-After": str(STREAM_RETRY_AFTER_S)}
    if full == "organisation":
        raise ApiError(
            429,
            "this organisation has as many live streams open as it may; close one or retry "
            "after the time in Retry-After",
            headers=retry_after,
        )
    raise ApiError(
        503,
        "this inbox holds as many live streams as it may; retry after Retry-After",
        headers=retry_after,
    )


async def _frames(
    feed: AlertFeed,
    caller: Principal,
    token_valid: Callable[[], Awaitable[bool]],
    *,
    recheck_s: float = TOKEN_RECHECK_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[str]:
    """The caller's stream: subscribed before the first line, so nothing after it is missed;
    ended once its token is revoked or expires (the client's reconnect then gets 401)."""
    subscriber: Subscriber = feed.subscribe(caller)
    loop = asyncio.get_running_loop()
    try:
        yield ": connected\n\n"
        keepalive_at = checked_at = loop.time()
        while True:
            try:
                frame = await asyncio.wait_for(subscriber.frames.get(), recheck_s)
            except TimeoutError:
                frame = ""
            if frame is None:
                return
            now = loop.time()
            if now - checked_at >= recheck_s:
                checked_at = now
                if not await token_valid():
                    log.info("inbox.stream_ended", reason="token_invalid", org_id=caller.org_id)
                    return
            if frame:
                yield frame
            elif now - keepalive_at >= keepalive_s:
                yield ": keepalive\n\n"
            else:
                continue
            keepalive_at = now
    finally:
        feed.unsubscribe(subscriber)


async def _token_valid(tokens: TokenCache, token: str) -> bool:
    """Whether `token` is still accepted; a database that cannot say counts as no (the client
    reconnects and is answered as any new request)."""
    try:
        return await tokens.principal(token) is not None
    except _DATABASE_ERRORS as exc:
        log.warning("inbox.token_recheck_failed", error=type(exc).__name__)
        return False


async def _session_valid(sessions: PersonSessions, session: str) -> bool:
    """Whether a person's session still holds; a database that cannot say counts as no."""
    try:
        return await sessions.valid(session)
    except _DATABASE_ERRORS as exc:
        log.warning("inbox.session_recheck_failed", error=type(exc).__name__)
        return False


async def escalate_forever(store: AlertStore, interval_s: float) -> None:
    """Flag alerts left open past their escalation time, every `interval_s`, until cancelled."""
    while True:
        try:
            escalated = await store.escalate_due()
        except _DATABASE_ERRORS as exc:
            log.warning("inbox.escalation_failed", error=type(exc).__name__)
        else:
            if escalated:
                metrics.ALERTS_ESCALATED.inc(len(escalated))
                log.info("inbox.escalated", alerts=len(escalated))
        try:
            counts = await store.counts()
        except _DATABASE_ERRORS as exc:
            log.warning("inbox.count_failed", error=type(exc).__name__)
        else:
            for status in ("open", "acknowledged"):
                for flag in (False, True):
                    metrics.ALERTS.labels(status, str(flag).lower()).set(
                        counts.get((status, flag), 0)
                    )
        await asyncio.sleep(interval_s)
