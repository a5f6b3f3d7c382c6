"""OAuth2 client-credentials access tokens (JWTs, HelseID's system-to-system model): verified
against a trusted issuer's published keys and mapped to the organisation its client speaks for.

A system may authenticate with such a token instead of a carebus API token (docs/security.md,
3c). Which issuers are trusted is a setting (`CAREBUS_OAUTH_ISSUERS`); which client of an issuer
acts as which organisation is the reviewed file `policy/oauth_clients.yaml`. Refusals carry a
fixed phrase naming what failed, never any of the token's content.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import jwt
import yaml
from jwt.utils import base64url_decode

from carebus.runtime.config import DEVELOPMENT_ENVIRONMENTS, OAuthIssuer, Settings
from carebus.runtime.telemetry import get_logger

log = get_logger(__name__)

# Clocks of issuer and carebus may differ this much (HelseID: "a few seconds"; kept small).
LEEWAY_S: Final = 30.0
# RFC 9068's type for JWT access tokens; HelseID also issues plain `JWT`.
_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt", "jwt"})
# A key id the cached key set lacks makes carebus fetch the set again, at most this often per
# issuer: a stream of forged key ids cannot turn into a stream of requests to the issuer.
JWKS_REFETCH_INTERVAL_S: Final = 60.0
# A key set is fetched again after this long even when every key id is known (removed keys).
JWKS_MAX_AGE_S: Final = 3600.0
JWKS_TIMEOUT_S: Final = 5.0
# Client-credentials tokens identify a system, never a person: only the system role for now.
CLIENT_ROLES: Final = ("system",)
# token_id of a principal authenticated by access token: one stable id per (issuer, client).
_CLIENT_NAMESPACE: Final = uuid.UUID("5c1d8a52-6f0e-4f55-9d5e-2c3a0b7e9a41")


class AccessTokenRefusedError(Exception):
    """Why an access token was refused: a fixed phrase, never any of the token's content."""


class OAuthClientsError(ValueError):
    """`policy/oauth_clients.yaml` is unreadable or invalid; the message names the entry."""


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """One reviewed entry: this issuer's client acts as `org_id` with `role`."""

    issuer: str
    client_id: str
    org_id: str
    role: str = "system"


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What a verified access token lets its client do, until `expires_at` (unix seconds)."""

    issuer: str
    client_id: str
    org_id: str
    role: str
    expires_at: float

    @property
    def token_id(self) -> uuid.UUID:
        """The id audit rows record for this client: the same for every token it is issued."""
        return uuid.uuid5(_CLIENT_NAMESPACE, f"{self.issuer} {self.client_id}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key of an issuer, with the algorithm its JWK pins, if it pins one."""

    key: Any  # a cryptography public key object (PyJWT's own type is Any too)
    algorithm: str | None


class SigningKeys(Protocol):
    """Where verification finds an issuer's public key by its key id."""

    async def key(self, issuer: OAuthIssuer, kid: str) -> SigningKey | None: ...


@dataclass
class _KeySet:
    keys: dict[str, SigningKey] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # the last successful fetch
    attempted_at: float = float("-inf")  # the last fetch, successful or not


Fetch = Callable[[str], Awaitable[bytes]]


