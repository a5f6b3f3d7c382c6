"""Systems authenticate to the gateway with OAuth2 client-credentials access tokens (JWTs) from a
trusted issuer, beside API tokens (docs/security.md, 3c): a real gateway, a test issuer whose
key set a small HTTP server in this test publishes."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from carebus.adapters.auth import create_token, ensure_organisation
from carebus.domain.identity import random_nin
from carebus.runtime.config import HELSEID_ORG_CLAIM
from carebus_dev.testing import ServiceProcess, TestStack, free_ports

pytestmark = pytest.mark.integration

DPS_ORG = "974705788"
MUNICIPALITY_ORG = "940493021"
CLIENT_ID = "dips-arena-test"
AUDIENCE = "nhn:carebus"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FORGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _KeySet(BaseHTTPRequestHandler):
    """Serves the issuer's JWKS at /jwks and counts the requests for it."""

    document: ClassVar[bytes] = b""
    requests: ClassVar[int] = 0

    def do_GET(self) -> None:
        if self.path != "/jwks":
            self.send_error(404)
            return
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """The test issuer's URL; its key set holds KEY under the key id `test-key`."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    _KeySet.document = json.dumps({"keys": [{**public, "kid": "test-key", "use": "sig"}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeySet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
async def api_token(stack: TestStack) -> str:
    """A DPS system's API token; it also registers the organisation in the directory (and the
    municipality the events name)."""
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        await ensure_organisation(conn, agency="municipality", org_id=MUNICIPALITY_ORG)
        return await create_token(conn, agency="dps", org_id=DPS_ORG, role="system")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def gateway(
    stack: TestStack, issuer: str, api_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A gateway that trusts the test issuer, its client acting as the DPS organisation."""
    clients = Path(tmp_path_factory.mktemp("oauth")) / "oauth_clients.yaml"
    clients.write_text(
        f"clients:\n  - issuer: {issuer}\n    client_id: {CLIENT_ID}\n"
        f'    org_id: "{DPS_ORG}"\n    role: system\n'
    )
    trusted = [{"issuer": issuer, "jwks_url": f"{issuer}/jwks", "audience": AUDIENCE}]
    env = {"CAREBUS_OAUTH_ISSUERS": json.dumps(trusted), "CAREBUS_OAUTH_CLIENTS": str(clients)}
    service = stack.start_service("gateway", port=free_ports(1)[0], env=env)
    yield service
    service.stop()


def access_token(issuer: str, key: rsa.RSAPrivateKey = KEY) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "client_id": CLIENT_ID,
        HELSEID_ORG_CLAIM: DPS_ORG,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-key", "typ": "at+jwt"})


def admission() -> dict[str, Any]:
    return {
        "event_id": f"dps-{DPS_ORG}-{uuid.uuid4().hex[:12]}",
        "event_type": "admission",
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "dps", "org_id": DPS_ORG, "system": "DIPS"},
        "subject": {"nin": random_nin(random.Random())},
        "payload": {
            "reason": "overdose",
            "admission_kind": "voluntary",
            "housing_status": "homeless",
            "needs_municipal_services": True,
            "home_municipality_org": MUNICIPALITY_ORG,
        },
    }


def post_event(gateway: ServiceProcess, token: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{gateway.port}/v1/events",
        json=admission(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_a_system_posts_events_with_its_access_token(
    gateway: ServiceProcess, issuer: str, api_token: str
) -> None:
    """A token from the trusted issuer for a registered client is accepted as that client's
    organisation (202); the key set is fetched once, not per request; API tokens still work."""
    token = access_token(issuer)
    for _ in range(3):
        answer = post_event(gateway, token)
        assert answer.status_code == 202, answer.text
    assert post_event(gateway, access_token(issuer)).status_code == 202
    assert _KeySet.requests == 1
    assert post_event(gateway, api_token).status_code == 202


def test_a_forged_access_token_is_refused_and_not_logged(
    gateway: ServiceProcess, issuer: str
) -> None:
    """A token signed with a key the issuer does not publish is 401 with the reason in DESIGN's
    error body; the gateway's log names the reason and holds nothing of the token."""
    forged = access_token(issuer, FORGER)
    answer = post_event(gateway, forged)
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert error["code"] == "unauthenticated"
    assert "signature does not verify" in error["message"]
    assert "invalid_token" in answer.headers["WWW-Authenticate"]
    log = gateway.log_text()
    assert "access_token_refused" in log
    for part in forged.split("."):
        assert part not in log
    assert CLIENT_ID not in log
