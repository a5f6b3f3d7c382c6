"""OpenID Connect for people: PKCE, ID token verification and the claims carebus keeps.

A person is known to carebus by the issuer's `sub` (a pseudonymous id) and the issuer, their
organisation number and their carebus role; nothing else from the ID token is kept. HelseID's
person claims (`helseid://claims/identity/pid`, the national identity number) are never read.
A patient (ID-porten) is their `sub`, the issuer and the subject key of their `pid`: the
identity number itself is read once, to compute the key, and never kept.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt
from pydantic import SecretStr

from carebus.domain.identity import subject_key, validate_nin

# RFC 7636: a verifier is 43 to 128 characters of [A-Za-z0-9-._~].
_VERIFIER: Final = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_ORG_ID: Final = re.compile(r"^[0-9]{9}$")
# Clock difference tolerated between the issuer and carebus when checking exp and iat.
LEEWAY_S: Final = 30
# How long an issuer's discovery document and keys are reused before they are fetched again.
METADATA_TTL_S: Final = 300.0
SIGNING_ALGORITHMS: Final = ("RS256",)
# RFC 7523: the client authenticates with a JWT it signs (`private_key_jwt`), as HelseID requires.
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ASSERTION_LIFETIME_S: Final = 60


class OidcError(ValueError):
    """A sign-in that must be refused; `field` and `problem` are safe to show (no claim values)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def new_verifier() -> str:
    """A PKCE code verifier: 256 random bits, 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of `verifier` (RFC 7636, section 4.2)."""
    if not _VERIFIER.fullmatch(verifier):
        raise OidcError("code_verifier", "must be 43 to 128 unreserved characters")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is the one `challenge` was made from (constant time)."""
    try:
        expected = pkce_challenge(verifier)
    except OidcError:
        return False
    return secrets.compare_digest(expected, challenge)


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """Which ID token claims carry the organisation (first present wins) and the carebus role."""

    org: Sequence[str] = ("carebus_org",)
    role: str = "carebus_role"

    @classmethod
    def parse(cls, org_claims: str, role_claim: str) -> ClaimNames:
        names = tuple(name.strip() for name in org_claims.split(",") if name.strip())
        return cls(org=names or ("carebus_org",), role=role_claim)


@dataclass(frozen=True, slots=True)
class Person:
    """A signed-in person as carebus keeps them: no name, no national identity number."""

    issuer: str
    subject: str
    org_id: str
    role: str


def person_from_claims(claims: Mapping[str, Any], names: ClaimNames) -> Person:
    """The person of verified ID token `claims`; OidcError naming the claim that is missing."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise OidcError("sub", "missing or not 1 to 255 characters")
    org_id = next((claims[name] for name in names.org if name in claims), None)
    if not isinstance(org_id, str) or not _ORG_ID.fullmatch(org_id):
        raise OidcError(names.org[0], "missing or not a 9-digit organisation number")
    role = claims.get(names.role)
    if not isinstance(role, str) or not role:
        raise OidcError(names.role, "missing")
    return Person(issuer=str(claims["iss"]), subject=subject, org_id=org_id, role=role)


@dataclass(frozen=True, slots=True)
class Patient:
    """A signed-in patient as carebus keeps them: the issuer's `sub` and the subject key, never the
    national identity number it was computed from."""

    issuer: str
    subject: str
    subject_key: str
    role: str = "patient"


def patient_from_claims(
    claims: Mapping[str, Any], *, pid_claim: str, required_acr: str, secret: str
) -> Patient:
    """The patient of verified ID token `claims` (ID-porten's): the level of assurance must be
    `required_acr`; OidcError naming the claim otherwise, never quoting the identity number."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise OidcError("sub", "missing or not 1 to 255 characters")
    if claims.get("acr") != required_acr:
        raise OidcError("acr", f"the sign-in must be at level {required_acr}")
    pid = claims.get(pid_claim)
    if not isinstance(pid, str) or validate_nin(pid) is not None:
        raise OidcError(pid_claim, "missing or not a valid national identity number")
    return Patient(issuer=str(claims["iss"]), subject=subject, subject_key=subject_key(pid, secret))


def verify_id_token(
    id_token: str,
    keys: jwt.PyJWKSet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
) -> dict[str, Any]:
    """The claims of `id_token` once its RS256 signature (by one of `keys`), `iss`, `aud`, `exp`,
    `iat` and `nonce` hold; OidcError naming what does not."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.InvalidTokenError:
        raise OidcError("id_token", "not a JWT") from None
    if header.get("alg") not in SIGNING_ALGORITHMS:
        raise OidcError("id_token", "not signed with RS256")
    key = _key(keys, header.get("kid"))
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key.key,
            algorithms=list(SIGNING_ALGORITHMS),
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["iss", "aud", "exp", "iat", "sub", "nonce"]},
        )
    except jwt.ExpiredSignatureError:
        raise OidcError("id_token", "expired") from None
    except jwt.ImmatureSignatureError:
        raise OidcError("id_token", "issued in the future") from None
    except jwt.InvalidSignatureError:
        raise OidcError("id_token", "signature invalid") from None
    except jwt.InvalidIssuerError:
        raise OidcError("id_token", "from another issuer") from None
    except jwt.InvalidAudienceError:
        raise OidcError("id_token", "for another client") from None
    except jwt.MissingRequiredClaimError as error:
        raise OidcError("id_token", f"has no {error.claim}") from None
    except jwt.InvalidTokenError:
        raise OidcError("id_token", "invalid") from None
    if not secrets.compare_digest(str(claims["nonce"]), nonce):
        raise OidcError("nonce", "does not match the sign-in")
    return claims


