"""How people sign in to the audit service: the privacy officer at the staff issuer (HelseID, as
in the inbox) at `/login`, the patient with ID-porten at `/patient/login`; one session cookie
for both, ended by `POST /logout` (carebus.adapters.sessions does the work)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import httpx
from fastapi import FastAPI, Request

from carebus.adapters.oidc import ClaimNames, IssuerClient, issuer_client, patient_from_claims
from carebus.adapters.sessions import (
    Admission,
    Caller,
    Door,
    PersonSessions,
    SignedIn,
    Site,
    add_sign_in_routes,
    origin_of,
    session_caller,
    session_cookie_name,
    sign_in_cookie_name,
    staff_admission,
)
from carebus.runtime.config import DEVELOPMENT_ENVIRONMENTS, Settings

SESSION_COOKIE: Final = "carebus_audit_session"
SIGN_IN_COOKIE: Final = "carebus_audit_sign_in"
CSRF_VALUE: Final = "audit"
# Their keys in app.state.issuers, and the settings named when one is missing.
STAFF_ISSUER: Final = "oidc_issuer_url"
PATIENT_ISSUER: Final = "patient_oidc_issuer_url"
PRIVACY_OFFICER: Final = "privacy_officer"
PATIENT: Final = "patient"


def audit_site(settings: Settings) -> Site:
    # Local development and tests run on plain http; anywhere else cookies need TLS.
    secure = settings.environment not in DEVELOPMENT_ENVIRONMENTS
    return Site(
        service="audit",
        session_cookie=session_cookie_name(SESSION_COOKIE, secure=secure),
        sign_in_cookie=sign_in_cookie_name(SIGN_IN_COOKIE, secure=secure),
        csrf_value=CSRF_VALUE,
        origin=origin_of(settings.audit_oidc_redirect),
        secure=secure,
    )


def caller_dependency(settings: Settings, role: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: a caller with `role`, by bearer token or by session."""
    return session_caller(audit_site(settings), role)


def patient_admission(settings: Settings) -> Admission:
    """Admit an ID-porten person at the required level of assurance, as their subject key."""
    secret = settings.subject_key_secret.get_secret_value()

    async def admit(claims: Mapping[str, Any], _sessions: PersonSessions) -> SignedIn:
        return patient_from_claims(
            claims,
            pid_claim=settings.patient_oidc_pid_claim,
            required_acr=settings.patient_oidc_acr,
            secret=secret,
        )

    return admit


def issuers(settings: Settings, http: httpx.AsyncClient) -> dict[str, IssuerClient | None]:
    """The staff and the patient issuer's clients (None: that sign-in is not configured)."""
    return {
        STAFF_ISSUER: issuer_client(
            settings.oidc_issuer,
            settings.audit_oidc_client_id,
            http,
            settings.audit_oidc_client_key,
        ),
        PATIENT_ISSUER: issuer_client(
            settings.patient_oidc_issuer,
            settings.patient_oidc_client_id,
            http,
            settings.patient_oidc_client_key,
        ),
    }


def add_audit_sign_in(app: FastAPI, settings: Settings) -> None:
    """`GET /login` and `/callback` (privacy officer), `GET /patient/login` and
    `/patient/callback` (patient), `POST /logout`."""
    names = ClaimNames.parse(settings.oidc_org_claims, settings.oidc_role_claim)
    staff = Door(
        name="privacy_officer",
        login_path="/login",
        redirect_uri=settings.audit_oidc_redirect,
        admit=staff_admission(names, (PRIVACY_OFFICER,), "audit service"),
        issuer_key=STAFF_ISSUER,
    )
    patient = Door(
        name="patient",
        login_path="/patient/login",
        redirect_uri=settings.patient_oidc_redirect,
        admit=patient_admission(settings),
        issuer_key=PATIENT_ISSUER,
        extra={"acr_values": settings.patient_oidc_acr},
    )
    add_sign_in_routes(app, audit_site(settings), (staff, patient))
