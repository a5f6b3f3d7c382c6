"""People sign in to the audit service through OpenID Connect (authorization code + PKCE) against
the bundled development issuer, over HTTP as a browser does: the privacy officer as at HelseID,
the patient as at ID-porten (`pid`, `acr`), whose identity number is never kept."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token, ensure_organisation
from carebus.adapters.sessions import CSRF_HEADER
from carebus.domain.identity import subject_key
from carebus_dev.oidc_issuer.app import PATIENTS_BY_KEY, PEOPLE_BY_KEY
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY, OPERATOR_ORG
from carebus_dev.testing import (
    ServiceProcess,
    TestStack,
    free_ports,
    insert_disclosure,
    through_issuer,
)
from services.audit.sign_in import CSRF_VALUE, SESSION_COOKIE, SIGN_IN_COOKIE

pytestmark = pytest.mark.integration

OFFICER = PEOPLE_BY_KEY["municipality-privacy-officer"]
KARI = PATIENTS_BY_KEY["patient-kari-high"]
OLA = PATIENTS_BY_KEY["patient-ola-high"]
QUERY = "/v1/disclosures/query"
ME = "/v1/me/disclosures"


@pytest.fixture(scope="module")
def audit_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def redirect_env(stack: TestStack, audit_port: int) -> dict[str, str]:
    """The audit service's two redirect URLs, registered with the issuer, on this module's own
    audit port."""
    url = stack.settings.service_url(audit_port)
    return {
        "CAREBUS_AUDIT_OIDC_REDIRECT_URL": f"{url}/callback",
        "CAREBUS_PATIENT_OIDC_REDIRECT_URL": f"{url}/patient/callback",
    }


@pytest.fixture(scope="module")
def issuer(stack: TestStack, redirect_env: dict[str, str]) -> Iterator[ServiceProcess]:
    service = stack.start_service("oidc_issuer", env=redirect_env)
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    await ensure_organisation(conn, agency="municipality", org_id=DEMO_MUNICIPALITY)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def audit(
    stack: TestStack,
    issuer: ServiceProcess,
    audit_port: int,
    redirect_env: dict[str, str],
    db: asyncpg.Connection,
) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit", name="audit-people", port=audit_port, env=redirect_env)
    yield service
    service.stop()


def key_of(stack: TestStack, nin: str) -> str:
    return subject_key(nin, stack.settings.subject_key_secret.get_secret_value())


def page_headers(audit: ServiceProcess) -> dict[str, str]:
    """What the audit page's own script sends with a POST."""
    return {CSRF_HEADER: CSRF_VALUE, "Origin": audit.url or ""}