def _key(keys: jwt.PyJWKSet, kid: object) -> jwt.PyJWK:
    for key in keys.keys:
        if kid is None or key.key_id == kid:
            return key
    raise OidcError("id_token", "signed with an unknown key")


def client_assertion(private_key_pem: str, client_id: str, audience: str) -> str:
    """A single-use RS256 client assertion (RFC 7523) for the token endpoint: the client is
    both its issuer and subject; the audience is the issuer (HelseID asks for its own URL)."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "nbf": now,
        "exp": now + CLIENT_ASSERTION_LIFETIME_S,
    }
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


@dataclass(frozen=True, slots=True)
class IssuerMetadata:
    """What a client needs of an issuer's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class IssuerClient:
    """An issuer's discovery document, keys and token endpoint, fetched when first needed and
    reused for METADATA_TTL_S (keys again at once when a token names one not yet seen)."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        http: httpx.AsyncClient,
        *,
        client_key: str | None = None,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._http = http
        self._client_key = client_key
        self._metadata: tuple[float, IssuerMetadata] | None = None
        self._keys: tuple[float, jwt.PyJWKSet] | None = None

    async def metadata(self) -> IssuerMetadata:
        if self._metadata is not None and self._metadata[0] > time.monotonic():
            return self._metadata[1]
        document = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        try:
            found = IssuerMetadata(
                issuer=str(document["issuer"]),
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
            )
        except KeyError as error:
            raise OidcError("issuer", f"discovery document has no {error.args[0]}") from None
        if found.issuer.rstrip("/") != self.issuer.rstrip("/"):
            raise OidcError("issuer", "discovery document names another issuer")
        self._metadata = (time.monotonic() + METADATA_TTL_S, found)
        return found

    async def keys(self, *, refresh: bool = False) -> jwt.PyJWKSet:
        if not refresh and self._keys is not None and self._keys[0] > time.monotonic():
            return self._keys[1]
        document = await self._get_json((await self.metadata()).jwks_uri)
        try:
            keys = jwt.PyJWKSet.from_dict(document)
        except jwt.PyJWTError:
            raise OidcError("issuer", "keys unusable") from None
        self._keys = (time.monotonic() + METADATA_TTL_S, keys)
        return keys

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token the issuer gives for `code`; OidcError("code", ...) when it refuses."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier,
        }
        if self._client_key is not None:
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = client_assertion(
                self._client_key, self.client_id, metadata.issuer
            )
        try:
            response = await self._http.post(
                metadata.token_endpoint, data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError:
            raise OidcError("issuer", "unreachable") from None
        if response.status_code != 200:
            raise OidcError("code", "refused by the issuer")
        try:
            id_token = response.json()["id_token"]
        except (ValueError, KeyError, TypeError):
            raise OidcError("issuer", "token response has no id_token") from None
        if not isinstance(id_token, str):
            raise OidcError("issuer", "token response has no id_token")
        return id_token

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """`verify_id_token` against this issuer's keys, fetched again once for a new key."""
        metadata = await self.metadata()
        try:
            return verify_id_token(
                id_token,
                await self.keys(),
                issuer=metadata.issuer,
                client_id=self.client_id,
                nonce=nonce,
            )
        except OidcError as error:
            if error.problem != "signed with an unknown key":
                raise
        return verify_id_token(
            id_token,
            await self.keys(refresh=True),
            issuer=metadata.issuer,
            client_id=self.client_id,
            nonce=nonce,
        )

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError):
            raise OidcError("issuer", "unreachable or not answering JSON") from None
        if not isinstance(document, dict):
            raise OidcError("issuer", "not answering a JSON object")
        return document


def issuer_client(
    url: str | None, client_id: str, http: httpx.AsyncClient, client_key: SecretStr | None
) -> IssuerClient | None:
    """The client of the issuer at `url` (None: that sign-in is not configured)."""
    if url is None:
        return None
    key = client_key.get_secret_value() if client_key is not None else None
    return IssuerClient(url, client_id, http, client_key=key)
