"""People's sessions at a carebus service (the inbox, the audit service): OpenID Connect sign-in
(authorization code + PKCE) through one or more doors, server-side sessions in PostgreSQL, and
how a call finds its caller (a system's bearer token exactly as before, else the session cookie,
with the CSRF rule for anything but GET).

The browser holds only random values: a sign-in's (SameSite=Lax, to survive the issuer's
redirect back) and a session's (SameSite=Strict). The database holds their SHA-256 digests, so a
read of the tables yields no usable cookie. A session belongs to the service that opened it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, NoReturn
from urllib.parse import urlencode, urlsplit

import asyncpg
from fastapi import FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response

from carebus.adapters.auth import Principal, check_role
from carebus.adapters.http import ApiError, error_responses, principal_dependency
from carebus.adapters.oidc import (
    ClaimNames,
    IssuerClient,
    OidcError,
    Patient,
    Person,
    new_verifier,
    person_from_claims,
    pkce_challenge,
)
from carebus.adapters.ratelimit import TokenBuckets
from carebus.domain.text import text_problem
from carebus.runtime.telemetry import get_logger

log = get_logger(__name__)

# A sign-in not finished within this long is forgotten (the person starts again).
SIGN_IN_LIFETIME: Final = timedelta(minutes=10)
# The header a service's page sends with every POST: a cross-site form cannot send it, and a
# cross-site script cannot without a CORS preflight no carebus service grants.
CSRF_HEADER: Final = "x-carebus-request"
# The sign-in's redirects carry state, not personal data; still, no Referer leaves with them.
REDIRECT_HEADERS: Final = {"Referrer-Policy": "no-referrer"}
_UNAUTHENTICATED: Final = {"WWW-Authenticate": "Bearer"}

SignedIn = Person | Patient


def digest(value: str) -> bytes:
    # Cookie values carry 256 random bits: a fast digest is as safe as a slow one.
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True, slots=True)
class SignIn:
    """What binds an authorization response to the browser that asked for it."""

    state: str
    nonce: str
    code_verifier: str

    @classmethod
    def new(cls) -> SignIn:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), new_verifier())

    @property
    def code_challenge(self) -> str:
        return pkce_challenge(self.code_verifier)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a system's token, or a person (their `sub` and issuer)."""

    token_id: uuid.UUID | None = None
    subject: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller: the principal the service's rules see, and who acts in their name."""

    principal: Principal
    actor: Actor
    # The session cookie's value, for a person; None for a bearer token.
    session: str | None = None


def csrf_problem(origin: str | None, header: str | None, own_origin: str, value: str) -> str | None:
    """Why a cookie-authenticated POST may not be the service page's own; None when it is."""
    if header != value:
        return f"the {CSRF_HEADER} header is missing"
    if origin is not None and origin != own_origin:
        return "the request comes from another origin"
    return None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_BEGIN: Final = """
    WITH forgotten AS (
        DELETE FROM person_sign_ins WHERE created_at < clock_timestamp() - $5::interval
    )
    INSERT INTO person_sign_ins (sign_in_hash, state, nonce, code_verifier, service, door)
    VALUES ($1, $2, $3, $4, $6, $7)
"""
# The sign-in of a cookie at this service's door ($3, $4), while it lasts.
_PENDING: Final = """
    SELECT state FROM person_sign_ins
    WHERE sign_in_hash = $1 AND created_at >= clock_timestamp() - $2::interval
      AND service = $3 AND door = $4
"""
# Used up only by the callback that carries its `state` ($5): a forged callback link without
# it cannot cancel a sign-in under way.
_FINISH: Final = """
    DELETE FROM person_sign_ins
    WHERE sign_in_hash = $1 AND created_at >= clock_timestamp() - $2::interval
      AND service = $3 AND door = $4 AND state = $5
    RETURNING state, nonce, code_verifier
"""
_OPEN: Final = """
    INSERT INTO person_sessions (session_id, session_hash, service, issuer, subject, org_id, role,
                                 subject_key, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp() + $9::interval)
"""
# A session is the service's ($3) until ended, past its absolute end, or unused for `idle` ($2).
_VALID: Final = """
    s.session_hash = $1 AND s.service = $3 AND s.ended_at IS NULL
    AND s.expires_at > clock_timestamp() AND s.last_seen_at > clock_timestamp() - $2::interval
"""
# A patient's session has no organisation (the database's CHECK), hence no join.
_TOUCH: Final = f"""
    UPDATE person_sessions s SET last_seen_at = clock_timestamp()
    WHERE {_VALID}
    RETURNING s.session_id, s.issuer, s.subject, s.org_id, s.role, s.subject_key,
              (SELECT o.agency FROM organisations o WHERE o.org_id = s.org_id) AS agency
"""  # noqa: S608 -- fixed texts
_PEEK: Final = f"""
    SELECT s.session_id FROM person_sessions s WHERE {_VALID}
"""  # noqa: S608 -- fixed texts
_END: Final = """
    UPDATE person_sessions SET ended_at = clock_timestamp()
    WHERE session_hash = $1 AND service = $2 AND ended_at IS NULL
"""


