"""How people sign in to the inbox (`/login`, `/callback`, `/logout`: OpenID Connect
authorization code + PKCE) and how every inbox call finds its caller: a system's bearer token
exactly as before, or else a person's session cookie."""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response

from carebus.adapters.auth import check_role
from carebus.adapters.http import ApiError, principal_dependency
from carebus.adapters.oidc import ClaimNames, IssuerClient, OidcError, Person, person_from_claims
from carebus.adapters.ratelimit import TokenBuckets
from carebus.runtime.config import DEVELOPMENT_ENVIRONMENTS, Settings
from carebus.runtime.telemetry import get_logger
from services.inbox.alerts import INBOX_ROLES
from services.inbox.people import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_LIFETIME,
    SIGN_IN_PATH,
    Actor,
    Caller,
    PersonSessions,
    SignIn,
    csrf_problem,
    origin_of,
)

log = get_logger(__name__)

# The sign-in's redirects carry state, not personal data; still, no Referer leaves with them.
REDIRECT_HEADERS: Final = {"Referrer-Policy": "no-referrer"}
_UNAUTHENTICATED: Final = {"WWW-Authenticate": "Bearer"}


def _secure_cookies(settings: Settings) -> bool:
    # Local development and tests run on plain http; anywhere else cookies travel over TLS only.
    return settings.environment not in DEVELOPMENT_ENVIRONMENTS


def caller_dependency(settings: Settings) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller of an inbox call.

    A request with an `Authorization` header (or without a session cookie) is a system's,
    answered exactly as every other service answers bearer tokens. Otherwise the session cookie
    is the person's: `401` once the session has ended, `403` for a POST the page's own script
    did not send (CSRF: the session cookie is SameSite=Strict as well).
    """
    bearer = principal_dependency(*INBOX_ROLES)
    own_origin = origin_of(settings.oidc_redirect)

    async def dependency(request: Request) -> Caller:
        session = request.cookies.get(SESSION_COOKIE)
        if "authorization" in request.headers or session is None:
            principal = await bearer(request)
            return Caller(principal, Actor(token_id=principal.token_id))
        sessions: PersonSessions = request.app.state.sessions
        caller = await sessions.caller(session)
        if caller is None:
            raise ApiError(
                401,
                "the session has ended; sign in again",
                [(SESSION_COOKIE, "unknown, ended or expired")],
                headers=_UNAUTHENTICATED,
            )
        _within_rate(request, caller.principal.org_id)
        if caller.principal.role not in INBOX_ROLES:
            raise ApiError(403, f"this call needs the role {' or '.join(INBOX_ROLES)}")
        if request.method not in ("GET", "HEAD"):
            problem = csrf_problem(
                request.headers.get("origin"), request.headers.get(CSRF_HEADER), own_origin
            )
            if problem is not None:
                raise ApiError(403, "not sent by the inbox page", [(CSRF_HEADER, problem)])
        return caller

    return dependency


def _within_rate(request: Request, org_id: str) -> None:
    """429 with Retry-After when the person's organisation has used up its requests (the same
    buckets as its tokens')."""
    buckets: TokenBuckets = request.app.state.rate_limits
    wait_s = buckets.take(org_id)
    if wait_s > 0:
        raise ApiError(
            429,
            "too many requests from this organisation; retry after the time in Retry-After",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )


