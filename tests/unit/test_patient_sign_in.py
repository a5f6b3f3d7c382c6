"""The patient's sign-in (ID-porten): the level of assurance is required, the identity number
becomes the subject key and is never kept or quoted; the development issuer offers patients to
the patient client only, with `pid` and `acr` (docs/security.md, 3b)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from pydantic import SecretStr

from carebus.adapters.http import ApiError
from carebus.adapters.oidc import OidcError, Patient, patient_from_claims, pkce_challenge
from carebus.adapters.sessions import Door, SignedIn
from carebus.domain.identity import subject_key
from carebus.runtime.config import Settings
from carebus_dev.oidc_issuer.app import (
    ACR_HIGH,
    ACR_SUBSTANTIAL,
    PATIENTS,
    PATIENTS_BY_KEY,
    Issuer,
    SigningKey,
    clients,
    sign_in_page,
)
from services.audit.sign_in import audit_site
from services.inbox.sign_in import inbox_site

SECRET = "a-test-secret"
NIN = "14038512324"
ISSUER = "http://127.0.0.1:18084"
PATIENT_CLIENT = "carebus-audit-patient"
PATIENT_REDIRECT = "http://127.0.0.1:18082/patient/callback"
STAFF_CLIENT = "carebus-audit"
STAFF_REDIRECT = "http://127.0.0.1:18082/callback"


def patient_claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "sub": "pairwise-sub", "pid": NIN, "acr": ACR_HIGH}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def admit(claims: dict[str, Any]) -> Patient:
    return patient_from_claims(claims, pid_claim="pid", required_acr=ACR_HIGH, secret=SECRET)


def test_a_patient_is_their_sub_issuer_and_subject_key_only() -> None:
    patient = admit(patient_claims())
    assert patient == Patient(ISSUER, "pairwise-sub", subject_key(NIN, SECRET))
    assert NIN not in repr(patient)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"acr": ACR_SUBSTANTIAL}, "acr"),
        ({"acr": None}, "acr"),
        ({"pid": None}, "pid"),
        ({"pid": "14038512325"}, "pid"),  # a wrong check digit
        ({"pid": 14038512324}, "pid"),
        ({"sub": None}, "sub"),
    ],
)
def test_a_patient_sign_in_that_does_not_hold_is_refused_without_quoting_the_pid(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(OidcError) as refused:
        admit(patient_claims(**changes))
    assert refused.value.field == field
    assert NIN not in str(refused.value)
    assert "14038512325" not in str(refused.value)


def test_the_required_level_is_a_setting() -> None:
    """A deployment that accepts substantial says so; then substantial passes."""
    claims = patient_claims(acr=ACR_SUBSTANTIAL)
    patient = patient_from_claims(
        claims, pid_claim="pid", required_acr=ACR_SUBSTANTIAL, secret=SECRET
    )
    assert patient.subject_key == subject_key(NIN, SECRET)


def test_the_audit_services_redirects_default_to_its_own_callbacks() -> None:
    settings = Settings(environment="test")
    assert settings.audit_oidc_redirect.endswith(":18082/callback")
    assert settings.patient_oidc_redirect.endswith(":18082/patient/callback")
    assert settings.patient_oidc_issuer == settings.oidc_issuer
    assert (
        Settings(environment="production", subject_key_secret=SecretStr("s")).patient_oidc_issuer
        is None
    )


def test_a_doors_callback_is_its_redirect_uris_path() -> None:
    async def nobody(_claims: Any, _sessions: Any) -> SignedIn:
        raise ApiError(403, "no")

    door = Door("patient", "/patient/login", PATIENT_REDIRECT, nobody, "patient_oidc_issuer_url")
    assert door.callback_path == "/patient/callback"


# --- the development issuer as ID-porten ----------------------------------------------------


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    key = SigningKey.load_or_create(tmp_path / "key.pem")
    return Issuer(
        ISSUER,
        key,
        {PATIENT_CLIENT: (PATIENT_REDIRECT,), STAFF_CLIENT: (STAFF_REDIRECT,)},
        frozenset({PATIENT_CLIENT}),
    )


def authorize(issuer: Issuer, client: str, redirect: str) -> str:
    request_id, _ = issuer.accept(
        {
            "response_type": "code",
            "client_id": client,
            "redirect_uri": redirect,
            "scope": "openid",
            "state": "s",
            "nonce": "n",
            "code_challenge": pkce_challenge("v" * 43),
            "code_challenge_method": "S256",
        }
    )
    return request_id


def test_the_patient_client_gets_pid_and_acr_and_no_organisation(issuer: Issuer) -> None:
    kari = PATIENTS_BY_KEY["patient-kari-high"]
    target = issuer.choose(authorize(issuer, PATIENT_CLIENT, PATIENT_REDIRECT), kari.key)
    code = parse_qs(urlsplit(target).query)["code"][0]
    answer = issuer.redeem(
        {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": PATIENT_CLIENT,
            "redirect_uri": PATIENT_REDIRECT,
            "code_verifier": "v" * 43,
        }
    )
    claims = jwt.decode(answer["id_token"], options={"verify_signature": False})
    assert (claims["pid"], claims["acr"], claims["sub"]) == (kari.nin, ACR_HIGH, kari.subject)
    assert "carebus_org" not in claims
    assert "carebus_role" not in claims


def test_patients_are_offered_to_the_patient_client_only(issuer: Issuer) -> None:
    staff_request = authorize(issuer, STAFF_CLIENT, STAFF_REDIRECT)
    with pytest.raises(ApiError):
        issuer.choose(staff_request, "patient-kari-high")
    patient_request = authorize(issuer, PATIENT_CLIENT, PATIENT_REDIRECT)
    with pytest.raises(ApiError):
        issuer.choose(patient_request, "municipality-privacy-officer")


def test_development_patients_are_pseudonymous_and_valid() -> None:
    """Their `sub` is not derived from the identity number; one person, one `sub`; the page
    shows no identity number."""
    for patient in PATIENTS:
        assert patient.nin not in patient.subject
        assert patient.nin not in sign_in_page("r", PATIENTS)
    by_person = {(p.person, p.subject) for p in PATIENTS}
    assert len(by_person) == len({p.person for p in PATIENTS})


def test_the_issuer_registers_every_carebus_client() -> None:
    settings = Settings(environment="test")
    registered = clients(settings)
    assert registered[settings.oidc_client_id] == (settings.oidc_redirect,)
    assert registered[settings.audit_oidc_client_id] == (settings.audit_oidc_redirect,)
    assert registered[settings.patient_oidc_client_id] == (settings.patient_oidc_redirect,)


@pytest.mark.parametrize("environment", ["production", "staging"])
def test_cookies_outside_development_are_host_locked(environment: str, tmp_path: Path) -> None:
    """Outside local development the session cookies are `__Host-` (set only by this very host,
    so a sibling under the same domain cannot plant one) and the sign-in cookies `__Secure-`."""
    settings = Settings(
        environment=environment,
        state_dir=tmp_path,
        subject_key_secret=SecretStr("a-long-random-secret-from-a-file"),
    )
    for site in (audit_site(settings), inbox_site(settings)):
        assert site.secure
        assert site.session_cookie.startswith("__Host-carebus_")
        assert site.sign_in_cookie.startswith("__Secure-carebus_")
    local = audit_site(Settings(environment="local"))
    assert (local.session_cookie, local.sign_in_cookie) == (
        "carebus_audit_session",
        "carebus_audit_sign_in",
    )