class PersonSessions:
    """Sign-ins in progress and one service's sessions, in PostgreSQL (every process of the
    service shares them)."""

    def __init__(
        self, pool: asyncpg.Pool, *, service: str, max_age: timedelta, idle: timedelta
    ) -> None:
        self._pool = pool
        self._service = service
        self._max_age = max_age
        self._idle = idle

    async def begin_sign_in(self, door: str) -> tuple[str, SignIn]:
        """A new sign-in at `door`: the value for the browser's cookie, and what the issuer is
        sent."""
        cookie, sign_in = secrets.token_urlsafe(32), SignIn.new()
        await self._pool.execute(
            _BEGIN,
            digest(cookie),
            sign_in.state,
            sign_in.nonce,
            sign_in.code_verifier,
            SIGN_IN_LIFETIME,
            self._service,
            door,
        )
        return cookie, sign_in

    async def pending_state(self, cookie: str, door: str) -> str | None:
        """The `state` of the sign-in `cookie` began at `door`; None if unknown or too old."""
        state: str | None = await self._pool.fetchval(
            _PENDING, digest(cookie), SIGN_IN_LIFETIME, self._service, door
        )
        return state

    async def finish_sign_in(self, cookie: str, door: str, state: str) -> SignIn | None:
        """The sign-in of `cookie` at `door` with `state`, once (it is forgotten here); None if
        unknown, too old, already finished or of another state."""
        row = await self._pool.fetchrow(
            _FINISH, digest(cookie), SIGN_IN_LIFETIME, self._service, door, state
        )
        if row is None:
            return None
        return SignIn(row["state"], row["nonce"], row["code_verifier"])

    async def open(self, person: SignedIn) -> str:
        """A new session for `person`; the value for the browser's cookie."""
        cookie = secrets.token_urlsafe(32)
        await self._pool.execute(
            _OPEN,
            uuid.uuid4(),
            digest(cookie),
            self._service,
            person.issuer,
            person.subject,
            person.org_id if isinstance(person, Person) else None,
            person.role,
            person.subject_key if isinstance(person, Patient) else None,
            self._max_age,
        )
        return cookie

    async def caller(self, cookie: str) -> Caller | None:
        """The session's caller, its idle clock restarted; None once it has ended."""
        row = await self._pool.fetchrow(_TOUCH, digest(cookie), self._idle, self._service)
        if row is None:
            return None
        principal = Principal(
            row["session_id"],
            row["org_id"] or "",
            row["agency"] or "",
            row["role"],
            subject_key=row["subject_key"],
        )
        actor = Actor(subject=row["subject"], issuer=row["issuer"])
        return Caller(principal, actor, session=cookie)

    async def valid(self, cookie: str) -> bool:
        """Whether the session still holds, without counting this as use (an open stream)."""
        found = await self._pool.fetchval(_PEEK, digest(cookie), self._idle, self._service)
        return found is not None

    async def agency_of(self, org_id: str) -> str | None:
        """The agency `org_id` is registered as; None when it is not registered."""
        agency: str | None = await self._pool.fetchval(
            "SELECT agency FROM organisations WHERE org_id = $1", org_id
        )
        return agency

    async def end(self, cookie: str) -> None:
        await self._pool.execute(_END, digest(cookie), self._service)


