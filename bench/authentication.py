"""What authenticating one request costs the gateway: an API token, or a system's JWT access token.

Part of the `cpu` section (issue 14, item 3: JWT access tokens are adopted only if they keep the
gateway within 10 % of today's cost per event). Measured in-process, in the same run:

- an API token through `TokenCache`, found in the cache (the steady state: a system sends many
  requests with one token, the cache keeps it 5 s);
- an RS256 JWT access token verified with PyJWT on every request (the worst case: a new token
  per request), its issuer's key already fetched (the JWKS is fetched once, not per request),
  checking the signature, iss, aud, exp, nbf, the required claims and the client's
  organisation;
- the same JWT through `TokenCache`, found in the cache (the steady state for a client that
  reuses its token until it expires, as client-credentials clients do).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Final

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.harness import Bench, Row
from carebus.adapters.access_tokens import (
    AccessTokens,
    OAuthClient,
    SigningKey,
    parse_jwks,
)
from carebus.adapters.auth import TokenCache
from carebus.runtime.config import HELSEID_ORG_CLAIM, OAuthIssuer, Settings
from carebus_dev.stack.devdata import ensure_dev_tokens

SECTION: Final = "cpu"
CALLS: Final = 20_000  # cache hits: ~1 µs each, well inside the cache's 5 s
VERIFICATIONS: Final = 5_000
ISSUER: Final = OAuthIssuer(
    issuer="https://helseid-sts.bench.invalid",
    jwks_url="https://helseid-sts.bench.invalid/.well-known/openid-configuration/jwks",
    audience="nhn:carebus",
)
CLIENT_ID: Final = "bench-dps-system"
KEY_ID: Final = "bench-key-1"


class _CachedKey:
    """The issuer's key as the JWKS cache holds it after its one fetch."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    async def key(self, issuer: OAuthIssuer, kid: str) -> SigningKey | None:
        return self._key if kid == KEY_ID else None


async def _cpu_per_call(calls: int, work: Callable[[], Awaitable[object]]) -> float:
    """Process CPU seconds per awaited call of `work`, after one call that fills caches."""
    await work()
    started = time.process_time()
    for _ in range(calls):
        await work()
    return (time.process_time() - started) / calls


def access_token(private_key: rsa.RSAPrivateKey, org_id: str, now: float) -> str:
    """A client-credentials access token as HelseID issues one (RS256, typ at+jwt)."""
    claims = {
        "iss": ISSUER.issuer,
        "aud": ISSUER.audience,
        "client_id": CLIENT_ID,
        "scope": "nhn:carebus/events",
        HELSEID_ORG_CLAIM: org_id,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 600,
        "jti": "bench-token-1",
    }
    headers = {"kid": KEY_ID, "typ": "at+jwt"}
    return jwt.encode(claims, private_key, algorithm="RS256", headers=headers)


def run(bench: Bench, settings: Settings) -> None:
    """The three rows, measured on the private stack's database (for the cache's misses)."""
    tokens = ensure_dev_tokens(settings)
    asyncio.run(_measure(bench, settings, tokens["dps"], tokens["orgs"]["dps"]))


async def _measure(bench: Bench, settings: Settings, api_token: str, org_id: str) -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    keys = parse_jwks({"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]})
    client = OAuthClient(ISSUER.issuer, CLIENT_ID, org_id)
    access = AccessTokens([ISSUER], [client], _CachedKey(keys[KEY_ID]))
    token = access_token(private_key, org_id, time.time())
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    try:
        api_tokens = TokenCache(pool, access_tokens=None, settings=settings)
        api_hit = await _cpu_per_call(CALLS, lambda: api_tokens.principal(api_token))
        verify = await _cpu_per_call(VERIFICATIONS, lambda: access.verify(token))
        jwt_tokens = TokenCache(pool, access_tokens=access, settings=settings)
        jwt_hit = await _cpu_per_call(CALLS, lambda: jwt_tokens.principal(token))
        if (await jwt_tokens.principal(token)) is None:
            raise RuntimeError("the benchmark's access token was refused")
    finally:
        await pool.close()
    _rows(bench, api_hit, verify, jwt_hit)


def _rows(bench: Bench, api_hit: float, verify: float, jwt_hit: float) -> None:
    key = "cpu.auth_api_token"
    bench.add(
        Row(
            SECTION,
            "authenticate a request: API token, TokenCache hit",
            api_hit * 1e6,
            "µs CPU",
            key=key,
            note=f"{CALLS:,} calls; today's steady state (SHA-256 of the token, a dict look-up)",
        )
    )
    bench.add(
        Row(
            SECTION,
            "authenticate a request: JWT access token verified (PyJWT, RS256)",
            verify * 1e6,
            "µs CPU",
            baseline=key,
            note=(
                f"{VERIFICATIONS:,} verifications, RSA-2048, key from the cached JWKS: signature, "
                "iss, aud, exp, nbf, required claims, client and organisation; the worst case "
                f"(a new token every request), {(verify - api_hit) * 1e6:,.1f} µs more per request"
            ),
        )
    )
    bench.add(
        Row(
            SECTION,
            "authenticate a request: JWT access token, TokenCache hit",
            jwt_hit * 1e6,
            "µs CPU",
            baseline=key,
            note=f"{CALLS:,} calls; a client reusing its token until it expires (remembered 5 s)",
        )
    )
