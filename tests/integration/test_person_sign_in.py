"""People sign in to the inbox through OpenID Connect (authorization code + PKCE) against the
bundled development issuer, over HTTP as a browser does; a second inbox against a test-controlled
issuer proves that ID tokens which do not hold are refused (docs/security.md, 3b)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import jwt
import pytest

from carebus.adapters.auth import create_token, ensure_organisation
from carebus.adapters.oidc import new_verifier, pkce_challenge
from carebus.adapters.sessions import CSRF_HEADER
from carebus_dev.oidc_issuer.app import PEOPLE_BY_KEY, SigningKey
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY
from carebus_dev.testing import ServiceProcess, TestStack, free_ports, through_issuer
from services.inbox.sign_in import CSRF_VALUE, SESSION_COOKIE, SIGN_IN_COOKIE

pytestmark = pytest.mark.integration

COORDINATOR = PEOPLE_BY_KEY["municipality-coordinator"]
OTHER_ORG = "974705788"  # the dev DPS
REQUEST_ID = re.compile(r'name="request" value="([^"]+)"')


@pytest.fixture(scope="module")
def inbox_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def redirect_env(stack: TestStack, inbox_port: int) -> dict[str, str]:
    """The inbox's redirect URL, registered with the issuer, on this module's own inbox port."""
    return {"CAREBUS_OIDC_REDIRECT_URL": f"{stack.settings.service_url(inbox_port)}/callback"}


@pytest.fixture(scope="module")
def issuer(stack: TestStack, redirect_env: dict[str, str]) -> Iterator[ServiceProcess]:
    service = stack.start_service("oidc_issuer", env=redirect_env)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def inbox(
    stack: TestStack,
    issuer: ServiceProcess,
    inbox_port: int,
    redirect_env: dict[str, str],
    db: asyncpg.Connection,  # the development people's organisations are registered
) -> Iterator[ServiceProcess]:
    service = stack.start_service("inbox", name="inbox-people", port=inbox_port, env=redirect_env)
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    await ensure_organisation(conn, agency="municipality", org_id=DEMO_MUNICIPALITY)
    await ensure_organisation(conn, agency="dps", org_id=OTHER_ORG)
    yield conn
    await conn.close()


async def add_alert(db: asyncpg.Connection, recipient: str, audience: str = "coordinator") -> str:
    """An open alert for `recipient`, written as the alert store sink would."""
    alert_id = f"alert-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    await db.execute(
        """
        INSERT INTO alerts (alert_id, rule_id, title, kind, status, subject_key, recipient_agency,
            recipient_org, audience, breached_at, escalate_at, summary, event_ids, rules_version)
        VALUES ($1, 'discharge-ready-reply', 'Reply to a discharge-ready notice',
            'deadline_missed', 'open', 'k', 'municipality', $2, $3, $4, $5, 'No reply.',
            ARRAY['dps-974705788-1'], 'test-1')
        """,
        alert_id,
        recipient,
        audience,
        now - timedelta(hours=1),
        now + timedelta(days=1),
    )
    return alert_id


def page_headers(inbox: ServiceProcess) -> dict[str, str]:
    """What the inbox page's own script sends with a POST."""
    return {CSRF_HEADER: CSRF_VALUE, "Origin": inbox.url or ""}


