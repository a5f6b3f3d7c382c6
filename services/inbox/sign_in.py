"""How people sign in to the inbox (`/login`, `/callback`, `/logout`: OpenID Connect
authorization code + PKCE against the staff issuer, HelseID) and how every inbox call finds its
caller; the machinery is carebus.adapters.sessions, shared with the audit service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from fastapi import FastAPI, Request

from carebus.adapters.oidc import ClaimNames
from carebus.adapters.sessions import (
    Caller,
    Door,
    Site,
    add_sign_in_routes,
    origin_of,
    session_caller,
    session_cookie_name,
    sign_in_cookie_name,
    staff_admission,
)
from carebus.runtime.config import DEVELOPMENT_ENVIRONMENTS, Settings
from services.inbox.alerts import INBOX_ROLES

SESSION_COOKIE: Final = "carebus_session"
SIGN_IN_COOKIE: Final = "carebus_sign_in"
CSRF_VALUE: Final = "inbox"
# Its key in app.state.issuers, and the setting named when it is missing.
STAFF_ISSUER: Final = "oidc_issuer_url"


def inbox_site(settings: Settings) -> Site:
    # Local development and tests run on plain http; anywhere else cookies need TLS.
    secure = settings.environment not in DEVELOPMENT_ENVIRONMENTS
    return Site(
        service="inbox",
        session_cookie=session_cookie_name(SESSION_COOKIE, secure=secure),
        sign_in_cookie=sign_in_cookie_name(SIGN_IN_COOKIE, secure=secure),
        csrf_value=CSRF_VALUE,
        origin=origin_of(settings.oidc_redirect),
        secure=secure,
    )


def caller_dependency(settings: Settings) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller of an inbox call (a system's token or a session)."""
    return session_caller(inbox_site(settings), *INBOX_ROLES)


def add_inbox_sign_in(app: FastAPI, settings: Settings) -> None:
    """`GET /login`, `GET /callback` and `POST /logout` on the inbox app."""
    names = ClaimNames.parse(settings.oidc_org_claims, settings.oidc_role_claim)
    door = Door(
        name="staff",
        login_path="/login",
        redirect_uri=settings.oidc_redirect,
        admit=staff_admission(names, INBOX_ROLES, "inbox"),
        issuer_key=STAFF_ISSUER,
    )
    add_sign_in_routes(app, inbox_site(settings), (door,))