def add_sign_in_routes(app: FastAPI, settings: Settings) -> None:
    """`GET /login`, `GET /callback` and `POST /logout` on the inbox app."""
    names = ClaimNames.parse(settings.oidc_org_claims, settings.oidc_role_claim)
    secure = _secure_cookies(settings)
    redirect_uri = settings.oidc_redirect

    @app.get("/login", description="Sign a person in: a redirect to the OpenID Connect issuer.")
    async def login(request: Request) -> RedirectResponse:
        issuer = _issuer(request)
        try:
            metadata = await issuer.metadata()
        except OidcError as error:
            raise ApiError(503, "sign-in is unavailable", [(error.field, error.problem)]) from None
        sessions: PersonSessions = request.app.state.sessions
        cookie, sign_in = await sessions.begin_sign_in()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": issuer.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid",
                "state": sign_in.state,
                "nonce": sign_in.nonce,
                "code_challenge": sign_in.code_challenge,
                "code_challenge_method": "S256",
            }
        )
        response = RedirectResponse(
            f"{metadata.authorization_endpoint}?{query}", status_code=303, headers=REDIRECT_HEADERS
        )
        # Lax, not Strict: it must come back with the issuer's (cross-site) redirect.
        response.set_cookie(
            SIGN_IN_COOKIE,
            cookie,
            max_age=int(SIGN_IN_LIFETIME.total_seconds()),
            path=SIGN_IN_PATH,
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        return response

    @app.get(
        "/callback",
        description="Where the issuer sends the person back: the code is exchanged, the ID "
        "token verified, a session opened, and the person sent to the page.",
    )
    async def callback(
        request: Request,
        code: str | None = Query(default=None, max_length=2048),
        state: str | None = Query(default=None, max_length=512),
        error: str | None = Query(default=None, max_length=256),
    ) -> RedirectResponse:
        issuer = _issuer(request)
        sessions: PersonSessions = request.app.state.sessions
        cookie = request.cookies.get(SIGN_IN_COOKIE)
        if cookie is None:
            _refuse(400, SIGN_IN_COOKIE, "missing: no sign-in is in progress in this browser")
        sign_in = await sessions.finish_sign_in(cookie)  # once: a second try starts over
        if sign_in is None:
            _refuse(400, SIGN_IN_COOKIE, "unknown or expired; sign in again")
        if error is not None:
            _refuse(401, "error", "the issuer did not sign the person in")
        if state is None or not secrets.compare_digest(state, sign_in.state):
            _refuse(400, "state", "does not match the sign-in")
        if not code:
            _refuse(400, "code", "required")
        person = await _verified_person(issuer, names, code, redirect_uri, sign_in)
        agency = await sessions.agency_of(person.org_id)
        if agency is None:
            _refuse(403, names.org[0], "not a registered organisation")
        if person.role not in INBOX_ROLES:
            _refuse(403, names.role, f"the inbox needs {' or '.join(INBOX_ROLES)}")
        try:
            check_role(agency, person.role)
        except ValueError:
            _refuse(403, names.role, "not a role of this organisation")
        session = await sessions.open(person)
        log.info("inbox.signed_in", org_id=person.org_id, role=person.role)
        response = RedirectResponse("/", status_code=303, headers=REDIRECT_HEADERS)
        response.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN_PATH, secure=secure, httponly=True)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.post("/logout", status_code=204, description="End the person's session.")
    async def logout(request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None:
            problem = csrf_problem(
                request.headers.get("origin"),
                request.headers.get(CSRF_HEADER),
                origin_of(redirect_uri),
            )
            if problem is not None:
                raise ApiError(403, "not sent by the inbox page", [(CSRF_HEADER, problem)])
            sessions: PersonSessions = request.app.state.sessions
            await sessions.end(session)
            log.info("inbox.signed_out")
        response = Response(status_code=204)
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="strict"
        )
        return response


def _issuer(request: Request) -> IssuerClient:
    issuer: IssuerClient | None = request.app.state.issuer
    if issuer is None:
        raise ApiError(503, "sign-in is not configured", [("oidc_issuer_url", "unset")])
    return issuer


async def _verified_person(
    issuer: IssuerClient, names: ClaimNames, code: str, redirect_uri: str, sign_in: SignIn
) -> Person:
    """The person the issuer vouches for with `code`; 401 naming what failed (503 when the
    issuer cannot be asked)."""
    try:
        id_token = await issuer.exchange(code, sign_in.code_verifier, redirect_uri)
        return person_from_claims(await issuer.verify(id_token, sign_in.nonce), names)
    except OidcError as error:
        log.info("inbox.sign_in_refused", field=error.field, problem=error.problem)
        status = 503 if error.field == "issuer" else 401
        raise ApiError(status, "the sign-in was refused", [(error.field, error.problem)]) from None


def _refuse(status: int, field: str, problem: str) -> NoReturn:
    raise ApiError(status, "the sign-in was refused", [(field, problem)])