class JwksKeys:
    """Each issuer's JSON Web Key Set, fetched on first use and kept: fetched again when a token
    names a key id the set lacks (at most every `refetch_interval_s`) or when the set is older
    than `max_age_s`, never per request. A failed fetch keeps the keys already known."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.monotonic,
        refetch_interval_s: float = JWKS_REFETCH_INTERVAL_S,
        max_age_s: float = JWKS_MAX_AGE_S,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refetch_interval_s = refetch_interval_s
        self._max_age_s = max_age_s
        self._sets: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, issuer: OAuthIssuer, kid: str) -> SigningKey | None:
        known = self._sets.get(issuer.issuer)
        if known is not None and kid in known.keys and not self._stale(known):
            return known.keys[kid]
        # Requests that miss together wait for one fetch instead of each making their own.
        async with self._locks.setdefault(issuer.issuer, asyncio.Lock()):
            known = self._sets.setdefault(issuer.issuer, _KeySet())
            missing = kid not in known.keys or self._stale(known)
            if missing and self._clock() - known.attempted_at >= self._refetch_interval_s:
                await self._refresh(issuer, known)
            return known.keys.get(kid)

    def _stale(self, known: _KeySet) -> bool:
        return self._clock() - known.fetched_at >= self._max_age_s

    async def _refresh(self, issuer: OAuthIssuer, known: _KeySet) -> None:
        known.attempted_at = self._clock()
        try:
            document = json.loads(await self._fetch(issuer.jwks_url))
            keys = parse_jwks(document)
        except (OSError, httpx.HTTPError, ValueError, TypeError) as exc:
            log.warning(
                "access_tokens.jwks_unavailable", issuer=issuer.issuer, error=type(exc).__name__
            )
            return
        known.keys, known.fetched_at = keys, known.attempted_at
        log.info("access_tokens.jwks_fetched", issuer=issuer.issuer, keys=len(keys))


def parse_jwks(document: object) -> dict[str, SigningKey]:
    """The signing keys of a JWKS document by key id; keys for encryption, without an id or of
    a type PyJWT cannot use are left out. ValueError when it is not a key set."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JSON Web Key Set")
    keys: dict[str, SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        # Signing keys of public-key types only: a symmetric (`oct`) key is never trusted.
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        algorithm = entry.get("alg")
        keys[entry["kid"]] = SigningKey(
            parsed.key, algorithm if isinstance(algorithm, str) else None
        )
    return keys


async def fetch_over_https(url: str) -> bytes:
    """GET `url`'s body; no redirects followed, no proxy from the environment."""
    async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_S, trust_env=False) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.content


