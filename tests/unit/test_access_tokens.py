"""Systems' OAuth2 client-credentials access tokens (carebus.adapters.access_tokens): what is
accepted, what is refused and why, the JWKS cache, the reviewed client file, and the token
cache that puts them behind every service's bearer authentication."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any, Final

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from carebus.adapters.access_tokens import (
    AccessTokenRefusedError,
    AccessTokens,
    JwksKeys,
    OAuthClient,
    OAuthClientsError,
    build_clients,
    load_clients,
)
from carebus.adapters.auth import Principal, TokenCache, TokenRefusedError
from carebus.runtime.config import HELSEID_ORG_CLAIM, PROJECT_ROOT, OAuthIssuer, Settings

NOW: Final = 1_780_000_000.0
ISSUER: Final = OAuthIssuer(
    issuer="https://helseid-sts.test.invalid",
    jwks_url="https://helseid-sts.test.invalid/jwks",
    audience="nhn:carebus",
)
CLIENT_ID: Final = "dips-arena-dps"
ORG: Final = "974705788"
KEY: Final = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROTATED_KEY: Final = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", **extra}


def claims(**changes: Any) -> dict[str, Any]:
    """A valid token's claims at NOW, with `changes` (None removes a claim)."""
    base: dict[str, Any] = {
        "iss": ISSUER.issuer,
        "aud": ISSUER.audience,
        "client_id": CLIENT_ID,
        "scope": "nhn:carebus/events",
        HELSEID_ORG_CLAIM: ORG,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "7f3c",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def token(
    key: Any = KEY,
    algorithm: str = "RS256",
    kid: str = "key-1",
    typ: str = "at+jwt",
    **changes: Any,
) -> str:
    headers = {"kid": kid, "typ": typ}
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers=headers)