# What a door does with verified ID token claims: the person it admits, or a refusal (ApiError;
# OidcError for a claim that is missing or wrong, answered 401).
Admission = Callable[[Mapping[str, Any], PersonSessions], Awaitable[SignedIn]]


def session_cookie_name(name: str, *, secure: bool) -> str:
    """`name` with the `__Host-` prefix when cookies travel over TLS: the browser then takes it
    only as set by this very host (Secure, Path=/, no Domain), so a sibling host under the same
    domain (Grafana, another service) cannot plant a session cookie on this one."""
    return f"__Host-{name}" if secure else name


def sign_in_cookie_name(name: str, *, secure: bool) -> str:
    """`name` with the `__Secure-` prefix when cookies travel over TLS (the sign-in cookie's
    path is the callback's, which `__Host-` does not allow)."""
    return f"__Secure-{name}" if secure else name


@dataclass(frozen=True, slots=True)
class Site:
    """A service people sign in to: its cookies, the value its page sends in CSRF_HEADER, and
    its own origin (a cookie-authenticated POST from anywhere else is refused)."""

    service: str
    session_cookie: str
    sign_in_cookie: str
    csrf_value: str
    origin: str
    secure: bool
    home: str = "/"


@dataclass(frozen=True, slots=True)
class Door:
    """One way in: `login_path` sends the person to the issuer `issuer_key` names in
    `app.state.issuers`; the issuer sends them back to `redirect_uri`; `admit` decides."""

    name: str
    login_path: str
    redirect_uri: str
    admit: Admission
    issuer_key: str
    # Extra authorization request parameters (ID-porten's `acr_values`).
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def callback_path(self) -> str:
        return urlsplit(self.redirect_uri).path or "/callback"


def refuse(status: int, field: str, problem: str) -> NoReturn:
    raise ApiError(status, "the sign-in was refused", [(field, problem)])


def staff_admission(names: ClaimNames, roles: tuple[str, ...], service: str) -> Admission:
    """Admit a person of a registered organisation whose role is one of `roles` and one their
    organisation's agency may have."""

    async def admit(claims: Mapping[str, Any], sessions: PersonSessions) -> SignedIn:
        person = person_from_claims(claims, names)
        agency = await sessions.agency_of(person.org_id)
        if agency is None:
            refuse(403, names.org[0], "not a registered organisation")
        if person.role not in roles:
            refuse(403, names.role, f"the {service} needs {' or '.join(roles)}")
        try:
            check_role(agency, person.role)
        except ValueError:
            refuse(403, names.role, "not a role of this organisation")
        return person

    return admit