@asynccontextmanager
async def signed_in(
    inbox: ServiceProcess, person: str = "municipality-coordinator"
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser (an httpx client with a cookie jar) signed in as `person`."""
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as browser:
        callback = await through_issuer(browser, "/login", person, SIGN_IN_COOKIE)
        done = await browser.get(callback)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/"
        set_cookie = done.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "samesite=strict" in set_cookie.lower()
        assert "Path=/" in set_cookie
        yield browser


async def test_a_person_signs_in_sees_their_organisations_alerts_and_acks_as_themselves(
    inbox: ServiceProcess, issuer: ServiceProcess, db: asyncpg.Connection
) -> None:
    """The full code flow opens a session; the person sees only their organisation's alerts for
    their role, and their acknowledgement records their `sub` and issuer, not a token."""
    own = await add_alert(db, DEMO_MUNICIPALITY)
    officers = await add_alert(db, DEMO_MUNICIPALITY, audience="privacy_officer")
    others = await add_alert(db, OTHER_ORG)
    async with signed_in(inbox) as browser:
        listed = await browser.get("/v1/alerts", params={"limit": 1000})
        assert listed.status_code == 200, listed.text
        ids = {item["alert_id"] for item in listed.json()["items"]}
        assert own in ids
        assert officers not in ids
        assert others not in ids
        assert (await browser.get(f"/v1/alerts/{others}")).status_code == 404

        ack = await browser.post(f"/v1/alerts/{own}/ack", headers=page_headers(inbox))
        assert ack.status_code == 200, ack.text
        assert ack.json()["status"] == "acknowledged"
        assert ack.json()["acknowledged_by"] == {"sub": COORDINATOR.subject, "issuer": issuer.url}
    row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", own)
    assert row is not None
    assert row["acknowledged_by"] is None  # no token acted
    assert (row["acknowledged_by_subject"], row["acknowledged_by_issuer"]) == (
        COORDINATOR.subject,
        issuer.url,
    )
    session = await db.fetchrow(
        "SELECT * FROM person_sessions WHERE subject = $1 ORDER BY created_at DESC LIMIT 1",
        COORDINATOR.subject,
    )
    assert session is not None
    assert (session["org_id"], session["role"]) == (DEMO_MUNICIPALITY, "coordinator")
    lifetime = session["expires_at"] - session["created_at"]
    assert abs(lifetime - timedelta(hours=8)) < timedelta(seconds=1)


async def test_a_signed_in_person_looks_at_a_person_view_as_themselves(
    inbox: ServiceProcess, issuer: ServiceProcess, db: asyncpg.Connection
) -> None:
    """The person view takes the session like every inbox call; the disclosure log records the
    person's `sub` and issuer, and no token."""
    key = uuid.uuid4().hex * 2
    routing = {"consents": [], "team": {}, "home": DEMO_MUNICIPALITY, "home_source": "register"}
    await db.execute(
        "INSERT INTO sla_persons (subject_key, state, routing) VALUES ($1, '{}', $2::json)",
        key,
        json.dumps(routing),
    )
    async with signed_in(inbox) as browser:
        shown = await browser.get(f"/v1/persons/{key}/timeline")
        assert shown.status_code == 200, shown.text
        assert shown.json()["relations"] == ["home_municipality"]
    row = await db.fetchrow(
        "SELECT * FROM disclosure_lookups WHERE subject_key = $1 AND what = 'person_timeline'",
        key,
    )
    assert row is not None
    assert row["token_id"] is None
    assert (row["org_id"], row["role"]) == (DEMO_MUNICIPALITY, "coordinator")
    assert (row["looked_by_subject"], row["looked_by_issuer"]) == (COORDINATOR.subject, issuer.url)


async def test_a_cross_site_post_with_the_session_cookie_is_refused(
    inbox: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Without the page's header, or from another origin, a cookie POST is 403 and changes
    nothing."""
    alert_id = await add_alert(db, DEMO_MUNICIPALITY)
    async with signed_in(inbox) as browser:
        url = f"/v1/alerts/{alert_id}/resolve"
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "https://evil.example", CSRF_HEADER: CSRF_VALUE},
            {"Origin": inbox.url or "", "Content-Type": "application/x-www-form-urlencoded"},
        ):
            refused = await browser.post(url, headers=headers)
            assert refused.status_code == 403, (headers, refused.text)
            assert refused.json()["error"]["details"][0]["field"] == CSRF_HEADER
        logout = await browser.post("/logout", headers={"Origin": "https://evil.example"})
        assert logout.status_code == 403
        assert (await browser.get("/v1/alerts")).status_code == 200  # still signed in
    assert await db.fetchval("SELECT status FROM alerts WHERE alert_id = $1", alert_id) == "open"


async def test_logout_ends_the_session(inbox: ServiceProcess) -> None:
    """After POST /logout the old session cookie is refused everywhere."""
    async with signed_in(inbox) as browser:
        session = browser.cookies[SESSION_COOKIE]
        out = await browser.post("/logout", headers=page_headers(inbox))
        assert out.status_code == 204, out.text
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as replay:
        replay.cookies.set(SESSION_COOKIE, session)
        refused = await replay.get("/v1/alerts")
        assert refused.status_code == 401
        assert refused.json()["error"]["details"] == [
            {"field": SESSION_COOKIE, "problem": "unknown, ended or expired"}
        ]


async def test_an_open_stream_ends_within_seconds_of_logout(inbox: ServiceProcess) -> None:
    """A person's live stream re-checks the session every second: after logout it ends, and
    reconnecting with the old cookie is refused."""
    loop = asyncio.get_running_loop()
    async with signed_in(inbox) as browser:
        session = browser.cookies[SESSION_COOKIE]
        async with browser.stream("GET", "/v1/alerts/stream") as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await asyncio.wait_for(anext(lines), 10) == ": connected"
            out = await browser.post("/logout", headers=page_headers(inbox))
            assert out.status_code == 204, out.text
            ended_at = loop.time()

            async def until_the_end() -> None:
                async for line in lines:
                    assert line in ("", ": keepalive"), line

            await asyncio.wait_for(until_the_end(), 5)
            assert loop.time() - ended_at < 5
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as replay:
        replay.cookies.set(SESSION_COOKIE, session)
        assert (await replay.get("/v1/alerts/stream")).status_code == 401


async def test_an_expired_or_idle_session_is_refused(
    inbox: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Past its absolute end, or unused for 30 minutes, a session is over."""
    for column, moment in (("expires_at", "now()"), ("last_seen_at", "now() - interval '31 min'")):
        async with signed_in(inbox) as browser:
            assert (await browser.get("/v1/alerts")).status_code == 200
            await db.execute(
                f"UPDATE person_sessions SET {column} = {moment}"  # noqa: S608 - fixed texts
                " WHERE session_id = (SELECT session_id FROM person_sessions"
                " ORDER BY created_at DESC LIMIT 1)"
            )
            assert (await browser.get("/v1/alerts")).status_code == 401, column


async def test_a_replayed_callback_is_refused(inbox: ServiceProcess) -> None:
    """The callback URL works once, in the browser that started the sign-in: replayed in that
    browser, or in another, it opens no session."""
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as browser:
        callback = await through_issuer(browser, "/login", COORDINATOR.key, SIGN_IN_COOKIE)
        sign_in = browser.cookies[SIGN_IN_COOKIE]
        assert (await browser.get(callback)).status_code == 303
        browser.cookies.delete(SESSION_COOKIE)
        # Even with the sign-in cookie put back (captured with the URL), it works once only.
        browser.cookies.set(SIGN_IN_COOKIE, sign_in, path="/callback")
        again = await browser.get(callback)
        assert again.status_code == 400
        assert again.json()["error"]["details"] == [
            {"field": SIGN_IN_COOKIE, "problem": "unknown or expired; sign in again"}
        ]
        assert SESSION_COOKIE not in again.cookies
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as browser:
        callback = await through_issuer(browser, "/login", COORDINATOR.key, SIGN_IN_COOKIE)
        async with httpx.AsyncClient(timeout=10) as attacker:
            stolen = await attacker.get(callback)
            assert stolen.status_code == 400
            assert SESSION_COOKIE not in stolen.cookies


async def test_the_state_must_be_the_sign_ins(inbox: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as browser:
        callback = await through_issuer(browser, "/login", COORDINATOR.key, SIGN_IN_COOKIE)
        forged = callback.copy_set_param("state", "another-state")
        refused = await browser.get(forged)
        assert refused.status_code == 400
        assert refused.json()["error"]["details"][0]["field"] == "state"
        # Hostile values are refused by the input rule or as a mismatch, never a 5xx (a
        # non-ASCII state once made the constant-time comparison raise), and cancel nothing.
        for name, value, status in (
            ("state", "sta\u202ete", 422),
            ("code", "co\u0000de", 422),
            ("error", "den\u0085ied", 422),
            ("state", "søknad", 400),
        ):
            hostile = await browser.get(callback.copy_set_param(name, value))
            assert hostile.status_code == status, (name, hostile.text)
            assert hostile.json()["error"]["details"][0]["field"] == name
        # A callback link someone else made (an error, no state) cancels nothing: the real
        # callback, with its state, still signs the person in.
        cancelled = await browser.get("/callback", params={"error": "access_denied"})
        assert cancelled.status_code == 400
        assert cancelled.json()["error"]["details"][0]["field"] == "state"
        signed_in = await browser.get(callback)
        assert signed_in.status_code == 303, signed_in.text
        assert SESSION_COOKIE in signed_in.cookies


async def test_the_issuer_is_asked_for_a_fresh_sign_in(inbox: ServiceProcess) -> None:
    """`prompt=login`: the issuer's single sign-on session, left open on a shared computer,
    never signs the next person in as the last one."""
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as browser:
        login = await browser.get("/login")
        assert login.status_code == 303
        assert parse_qs(urlsplit(login.headers["location"]).query)["prompt"] == ["login"]


async def test_bearer_tokens_work_unchanged_beside_sessions(
    inbox: ServiceProcess, db: asyncpg.Connection
) -> None:
    """A system's token needs no CSRF header, acts for its own organisation even in a browser
    with a session, and its acknowledgement records the token, no person."""
    org = f"8{uuid.uuid4().int % 10**8:08d}"
    alert_id = await add_alert(db, org)
    bearer = await create_token(db, agency="municipality", org_id=org, role="coordinator")
    async with signed_in(inbox) as browser:
        headers = {"Authorization": f"Bearer {bearer}"}
        ids = {
            i["alert_id"]
            for i in (await browser.get("/v1/alerts", headers=headers)).json()["items"]
        }
        assert alert_id in ids
        ack = await browser.post(f"/v1/alerts/{alert_id}/ack", headers=headers)
        assert ack.status_code == 200, ack.text
        assert ack.json()["acknowledged_by"] is None
        wrong = await browser.get("/v1/alerts", headers={"Authorization": "Bearer cbt_nothing"})
        assert wrong.status_code == 401  # a bad token is not rescued by the session cookie
    row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", alert_id)
    assert row is not None
    assert row["acknowledged_by"] is not None
    assert row["acknowledged_by_subject"] is None
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as anonymous:
        nobody = await anonymous.get("/v1/alerts")
        assert nobody.status_code == 401
        assert nobody.json()["error"]["message"] == "a bearer token is required"


# --- the issuer: PKCE and single-use codes, over HTTP ---------------------------------------


async def issuer_code(issuer: ServiceProcess, redirect_uri: str, challenge: str) -> str:
    """A code for the coordinator, taken from the issuer's redirect (as an attacker who
    intercepted it would have it)."""
    async with httpx.AsyncClient(base_url=issuer.url or "", timeout=10) as client:
        page = await client.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": "carebus-inbox",
                "redirect_uri": redirect_uri,
                "scope": "openid",
                "state": "s",
                "nonce": "n",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        assert page.status_code == 200, page.text
        found = REQUEST_ID.search(page.text)
        assert found is not None
        chosen = await client.post(
            "/authorize", data={"request": found.group(1), "person": COORDINATOR.key}
        )
        return parse_qs(urlsplit(chosen.headers["location"]).query)["code"][0]


async def test_the_issuer_refuses_a_wrong_verifier_and_a_replayed_code(
    issuer: ServiceProcess, inbox: ServiceProcess, redirect_env: dict[str, str]
) -> None:
    redirect_uri = redirect_env["CAREBUS_OIDC_REDIRECT_URL"]
    verifier = new_verifier()

    async def exchange(code: str, code_verifier: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                f"{issuer.url}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "client_id": "carebus-inbox",
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
            )

    stolen = await issuer_code(issuer, redirect_uri, pkce_challenge(verifier))
    wrong = await exchange(stolen, new_verifier())
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"

    code = await issuer_code(issuer, redirect_uri, pkce_challenge(verifier))
    first = await exchange(code, verifier)
    assert first.status_code == 200, first.text
    assert jwt.decode(first.json()["id_token"], options={"verify_signature": False})["sub"] == (
        COORDINATOR.subject
    )
    replayed = await exchange(code, verifier)
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_grant"


async def test_the_issuer_refuses_an_unregistered_redirect_without_redirecting(
    issuer: ServiceProcess,
) -> None:
    async with httpx.AsyncClient(base_url=issuer.url or "", timeout=10) as client:
        refused = await client.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": "carebus-inbox",
                "redirect_uri": "https://evil.example/callback",
                "scope": "openid",
                "state": "s",
                "nonce": "n",
                "code_challenge": pkce_challenge(new_verifier()),
                "code_challenge_method": "S256",
            },
        )
    assert refused.status_code == 400
    assert "location" not in refused.headers
    assert refused.json()["error"]["details"][0]["field"] == "redirect_uri"


# --- ID tokens that do not hold, from a test-controlled issuer -----------------------------


class FakeIssuer:
    """An issuer in this process whose token endpoint answers `id_token` for any code."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.id_token = ""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._json(
                        {
                            "issuer": owner.url,
                            "authorization_endpoint": f"{owner.url}/authorize",
                            "token_endpoint": f"{owner.url}/token",
                            "jwks_uri": f"{owner.url}/jwks",
                        }
                    )
                elif self.path == "/jwks":
                    self._json(owner.key.jwks())
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self._json({"id_token": owner.id_token, "token_type": "Bearer"})

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, SigningKey]:
    folder: Path = tmp_path_factory.mktemp("fake-issuer")
    return SigningKey.load_or_create(folder / "a.pem"), SigningKey.load_or_create(folder / "b.pem")


@pytest.fixture(scope="module")
def fake_issuer(keys: tuple[SigningKey, SigningKey]) -> Iterator[FakeIssuer]:
    fake = FakeIssuer(keys[0])
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def fake_inbox(
    stack: TestStack, fake_issuer: FakeIssuer, db: asyncpg.Connection
) -> Iterator[ServiceProcess]:
    port = free_ports(1)[0]
    service = stack.start_service(
        "inbox",
        name="inbox-fake-issuer",
        port=port,
        env={
            "CAREBUS_OIDC_ISSUER_URL": fake_issuer.url,
            "CAREBUS_OIDC_REDIRECT_URL": f"{stack.settings.service_url(port)}/callback",
        },
    )
    yield service
    service.stop()


def id_claims(fake: FakeIssuer, sign_in_nonce: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": fake.url,
        "aud": "carebus-inbox",
        "sub": "fake-person",
        "iat": now,
        "exp": now + 300,
        "nonce": sign_in_nonce,
        "carebus_org": DEMO_MUNICIPALITY,
        "carebus_role": "coordinator",
    }
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    ("forge", "status", "field"),
    [
        ("valid", 303, None),
        ("wrong_nonce", 401, "nonce"),
        ("expired", 401, "id_token"),
        ("other_issuer", 401, "id_token"),
        ("other_key", 401, "id_token"),
        ("other_audience", 401, "id_token"),
        ("not_an_inbox_role", 403, "carebus_role"),
        ("unregistered_org", 403, "carebus_org"),
    ],
)
async def test_an_id_token_that_does_not_hold_opens_no_session(
    fake_inbox: ServiceProcess,
    fake_issuer: FakeIssuer,
    keys: tuple[SigningKey, SigningKey],
    forge: str,
    status: int,
    field: str | None,
) -> None:
    """Only a token signed by the issuer's key, from it, for the inbox, with the sign-in's
    nonce, unexpired, for a registered organisation and an inbox role, opens a session."""
    async with httpx.AsyncClient(base_url=fake_inbox.url or "", timeout=10) as browser:
        login = await browser.get("/login")
        assert login.status_code == 303, login.text
        sent = parse_qs(urlsplit(login.headers["location"]).query)
        nonce, state = sent["nonce"][0], sent["state"][0]
        assert (sent["code_challenge_method"], len(sent["code_challenge"][0])) == (["S256"], 43)
        now = int(time.time())
        forgeries: dict[str, dict[str, Any]] = {
            "valid": {},
            "wrong_nonce": {"nonce": "not-the-sign-ins"},
            "expired": {"iat": now - 900, "exp": now - 600},
            "other_issuer": {"iss": "https://elsewhere.example"},
            "other_key": {},
            "other_audience": {"aud": "another-client"},
            "not_an_inbox_role": {"carebus_role": "admin"},
            "unregistered_org": {"carebus_org": "811111111"},
        }
        changes = forgeries[forge]
        signer = keys[1] if forge == "other_key" else keys[0]
        fake_issuer.id_token = jwt.encode(
            id_claims(fake_issuer, nonce, **changes),
            signer.private_key,
            algorithm="RS256",
            headers={"kid": keys[0].kid},
        )
        answer = await browser.get("/callback", params={"code": "any", "state": state})
        assert answer.status_code == status, answer.text
        if field is None:
            assert SESSION_COOKIE in answer.cookies
        else:
            assert answer.json()["error"]["details"][0]["field"] == field
            assert SESSION_COOKIE not in answer.cookies
            assert (await browser.get("/v1/alerts")).status_code == 401