class AccessTokens:
    """Verifies access tokens from `issuers` and maps each to its client's reviewed entry.

    The time comes from `clock` (unix seconds) and keys from `keys`, so tests choose both.
    """

    def __init__(
        self,
        issuers: Sequence[OAuthIssuer],
        clients: Iterable[OAuthClient],
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
        leeway_s: float = LEEWAY_S,
    ) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._clients = {(client.issuer, client.client_id): client for client in clients}
        self._keys = keys
        self._clock = clock
        self._leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessTokens | None:
        """The verifier the settings configure, or None when no issuer is trusted."""
        if not settings.oauth_issuers:
            return None
        if settings.environment not in DEVELOPMENT_ENVIRONMENTS:
            for issuer in settings.oauth_issuers:
                if not issuer.jwks_url.startswith("https://"):
                    raise ValueError(f"oauth_issuers: {issuer.issuer}'s jwks_url must be https")
        clients = load_clients(settings.oauth_clients, settings.oauth_issuers)
        return cls(settings.oauth_issuers, clients, JwksKeys(fetch_over_https))

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether `token` has a JWT's shape (three dot-separated parts); API tokens never do."""
        return token.count(".") == 2

    async def verify(self, token: str) -> AccessGrant:
        """The grant `token` carries; AccessTokenRefusedError says why it is refused."""
        header, unverified = _peek(token)
        issuer = self._issuers.get(_text(unverified.get("iss")))
        if issuer is None:
            raise AccessTokenRefusedError("the access token's issuer is not trusted")
        algorithm = _text(header.get("alg"))
        # Pinned per issuer: never `none`, never a shared-secret (HS) algorithm.
        if algorithm not in issuer.algorithms:
            raise AccessTokenRefusedError("the access token's signing algorithm is not accepted")
        if _text(header.get("typ")).lower() not in _TOKEN_TYPES:
            raise AccessTokenRefusedError("the access token's type (typ) is not an access token")
        kid = _text(header.get("kid"))
        key = await self._keys.key(issuer, kid) if kid else None
        if key is None:
            raise AccessTokenRefusedError("the access token is signed with an unknown key")
        if key.algorithm is not None and key.algorithm != algorithm:
            raise AccessTokenRefusedError("the access token's algorithm is not its key's")
        claims = self._verified_claims(token, key, algorithm, issuer)
        self._check_times(claims)
        return self._grant(claims, issuer)

    def _verified_claims(
        self, token: str, key: SigningKey, algorithm: str, issuer: OAuthIssuer
    ) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=issuer.audience,
                issuer=issuer.issuer,
                # Times are checked against the injected clock (_check_times), not PyJWT's.
                options={
                    "require": ["iss", "aud", "exp", "client_id"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise AccessTokenRefusedError("the access token is not for carebus (aud)") from None
        except jwt.MissingRequiredClaimError as missing:
            raise AccessTokenRefusedError(
                f"the access token lacks the claim {missing.claim}"
            ) from None
        except jwt.InvalidSignatureError:
            raise AccessTokenRefusedError("the access token's signature does not verify") from None
        except jwt.PyJWTError:
            raise AccessTokenRefusedError("the access token does not verify") from None

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        expires, not_before = claims["exp"], claims.get("nbf")
        if not _is_time(expires) or (not_before is not None and not _is_time(not_before)):
            raise AccessTokenRefusedError("the access token's exp or nbf is not a time")
        if now > expires + self._leeway_s:
            raise AccessTokenRefusedError("the access token has expired")
        if not_before is not None and now < not_before - self._leeway_s:
            raise AccessTokenRefusedError("the access token is not valid yet (nbf)")

    def _grant(self, claims: Mapping[str, Any], issuer: OAuthIssuer) -> AccessGrant:
        if "cnf" in claims:
            # A sender-constrained (DPoP) token is only safe with its proof checked.
            raise AccessTokenRefusedError(
                "the access token is bound to a proof-of-possession key, not accepted yet"
            )
        if issuer.scope is not None and issuer.scope not in _scopes(claims.get("scope")):
            raise AccessTokenRefusedError(f"the access token lacks the scope {issuer.scope}")
        client = self._clients.get((issuer.issuer, _text(claims["client_id"])))
        if client is None:
            raise AccessTokenRefusedError("the access token's client is not registered")
        org_id = claims.get(issuer.org_claim)
        if org_id is None:
            raise AccessTokenRefusedError(
                f"the access token lacks the organisation claim {issuer.org_claim}"
            )
        if org_id != client.org_id:
            raise AccessTokenRefusedError(
                "the access token's organisation is not its client's registered organisation"
            )
        return AccessGrant(
            issuer.issuer, client.client_id, client.org_id, client.role, float(claims["exp"])
        )


# HelseID's access tokens are ~1–2 KB; anything much longer is not one.
MAX_TOKEN_CHARS: Final = 8192


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of `token`, unverified: only to choose the issuer and its key.

    PyJWT parses the token again, strictly, when it verifies it (`_verified_claims`); a parse
    here instead of PyJWT's own unverified decode saves two of its strict parses (~60 µs each).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise AccessTokenRefusedError(
            f"the access token is longer than {MAX_TOKEN_CHARS} characters"
        )
    try:
        header_part, claims_part, _ = token.split(".")
        header = json.loads(base64url_decode(header_part))
        claims = json.loads(base64url_decode(claims_part))
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; a header of a thousand `[` is a
    # RecursionError (json), which must be a refusal (401), never a 500.
    except (ValueError, binascii.Error, RecursionError):
        raise AccessTokenRefusedError("the access token is not a well-formed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AccessTokenRefusedError("the access token is not a well-formed JWT")
    return header, claims


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scopes(value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [scope for scope in value if isinstance(scope, str)]
    return []


def load_clients(path: Path, issuers: Sequence[OAuthIssuer]) -> list[OAuthClient]:
    """Read and check the reviewed client file; OAuthClientsError names the entry at fault."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OAuthClientsError(f"cannot read {path}: {type(exc).__name__}") from None
    return build_clients(document, {issuer.issuer for issuer in issuers})


def build_clients(document: object, issuers: set[str]) -> list[OAuthClient]:
    """The entries of a parsed client file, each checked; a client listed twice is an error."""
    entries = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise OAuthClientsError("clients: must be a list")
    clients: list[OAuthClient] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        where = f"clients[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"issuer", "client_id", "org_id", "role"}:
            raise OAuthClientsError(f"{where}: must have issuer, client_id, org_id and role only")
        values = {name: entry.get(name) for name in ("issuer", "client_id", "org_id", "role")}
        for name, value in values.items():
            if not isinstance(value, str) or not value:
                raise OAuthClientsError(f"{where}.{name}: must be a non-empty string")
        client = OAuthClient(**values)  # type: ignore[arg-type]  # each checked to be a str
        if client.issuer not in issuers:
            raise OAuthClientsError(f"{where}.issuer: not an issuer of CAREBUS_OAUTH_ISSUERS")
        if not (len(client.org_id) == 9 and client.org_id.isdigit()):
            raise OAuthClientsError(f"{where}.org_id: must be a 9-digit organisation number")
        if client.role not in CLIENT_ROLES:
            raise OAuthClientsError(f"{where}.role: must be one of {', '.join(CLIENT_ROLES)}")
        if (client.issuer, client.client_id) in seen:
            raise OAuthClientsError(f"{where}: this issuer's client is listed twice")
        seen.add((client.issuer, client.client_id))
        clients.append(client)
    return clients