@asynccontextmanager
async def signed_in(
    audit: ServiceProcess, login: str, person: str, seen: list[httpx.Response] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser (an httpx client with a cookie jar) signed in as `person` through `login`."""
    seen = [] if seen is None else seen
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as browser:
        done = await browser.get(await through_issuer(browser, login, person, SIGN_IN_COOKIE, seen))
        seen.append(done)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        set_cookie = done.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "samesite=strict" in set_cookie.lower()
        yield browser


async def session_row(db: asyncpg.Connection, cookie: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT * FROM person_sessions WHERE session_hash = $1",
        hashlib.sha256(cookie.encode()).digest(),
    )
    assert row is not None
    return row


async def test_the_page_offers_both_sign_ins_under_a_strict_csp(audit: ServiceProcess) -> None:
    """GET / is the audit page: both sign-in links, a script of its own and no inline one."""
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as browser:
        page = await browser.get("/")
        script = await browser.get("/static/audit.js")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<a id="signin-officer" href="/login">' in page.text
    assert '<a id="signin-patient" href="/patient/login">' in page.text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) == []
    assert script.status_code == 200
    assert '"X-Carebus-Request": "audit"' in script.text


async def test_a_privacy_officer_signs_in_and_the_lookup_records_them(
    stack: TestStack, audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """The privacy officer signs in at the staff issuer and queries; the lookup records their
    `sub` and issuer (no token), and their session is the audit service's, with no subject key."""
    key = key_of(stack, KARI.nin)
    event_id = await insert_disclosure(db, key, DEMO_MUNICIPALITY)
    async with signed_in(audit, "/login", OFFICER.key) as browser:
        answer = await browser.post(
            QUERY, json={"nin": KARI.nin, "purpose": "signed-in test"}, headers=page_headers(audit)
        )
        assert answer.status_code == 200, answer.text
        assert event_id in {item["event_id"] for item in answer.json()["items"]}
        not_a_patient = await browser.get(ME)
        assert not_a_patient.status_code == 403
        row = await session_row(db, browser.cookies[SESSION_COOKIE])
    assert (row["service"], row["role"], row["org_id"], row["subject_key"]) == (
        "audit",
        "privacy_officer",
        DEMO_MUNICIPALITY,
        None,
    )
    recorded = await db.fetchrow(
        "SELECT * FROM disclosure_lookups WHERE subject_key = $1 AND purpose = 'signed-in test'"
        " ORDER BY looked_at DESC LIMIT 1",
        key,
    )
    assert recorded is not None
    assert recorded["token_id"] is None
    assert recorded["looked_by_subject"] == OFFICER.subject
    assert recorded["looked_by_issuer"] == stack.settings.oidc_issuer
    assert (recorded["org_id"], recorded["role"]) == (DEMO_MUNICIPALITY, "privacy_officer")


async def test_a_coordinator_is_refused_at_sign_in_and_a_coordinator_session_at_the_query(
    stack: TestStack, audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Only a privacy officer is let in at /login; a session of another role (were there one)
    is refused the query with 403, and an inbox session is no audit session (401)."""
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as browser:
        callback = await through_issuer(
            browser, "/login", "municipality-coordinator", SIGN_IN_COOKIE, []
        )
        refused = await browser.get(callback)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["details"][0]["field"] == "carebus_role"
        assert SESSION_COOKIE not in browser.cookies
    for service, role, status in (("audit", "coordinator", 403), ("inbox", "privacy_officer", 401)):
        cookie = secrets.token_urlsafe(32)
        await db.execute(
            "INSERT INTO person_sessions (session_id, session_hash, service, issuer, subject,"
            " org_id, role, expires_at) VALUES ($1, $2, $3, 'i', 's', $4, $5,"
            " now() + interval '1 hour')",
            uuid.uuid4(),
            hashlib.sha256(cookie.encode()).digest(),
            service,
            DEMO_MUNICIPALITY,
            role,
        )
        async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as browser:
            browser.cookies.set(SESSION_COOKIE, cookie)
            answer = await browser.post(QUERY, json={"nin": KARI.nin}, headers=page_headers(audit))
        assert answer.status_code == status, (service, role, answer.text)


async def test_a_patient_signs_in_with_id_porten_and_reads_only_their_own_log(
    stack: TestStack, audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Kari signs in at level high and reads her log, not Ola's; she may not query anyone."""
    mine = await insert_disclosure(db, key_of(stack, KARI.nin), DEMO_MUNICIPALITY)
    others = await insert_disclosure(db, key_of(stack, OLA.nin), DEMO_MUNICIPALITY)
    seen: list[httpx.Response] = []
    async with signed_in(audit, "/patient/login", KARI.key, seen) as browser:
        asked = parse_qs(urlsplit(seen[0].headers["location"]).query)
        assert asked["acr_values"] == ["idporten-loa-high"]
        log = await browser.get(ME)
        assert log.status_code == 200, log.text
        texts = " ".join(row["text"] for row in log.json()["items"])
        events = {row.get("event_id") for row in log.json()["items"]}
        assert mine in events
        assert others not in events
        assert OLA.nin not in texts
        query = await browser.post(QUERY, json={"nin": OLA.nin}, headers=page_headers(audit))
        assert query.status_code == 403


async def test_a_patients_identity_number_is_kept_nowhere(
    stack: TestStack, audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """The pid is in the issuer's ID token only: not in the session row, not in any response of
    the sign-in (headers, cookies, redirects, bodies), not in the audit service's log."""
    seen: list[httpx.Response] = []
    async with signed_in(audit, "/patient/login", KARI.key, seen) as browser:
        seen.append(await browser.get(ME))
        row = await session_row(db, browser.cookies[SESSION_COOKIE])
        cookies = " ".join(f"{c.name}={c.value}" for c in browser.cookies.jar)
    assert (row["service"], row["role"], row["org_id"]) == ("audit", "patient", None)
    assert row["subject_key"] == key_of(stack, KARI.nin)
    assert row["subject"] == KARI.subject
    stored = await db.fetchval(
        "SELECT string_agg(row_to_json(s)::text, ' ') FROM person_sessions s"
    )
    assert KARI.nin not in stored
    assert KARI.nin not in cookies
    for response in seen:
        assert KARI.nin not in str(response.headers), response.url
        assert KARI.nin not in response.text, response.url
    assert KARI.nin not in audit.log_path.read_text()


async def test_a_patient_at_level_substantial_is_refused(
    audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """MinID (substantial) is not enough: 401 naming `acr`, no session, and no pid in the
    answer."""
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as browser:
        callback = await through_issuer(
            browser, "/patient/login", "patient-kari-substantial", SIGN_IN_COOKIE, []
        )
        refused = await browser.get(callback)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["details"][0]["field"] == "acr"
        assert SESSION_COOKIE not in browser.cookies
        assert KARI.nin not in refused.text


async def test_a_cookie_post_needs_the_pages_header_and_origin(audit: ServiceProcess) -> None:
    """Without the page's header, or from another origin, the query and the logout are 403."""
    async with signed_in(audit, "/login", OFFICER.key) as browser:
        for headers in (
            {"Origin": audit.url or ""},
            {"Origin": "https://evil.example", CSRF_HEADER: CSRF_VALUE},
        ):
            refused = await browser.post(QUERY, json={"nin": KARI.nin}, headers=headers)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["details"][0]["field"] == CSRF_HEADER
            out = await browser.post("/logout", headers=headers)
            assert out.status_code == 403
        still = await browser.post(QUERY, json={"nin": KARI.nin}, headers=page_headers(audit))
        assert still.status_code == 200, still.text


async def test_logout_ends_the_session(audit: ServiceProcess, db: asyncpg.Connection) -> None:
    """After POST /logout the cookie's session is refused, even if the cookie is replayed."""
    async with signed_in(audit, "/patient/login", KARI.key) as browser:
        session = browser.cookies[SESSION_COOKIE]
        out = await browser.post("/logout", headers=page_headers(audit))
        assert out.status_code == 204
    assert (await session_row(db, session))["ended_at"] is not None
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as replay:
        replay.cookies.set(SESSION_COOKIE, session)
        answer = await replay.get(ME)
        assert answer.status_code == 401
        assert answer.json()["error"]["details"] == [
            {"field": SESSION_COOKIE, "problem": "unknown, ended or expired"}
        ]


async def test_bearer_tokens_work_unchanged_beside_sessions(
    stack: TestStack, audit: ServiceProcess, db: asyncpg.Connection
) -> None:
    """A token needs no CSRF header and wins over a session cookie; its lookup records the
    token, no person."""
    key = key_of(stack, OLA.nin)
    await insert_disclosure(db, key, DEMO_MUNICIPALITY)
    officer = await create_token(
        db, agency="municipality", org_id=DEMO_MUNICIPALITY, role="privacy_officer"
    )
    patient = await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="patient", subject_key=key
    )
    async with signed_in(audit, "/patient/login", KARI.key) as browser:
        answer = await browser.post(
            QUERY,
            json={"nin": OLA.nin, "purpose": "token test"},
            headers={"Authorization": f"Bearer {officer}"},
        )
        assert answer.status_code == 200, answer.text
        log = await browser.get(ME, headers={"Authorization": f"Bearer {patient}"})
        assert log.status_code == 200
        wrong = await browser.get(ME, headers={"Authorization": "Bearer cbt_nothing"})
        assert wrong.status_code == 401  # a bad token is not rescued by the session cookie
    recorded = await db.fetchrow(
        "SELECT * FROM disclosure_lookups WHERE subject_key = $1 AND purpose = 'token test'", key
    )
    assert recorded is not None
    assert recorded["token_id"] is not None
    assert recorded["looked_by_subject"] is None