def session_caller(site: Site, *roles: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller of a call that needs one of `roles`.

    A request with an `Authorization` header (or without a session cookie) is a system's,
    answered exactly as every other service answers bearer tokens. Otherwise the session cookie
    is the person's: `401` once the session has ended, `403` by role, and `403` for a POST the
    page's own script did not send (CSRF: the session cookie is SameSite=Strict as well).
    """
    bearer = principal_dependency(*roles)

    async def dependency(request: Request) -> Caller:
        session = request.cookies.get(site.session_cookie)
        if "authorization" in request.headers or session is None:
            principal = await bearer(request)
            return Caller(principal, Actor(token_id=principal.token_id))
        sessions: PersonSessions = request.app.state.sessions
        caller = await sessions.caller(session)
        if caller is None:
            raise ApiError(
                401,
                "the session has ended; sign in again",
                [(site.session_cookie, "unknown, ended or expired")],
                headers=_UNAUTHENTICATED,
            )
        _within_rate(request, caller.principal)
        if caller.principal.role not in roles:
            raise ApiError(403, f"this call needs the role {' or '.join(roles)}")
        if request.method not in ("GET", "HEAD"):
            _check_csrf(request, site)
        return caller

    return dependency


def _check_csrf(request: Request, site: Site) -> None:
    problem = csrf_problem(
        request.headers.get("origin"),
        request.headers.get(CSRF_HEADER),
        site.origin,
        site.csrf_value,
    )
    if problem is not None:
        raise ApiError(403, f"not sent by the {site.service} page", [(CSRF_HEADER, problem)])


def _within_rate(request: Request, principal: Principal) -> None:
    """429 with Retry-After when the person's organisation (a patient: their session) has used
    up its requests (an organisation shares the buckets of its tokens)."""
    buckets: TokenBuckets = request.app.state.rate_limits
    wait_s = buckets.take(principal.org_id or f"session:{principal.token_id}")
    if wait_s > 0:
        raise ApiError(
            429,
            "too many requests from this organisation; retry after the time in Retry-After",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )


def add_sign_in_routes(app: FastAPI, site: Site, doors: tuple[Door, ...]) -> None:
    """`GET <login_path>` and `GET <callback path>` for each door, and one `POST /logout`."""
    for door in doors:
        _add_door(app, site, door)

    @app.post(
        "/logout",
        status_code=204,
        description="End the person's session.",
        responses=error_responses(403),
    )
    async def logout(request: Request) -> Response:
        session = request.cookies.get(site.session_cookie)
        if session is not None:
            _check_csrf(request, site)
            sessions: PersonSessions = request.app.state.sessions
            await sessions.end(session)
            log.info(f"{site.service}.signed_out")
        response = Response(status_code=204)
        response.delete_cookie(
            site.session_cookie, path="/", secure=site.secure, httponly=True, samesite="strict"
        )
        return response


def _add_door(app: FastAPI, site: Site, door: Door) -> None:
    async def login(request: Request) -> RedirectResponse:
        issuer = _issuer(request, door)
        try:
            metadata = await issuer.metadata()
        except OidcError as error:
            raise ApiError(503, "sign-in is unavailable", [(error.field, error.problem)]) from None
        sessions: PersonSessions = request.app.state.sessions
        cookie, sign_in = await sessions.begin_sign_in(door.name)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": issuer.client_id,
                "redirect_uri": door.redirect_uri,
                "scope": "openid",
                "state": sign_in.state,
                "nonce": sign_in.nonce,
                "code_challenge": sign_in.code_challenge,
                "code_challenge_method": "S256",
                # The person proves who they are at every sign-in, never by the issuer's single
                # sign-on alone: on a shared computer a session there, left open, would sign
                # the next person in as the last one (a signed-out carebus session does not end
                # it).
                "prompt": "login",
                **door.extra,
            }
        )
        response = RedirectResponse(
            f"{metadata.authorization_endpoint}?{query}", status_code=303, headers=REDIRECT_HEADERS
        )
        # Lax, not Strict: it must come back with the issuer's (cross-site) redirect.
        response.set_cookie(
            site.sign_in_cookie,
            cookie,
            max_age=int(SIGN_IN_LIFETIME.total_seconds()),
            path=door.callback_path,
            secure=site.secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(
        request: Request,
        code: str | None = Query(default=None, max_length=2048),
        state: str | None = Query(default=None, max_length=512),
        error: str | None = Query(default=None, max_length=256),
    ) -> RedirectResponse:
        # The input rule (docs/design.md) for what the issuer's redirect carries: no control
        # or format characters; the state we issue is ASCII, so other text cannot match it.
        for name, value in (("code", code), ("state", state), ("error", error)):
            if value is not None and (problem := text_problem(value)) is not None:
                refuse(422, name, problem)
        if state is not None and not state.isascii():
            refuse(400, "state", "does not match the sign-in")
        issuer = _issuer(request, door)
        sessions: PersonSessions = request.app.state.sessions
        cookie = request.cookies.get(site.sign_in_cookie)
        if cookie is None:
            refuse(400, site.sign_in_cookie, "missing: no sign-in is in progress in this browser")
        expected = await sessions.pending_state(cookie, door.name)
        if expected is None:
            refuse(400, site.sign_in_cookie, "unknown or expired; sign in again")
        # The state is checked before the sign-in is used up, so a callback link someone else
        # made (without the state) cannot cancel the person's sign-in.
        if state is None or not secrets.compare_digest(state, expected):
            refuse(400, "state", "does not match the sign-in")
        sign_in = await sessions.finish_sign_in(cookie, door.name, state)  # once
        if sign_in is None:
            refuse(400, site.sign_in_cookie, "unknown or expired; sign in again")
        if error is not None:
            refuse(401, "error", "the issuer did not sign the person in")
        if not code:
            refuse(400, "code", "required")
        person = await _admitted(issuer, door, sessions, code, sign_in, site.service)
        session = await sessions.open(person)
        org_id = person.org_id if isinstance(person, Person) else None
        log.info(f"{site.service}.signed_in", door=door.name, org_id=org_id, role=person.role)
        response = RedirectResponse(site.home, status_code=303, headers=REDIRECT_HEADERS)
        response.delete_cookie(
            site.sign_in_cookie, path=door.callback_path, secure=site.secure, httponly=True
        )
        response.set_cookie(
            site.session_cookie,
            session,
            path="/",
            secure=site.secure,
            httponly=True,
            samesite="strict",
        )
        return response

    app.add_api_route(
        door.login_path,
        login,
        methods=["GET"],
        status_code=303,
        response_class=RedirectResponse,
        responses={303: _REDIRECT, **error_responses(503)},
        description=f"Sign a person in ({door.name}): a redirect to the OpenID Connect issuer.",
    )
    app.add_api_route(
        door.callback_path,
        callback,
        methods=["GET"],
        status_code=303,
        response_class=RedirectResponse,
        responses={303: _REDIRECT, **error_responses(401, 403, 503)},
        description="Where the issuer sends the person back: the code is exchanged, the ID "
        "token verified, a session opened, and the person sent to the page.",
    )


_REDIRECT: Final[dict[str, Any]] = {
    "description": "See Other: on to the issuer (login) or the page (callback).",
    "headers": {"Location": {"schema": {"type": "string"}}},
}


def _issuer(request: Request, door: Door) -> IssuerClient:
    issuers: Mapping[str, IssuerClient | None] = request.app.state.issuers
    issuer = issuers.get(door.issuer_key)
    if issuer is None:
        raise ApiError(503, "sign-in is not configured", [(door.issuer_key, "unset")])
    return issuer


async def _admitted(
    issuer: IssuerClient,
    door: Door,
    sessions: PersonSessions,
    code: str,
    sign_in: SignIn,
    service: str,
) -> SignedIn:
    """The person the issuer vouches for with `code`, if the door admits them; 401 naming what
    failed (503 when the issuer cannot be asked)."""
    try:
        id_token = await issuer.exchange(code, sign_in.code_verifier, door.redirect_uri)
        claims = await issuer.verify(id_token, sign_in.nonce)
        return await door.admit(claims, sessions)
    except OidcError as error:
        log.info(f"{service}.sign_in_refused", field=error.field, problem=error.problem)
        status = 503 if error.field == "issuer" else 401
        raise ApiError(status, "the sign-in was refused", [(error.field, error.problem)]) from None