class Issuer:
    """The issuer's JWKS endpoint: which keys it publishes, and how often it was asked."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fails = False

    async def fetch(self, url: str) -> bytes:
        assert url == ISSUER.jwks_url
        self.fetches += 1
        if self.fails:
            raise OSError("connection refused")
        return json.dumps({"keys": self.keys}).encode()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(
    issuer: Issuer | None = None, clock: Callable[[], float] = lambda: NOW, **settings: Any
) -> AccessTokens:
    issuer = issuer or Issuer(jwk(KEY, "key-1"))
    trusted = ISSUER.model_copy(update=settings)
    keys = JwksKeys(issuer.fetch, clock=Clock(0.0))
    return AccessTokens([trusted], [OAuthClient(ISSUER.issuer, CLIENT_ID, ORG)], keys, clock=clock)


async def refusal(access: AccessTokens, presented: str) -> str:
    with pytest.raises(AccessTokenRefusedError) as refused:
        await access.verify(presented)
    return str(refused.value)


async def test_a_valid_token_grants_its_clients_organisation_and_role() -> None:
    """A token from the trusted issuer, for carebus, in time, from a registered client, grants
    the client's reviewed organisation and role; its id is the client's, stable."""
    grant = await verifier().verify(token())
    assert (grant.org_id, grant.role, grant.client_id) == (ORG, "system", CLIENT_ID)
    assert grant.expires_at == NOW + 300
    again = await verifier().verify(token(jti="another"))
    assert again.token_id == grant.token_id


async def test_ps256_and_a_list_audience_are_accepted() -> None:
    """HelseID may sign with PS256 and name carebus among several audiences."""
    grant = await verifier().verify(token(algorithm="PS256", aud=["nhn:other", "nhn:carebus"]))
    assert grant.org_id == ORG


@pytest.mark.parametrize(
    ("offset_s", "accepted"), [(-29.0, True), (-31.0, False)], ids=["in-leeway", "expired"]
)
async def test_an_expired_token_is_refused_beyond_30_seconds_of_skew(
    offset_s: float, accepted: bool
) -> None:
    """`exp` is checked against the injected clock with a 30-second leeway, no more."""
    presented = token(exp=int(NOW + offset_s))
    if accepted:
        assert await verifier().verify(presented)
    else:
        assert "expired" in await refusal(verifier(), presented)


async def test_a_token_not_valid_yet_is_refused() -> None:
    """`nbf` more than 30 seconds ahead of the clock is refused; a token without `exp` too."""
    assert "not valid yet" in await refusal(verifier(), token(nbf=int(NOW) + 31))
    assert await verifier().verify(token(nbf=int(NOW) + 29))
    assert "lacks the claim exp" in await refusal(verifier(), token(exp=None))


async def test_another_issuer_is_refused_even_with_a_trusted_key() -> None:
    """`iss` must be exactly a trusted issuer, whatever key signed the token."""
    assert "issuer is not trusted" in await refusal(
        verifier(), token(iss="https://helseid-sts.test.invalid/")
    )
    assert "issuer is not trusted" in await refusal(verifier(), token(iss=None))


async def test_a_token_for_another_audience_is_refused() -> None:
    """A token HelseID issued for another API cannot be replayed to carebus."""
    assert "(aud)" in await refusal(verifier(), token(aud="nhn:another-api"))
    assert "lacks the claim aud" in await refusal(verifier(), token(aud=None))


def _segment(part: dict[str, Any]) -> str:
    return jwt.utils.base64url_encode(json.dumps(part).encode()).decode()


def _unsigned() -> str:
    # Built by hand: PyJWT's typing does not offer `none`.
    header = {"alg": "none", "kid": "key-1", "typ": "at+jwt"}
    return f"{_segment(header)}.{_segment(claims())}."


async def test_unsigned_hmac_and_unpinned_algorithms_are_refused() -> None:
    """`alg` is pinned per issuer: `none`, HS256 keyed with the issuer's public key (the
    RS/HS confusion) and an algorithm the issuer is not trusted with are all refused."""
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Built by hand: PyJWT itself refuses to sign with a public key as an HMAC secret.
    header = {"alg": "HS256", "kid": "key-1", "typ": "at+jwt"}
    signing_input = ".".join(_segment(part) for part in (header, claims()))
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{jwt.utils.base64url_encode(mac).decode()}"
    for presented in (_unsigned(), hs256, token(algorithm="RS512")):
        assert "algorithm is not accepted" in await refusal(verifier(), presented)


async def test_a_key_pinned_to_another_algorithm_is_refused() -> None:
    """A JWK that names its algorithm verifies only tokens of that algorithm; symmetric keys
    and encryption keys in the key set are never used."""
    pinned = verifier(Issuer(jwk(KEY, "key-1", alg="RS256")))
    assert "not its key's" in await refusal(pinned, token(algorithm="PS256"))
    secret = {"kty": "oct", "kid": "key-1", "k": "c2VjcmV0", "use": "sig"}
    encryption = jwk(KEY, "key-1", use="enc")
    for unusable in (secret, encryption):
        assert "unknown key" in await refusal(verifier(Issuer(unusable)), token())


async def test_a_deeply_nested_or_overlong_token_is_refused_not_a_crash() -> None:
    """A JWT-shaped token whose header is a thousand `[` (json's RecursionError) and a token
    longer than any access token are refusals (401), never a 500."""
    nested = jwt.utils.base64url_encode(b"[" * 1000).decode()
    assert "well-formed" in await refusal(verifier(), f"{nested}.{nested}.x")
    assert "longer than" in await refusal(verifier(), "a" * 9000)


async def test_a_tampered_token_is_refused() -> None:
    """Changing a claim after signing, or signing with a key the issuer does not publish
    under that key id, breaks the signature."""
    header, _, signature = token().split(".")
    forged_claims = claims(**{HELSEID_ORG_CLAIM: "940493021"})
    body = jwt.utils.base64url_encode(json.dumps(forged_claims).encode()).decode()
    assert "signature does not verify" in await refusal(verifier(), f"{header}.{body}.{signature}")
    assert "signature does not verify" in await refusal(verifier(), token(key=ROTATED_KEY))


async def test_an_unknown_key_id_fetches_the_key_set_again_at_most_once_a_minute() -> None:
    """The issuer rotates its key: the first token with the new key id fetches the JWKS again
    and is accepted; unknown key ids within the next minute cost no request to the issuer."""
    issuer = Issuer(jwk(KEY, "key-1"))
    keys_clock = Clock(0.0)
    keys = JwksKeys(issuer.fetch, clock=keys_clock)
    clients = [OAuthClient(ISSUER.issuer, CLIENT_ID, ORG)]
    access = AccessTokens([ISSUER], clients, keys, clock=lambda: NOW)
    await access.verify(token())
    await access.verify(token())
    assert issuer.fetches == 1  # never per request
    issuer.keys.append(jwk(ROTATED_KEY, "key-2"))
    keys_clock.now = 61.0
    assert await access.verify(token(key=ROTATED_KEY, kid="key-2"))
    assert issuer.fetches == 2
    for attempt in range(5):
        assert "unknown key" in await refusal(access, token(kid=f"forged-{attempt}"))
    assert issuer.fetches == 2
    keys_clock.now = 122.0
    assert "unknown key" in await refusal(access, token(kid="forged"))
    assert issuer.fetches == 3


async def test_a_key_set_older_than_an_hour_is_fetched_again_and_kept_if_that_fails() -> None:
    """Removed keys stop verifying within the key set's maximum age; an issuer that cannot be
    reached leaves the known keys in use."""
    issuer = Issuer(jwk(KEY, "key-1"))
    keys_clock = Clock(0.0)
    keys = JwksKeys(issuer.fetch, clock=keys_clock)
    clients = [OAuthClient(ISSUER.issuer, CLIENT_ID, ORG)]
    access = AccessTokens([ISSUER], clients, keys, clock=lambda: NOW)
    await access.verify(token())
    keys_clock.now = 3601.0
    issuer.fails = True
    assert await access.verify(token())
    assert issuer.fetches == 2
    issuer.fails, issuer.keys = False, [jwk(ROTATED_KEY, "key-2")]
    keys_clock.now = 7300.0
    assert "unknown key" in await refusal(access, token())


async def test_the_client_must_be_registered_and_name_its_organisation() -> None:
    """The token's client must be in the reviewed file, and its organisation claim present and
    equal to the organisation the file gives it; refusals quote nothing from the token."""
    unregistered = await refusal(verifier(), token(client_id="someone-else"))
    assert "client is not registered" in unregistered
    assert "someone-else" not in unregistered
    without_org: dict[str, Any] = {HELSEID_ORG_CLAIM: None}
    assert HELSEID_ORG_CLAIM in await refusal(verifier(), token(**without_org))
    other_org: dict[str, Any] = {HELSEID_ORG_CLAIM: "940493021"}
    other = await refusal(verifier(), token(**other_org))
    assert "not its client's registered organisation" in other
    assert "940493021" not in other
    assert "lacks the claim client_id" in await refusal(verifier(), token(client_id=None))


async def test_the_issuers_scope_is_required_when_configured() -> None:
    """With a scope configured, a token without it is refused."""
    scoped = verifier(scope="nhn:carebus/events")
    assert await scoped.verify(token())
    assert "lacks the scope" in await refusal(scoped, token(scope="nhn:carebus/read"))


async def test_sender_constrained_and_non_access_tokens_are_refused() -> None:
    """A DPoP-bound token (`cnf`) is refused while carebus checks no proofs; a JWT that is not
    an access token (another `typ`) and a token that is not a JWT are refused."""
    assert "proof-of-possession" in await refusal(verifier(), token(cnf={"jkt": "abc"}))
    assert "(typ)" in await refusal(verifier(), token(typ="dpop+jwt"))
    assert await verifier().verify(token(typ="JWT"))
    assert "well-formed" in await refusal(verifier(), "not.a.jwt")


def test_only_public_key_algorithms_can_be_trusted() -> None:
    """Settings refuse an issuer trusted with `none` or an HMAC algorithm."""
    for algorithms in (("none",), ("RS256", "HS256"), ()):
        with pytest.raises(ValidationError, match="public-key"):
            ISSUER.model_validate({**ISSUER.model_dump(), "algorithms": algorithms})


def test_outside_development_the_key_set_comes_over_https() -> None:
    """A production issuer's JWKS URL must be https (its keys decide who may act as whom);
    without issuers there is no verifier at all."""
    plain = Settings(oauth_issuers=(ISSUER.model_copy(update={"jwks_url": "http://idp/jwks"}),))
    production = plain.model_copy(update={"environment": "production"})
    with pytest.raises(ValueError, match="jwks_url must be https"):
        AccessTokens.from_settings(production)
    assert AccessTokens.from_settings(plain) is not None
    assert AccessTokens.from_settings(Settings()) is None


def test_the_client_file_is_checked_entry_by_entry() -> None:
    """Each client names a trusted issuer, a 9-digit organisation and the system role, once;
    the error names the entry; the shipped file lists no client."""
    good = {"issuer": ISSUER.issuer, "client_id": CLIENT_ID, "org_id": ORG, "role": "system"}
    assert build_clients({"clients": [good]}, {ISSUER.issuer}) == [
        OAuthClient(ISSUER.issuer, CLIENT_ID, ORG)
    ]
    wrong = [
        ({**good, "role": "admin"}, r"clients\[0\]\.role"),
        ({**good, "org_id": "1234"}, r"clients\[0\]\.org_id"),
        ({**good, "issuer": "https://elsewhere"}, r"clients\[0\]\.issuer"),
        ({**good, "client_id": ""}, r"clients\[0\]\.client_id"),
        ({**good, "agency": "dps"}, r"clients\[0\]"),
    ]
    for entry, where in wrong:
        with pytest.raises(OAuthClientsError, match=where):
            build_clients({"clients": [entry]}, {ISSUER.issuer})
    with pytest.raises(OAuthClientsError, match=r"clients\[1\].*twice"):
        build_clients({"clients": [good, good]}, {ISSUER.issuer})
    assert load_clients(PROJECT_ROOT / "policy" / "oauth_clients.yaml", [ISSUER]) == []


class FakePool:
    """The database as the token cache asks it: API tokens and the organisation directory."""

    def __init__(self) -> None:
        self.agencies = {ORG: "dps", "940000000": "operator"}
        self.queries = 0

    async def fetchval(self, query: str, org_id: str) -> str | None:
        assert "FROM organisations" in query
        self.queries += 1
        return self.agencies.get(org_id)

    async def fetchrow(self, query: str, digest: bytes) -> dict[str, Any] | None:
        self.queries += 1
        return None  # no API token is known


async def test_the_token_cache_authenticates_a_system_by_access_token() -> None:
    """Behind every service's bearer authentication: a valid access token is the organisation's
    system with the directory's agency, verified once and then remembered; a refused one says
    why; an API-token-shaped token still goes to the API tokens."""
    pool = FakePool()
    cache = TokenCache(pool, access_tokens=verifier(clock=Clock()))  # type: ignore[arg-type]
    presented = token(exp=int(NOW) + 10**9)  # long-lived: the cache uses the real clock
    principal = await cache.principal(presented)
    assert principal is not None
    assert principal == Principal(principal.token_id, ORG, "dps", "system")
    assert isinstance(principal.token_id, uuid.UUID)
    assert await cache.principal(presented) == principal
    assert pool.queries == 1
    with pytest.raises(TokenRefusedError, match="expired"):
        await cache.principal(token(exp=int(NOW) - 60))
    pool.agencies.pop(ORG)
    with pytest.raises(TokenRefusedError, match="not registered"):
        await cache.principal(token(exp=int(NOW) + 10**9, jti="new"))
    assert await cache.principal("cbt_not-a-known-token") is None


async def test_an_access_token_past_its_expiry_is_not_remembered() -> None:
    """The cache keeps a verified token no longer than its own `exp` (and its 5 s TTL)."""
    pool = FakePool()
    clock = Clock()
    cache = TokenCache(pool, access_tokens=verifier(clock=clock))  # type: ignore[arg-type]
    # Expired by the wall clock, still valid by the verifier's (injected) clock.
    presented = token(exp=int(NOW) + 300)
    assert await cache.principal(presented) is not None
    clock.now = NOW + 400
    with pytest.raises(TokenRefusedError, match="expired"):
        await cache.principal(presented)


async def test_the_operators_organisation_cannot_be_a_system() -> None:
    """A client mapped to the operator's organisation is refused: its realm has no systems."""
    pool = FakePool()
    pool.agencies[ORG] = "operator"
    cache = TokenCache(pool, access_tokens=verifier(clock=Clock()))  # type: ignore[arg-type]
    with pytest.raises(TokenRefusedError, match="cannot have its client's role"):
        await cache.principal(token(exp=int(NOW) + 10**9))
