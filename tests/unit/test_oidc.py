"""OpenID Connect's pure parts: PKCE, ID token verification, the claims carebus keeps, the
development issuer's rules, and the inbox's CSRF rule."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from carebus.adapters.http import ApiError
from carebus.adapters.oidc import (
    CLIENT_ASSERTION_TYPE,
    ClaimNames,
    IssuerClient,
    OidcError,
    Person,
    new_verifier,
    person_from_claims,
    pkce_challenge,
    pkce_matches,
    verify_id_token,
)
from carebus.adapters.sessions import SignIn, csrf_problem
from carebus_dev.oidc_issuer.app import (
    CODE_LIFETIME_S,
    PEOPLE,
    Issuer,
    SigningKey,
    TokenError,
    page_headers,
    sign_in_page,
)
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY
from services.inbox.sign_in import CSRF_VALUE

ISSUER = "http://127.0.0.1:18084"
CLIENT = "carebus-inbox"
REDIRECT = "http://127.0.0.1:18083/callback"
HELSEID = ClaimNames.parse(
    "helseid://claims/client/claims/orgnr_child, helseid://claims/client/claims/orgnr_parent",
    "carebus_role",
)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("oidc") / "key.pem")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("other") / "key.pem")


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "7b0f2c9e-pseudonymous",
        "iat": now,
        "exp": now + 300,
        "nonce": "the-nonce",
        "carebus_org": DEMO_MUNICIPALITY,
        "carebus_role": "coordinator",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def verify(token: str, key: SigningKey, nonce: str = "the-nonce") -> dict[str, Any]:
    keys = jwt.PyJWKSet.from_dict(key.jwks())
    return verify_id_token(token, keys, issuer=ISSUER, client_id=CLIENT, nonce=nonce)


# --- PKCE -----------------------------------------------------------------------------------


def test_the_s256_challenge_is_rfc_7636s() -> None:
    """RFC 7636, appendix B: the example verifier gives the example challenge."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")


def test_only_the_verifier_a_challenge_was_made_from_matches_it() -> None:
    """Another verifier, a short one, or one with characters outside RFC 7636's do not match."""
    verifier = new_verifier()
    challenge = pkce_challenge(verifier)
    assert len(verifier) == 43
    assert pkce_matches(verifier, challenge)
    assert not pkce_matches(new_verifier(), challenge)
    assert not pkce_matches(verifier[:42], pkce_challenge(verifier))
    assert not pkce_matches(verifier[:-1] + "+", challenge)
    assert not pkce_matches(challenge, challenge)  # the challenge is not its own verifier
    with pytest.raises(OidcError, match="code_verifier"):
        pkce_challenge("short")


def test_every_sign_in_has_fresh_state_nonce_and_verifier() -> None:
    first, second = SignIn.new(), SignIn.new()
    assert len({first.state, first.nonce, second.state, second.nonce}) == 4
    assert first.code_verifier != second.code_verifier
    assert first.code_challenge == pkce_challenge(first.code_verifier)


# --- the claims carebus keeps ---------------------------------------------------------------


def test_a_person_is_their_sub_issuer_organisation_and_role_only() -> None:
    """Only sub, iss, the organisation and the role are kept: a HelseID pid never is."""
    person = person_from_claims(
        claims(**{"helseid://claims/identity/pid": "12345678901", "name": "A Person"}),
        ClaimNames(),
    )
    assert person == Person(ISSUER, "7b0f2c9e-pseudonymous", DEMO_MUNICIPALITY, "coordinator")
    assert "12345678901" not in repr(person)
    assert set(Person.__slots__) == {"issuer", "subject", "org_id", "role"}


def test_helseids_organisation_claims_map_child_first_then_parent() -> None:
    """HelseID names the sub-unit in orgnr_child and the legal entity in orgnr_parent."""
    parent = "helseid://claims/client/claims/orgnr_parent"
    child = "helseid://claims/client/claims/orgnr_child"
    both = claims(carebus_org=None, **{parent: "974705788", child: DEMO_MUNICIPALITY})
    assert person_from_claims(both, HELSEID).org_id == DEMO_MUNICIPALITY
    only_parent = claims(carebus_org=None, **{parent: "974705788"})
    assert person_from_claims(only_parent, HELSEID).org_id == "974705788"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sub": None}, "sub"),
        ({"sub": ""}, "sub"),
        ({"carebus_org": None}, "carebus_org"),
        ({"carebus_org": "94049302"}, "carebus_org"),
        ({"carebus_org": 940493021}, "carebus_org"),
        ({"carebus_role": None}, "carebus_role"),
    ],
)
def test_claims_without_what_carebus_needs_are_refused_naming_it(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(OidcError) as refused:
        person_from_claims(claims(**changes), ClaimNames())
    assert refused.value.field == field


# --- ID token verification ------------------------------------------------------------------


def test_a_valid_id_token_is_accepted(key: SigningKey) -> None:
    assert verify(key.sign(claims()), key)["sub"] == "7b0f2c9e-pseudonymous"


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"exp": int(time.time()) - 60}, "id_token", "expired"),
        ({"iss": "http://127.0.0.1:9/other"}, "id_token", "from another issuer"),
        ({"aud": "another-client"}, "id_token", "for another client"),
        ({"nonce": "another-nonce"}, "nonce", "does not match the sign-in"),
        ({"nonce": None}, "id_token", "has no nonce"),
        ({"exp": None}, "id_token", "has no exp"),
        ({"iat": int(time.time()) + 3600}, "id_token", "issued in the future"),
    ],
)
def test_an_id_token_that_does_not_hold_is_refused_naming_why(
    key: SigningKey, changes: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(OidcError) as refused:
        verify(key.sign(claims(**changes)), key)
    assert (refused.value.field, refused.value.problem) == (field, problem)


def test_an_id_token_signed_with_another_key_is_refused(
    key: SigningKey, other_key: SigningKey
) -> None:
    """Another key with the trusted key's id fails the signature; under its own id it is
    unknown."""
    forged = jwt.encode(
        claims(), other_key.private_key, algorithm="RS256", headers={"kid": key.kid}
    )
    with pytest.raises(OidcError, match="signature invalid"):
        verify(forged, key)
    with pytest.raises(OidcError, match="unknown key"):
        verify(other_key.sign(claims()), key)


def test_unsigned_and_shared_secret_tokens_are_refused(key: SigningKey) -> None:
    """`alg: none` and HS256 (with the public key as the secret) never pass."""
    unsigned = jwt.encode(claims(), "", algorithm="none")
    with pytest.raises(OidcError, match="RS256"):
        verify(unsigned, key)
    hmac = jwt.encode(claims(), "a-shared-secret-of-at-least-32-bytes!!", algorithm="HS256")
    with pytest.raises(OidcError, match="RS256"):
        verify(hmac, key)
    with pytest.raises(OidcError, match="not a JWT"):
        verify("not.a.jwt", key)


# --- the development issuer -----------------------------------------------------------------


def authorize_params(**changes: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "the-state",
        "nonce": "the-nonce",
        "code_challenge": pkce_challenge("v" * 43),
        "code_challenge_method": "S256",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


@pytest.fixture
def issuer(key: SigningKey) -> Issuer:
    return Issuer(ISSUER, key, {CLIENT: (REDIRECT,)})


def code_for(issuer: Issuer, person: str = "municipality-coordinator") -> str:
    request_id, _ = issuer.accept(authorize_params())
    target = urlsplit(issuer.choose(request_id, person))
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT
    query = parse_qs(target.query)
    assert query["state"] == ["the-state"]
    return query["code"][0]


def redeem(issuer: Issuer, code: str, verifier: str = "v" * 43) -> dict[str, Any]:
    return issuer.redeem(
        {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"client_id": "someone-else"}, "client_id"),
        ({"redirect_uri": REDIRECT + "/"}, "redirect_uri"),
        ({"redirect_uri": "http://127.0.0.1:18083/callback?x=1"}, "redirect_uri"),
        ({"code_challenge": None}, "code_challenge"),
        ({"code_challenge_method": None}, "code_challenge_method"),
        ({"code_challenge_method": "plain"}, "code_challenge_method"),
        ({"state": None}, "state"),
        ({"nonce": None}, "nonce"),
        ({"scope": "profile"}, "scope"),
        ({"response_type": "token"}, "response_type"),
    ],
)
def test_the_issuer_refuses_an_authorization_request_naming_the_field(
    issuer: Issuer, changes: dict[str, str | None], field: str
) -> None:
    """PKCE S256, state and nonce are required; the redirect URI must match exactly."""
    with pytest.raises(ApiError) as refused:
        issuer.accept(authorize_params(**changes))
    assert refused.value.status == 400
    assert [name for name, _ in refused.value.details] == [field]


def test_the_issuer_gives_an_id_token_for_the_chosen_person_once(issuer: Issuer) -> None:
    """The code gives one ID token with the nonce, sub, organisation and role; never again."""
    code = code_for(issuer)
    token = redeem(issuer, code)["id_token"]
    verified = verify(token, issuer.key)
    coordinator = PEOPLE[0]
    assert verified["sub"] == coordinator.subject
    assert (verified["carebus_org"], verified["carebus_role"]) == (
        DEMO_MUNICIPALITY,
        "coordinator",
    )
    with pytest.raises(TokenError, match="code unknown, used or expired"):
        redeem(issuer, code)


def test_a_wrong_verifier_is_refused_and_uses_the_code_up(issuer: Issuer) -> None:
    code = code_for(issuer)
    with pytest.raises(TokenError, match="code_verifier"):
        redeem(issuer, code, verifier="w" * 43)
    with pytest.raises(TokenError, match="code unknown, used or expired"):
        redeem(issuer, code)


def test_a_code_older_than_60_s_is_refused(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    code = code_for(issuer)
    later = time.monotonic() + CODE_LIFETIME_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        redeem(issuer, code)


def test_development_subjects_are_stable_and_pseudonymous() -> None:
    """The same person has the same sub in every run; no sub is an 11-digit number."""
    assert [person.subject for person in PEOPLE] == [person.subject for person in PEOPLE]
    assert len({person.subject for person in PEOPLE}) == len(PEOPLE)
    assert not any(person.subject.isdigit() for person in PEOPLE)


def test_the_sign_in_page_has_no_script_and_posts_only_on_to_the_client() -> None:
    page = sign_in_page("request-1")
    assert "<script" not in page
    assert "style=" not in page
    assert page.count('action="/authorize"') == len(PEOPLE)
    csp = page_headers(REDIRECT)["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:18083" in csp


def test_the_signing_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "oidc" / "issuer_key.pem"
    first = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load_or_create(path).kid == first.kid
    assert isinstance(first.private_key, rsa.RSAPrivateKey)


# --- the inbox's CSRF rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "header", "refused"),
    [
        ("http://127.0.0.1:18083", CSRF_VALUE, False),
        (None, CSRF_VALUE, False),
        ("http://127.0.0.1:18083", None, True),
        ("https://evil.example", CSRF_VALUE, True),
        ("http://127.0.0.1:18084", CSRF_VALUE, True),
        (None, "other", True),
    ],
)
def test_a_cookie_post_must_be_the_pages_own(
    origin: str | None, header: str | None, *, refused: bool
) -> None:
    assert (
        csrf_problem(origin, header, "http://127.0.0.1:18083", CSRF_VALUE) is not None
    ) is refused


# --- the inbox's client of the issuer -------------------------------------------------------


class FakeEndpoints:
    """An issuer's discovery, keys and token endpoint for httpx.MockTransport."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.token_forms: list[dict[str, str]] = []
        self.key_fetches = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/authorize",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                },
            )
        if request.url.path == "/jwks":
            self.key_fetches += 1
            return httpx.Response(200, json=self.key.jwks())
        form = {name: values[0] for name, values in parse_qs(request.content.decode()).items()}
        self.token_forms.append(form)
        return httpx.Response(200, json={"id_token": self.key.sign(claims())})


async def test_the_client_sends_the_verifier_and_a_signed_assertion(
    key: SigningKey, other_key: SigningKey
) -> None:
    """The code exchange carries the PKCE verifier and, with a client key, a private_key_jwt
    assertion signed by that key for the issuer; the ID token then verifies."""
    endpoints = FakeEndpoints(key)
    pem = other_key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoints)) as http:
        client = IssuerClient(ISSUER, CLIENT, http, client_key=pem)
        id_token = await client.exchange("the-code", "v" * 43, REDIRECT)
        assert (await client.verify(id_token, "the-nonce"))["sub"] == "7b0f2c9e-pseudonymous"
    form = endpoints.token_forms[0]
    assert (form["code"], form["code_verifier"], form["redirect_uri"]) == (
        "the-code",
        "v" * 43,
        REDIRECT,
    )
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assertion = jwt.decode(
        form["client_assertion"],
        other_key.private_key.public_key(),
        algorithms=["RS256"],
        audience=ISSUER,
    )
    assert (assertion["iss"], assertion["sub"]) == (CLIENT, CLIENT)
    assert assertion["exp"] - assertion["iat"] == 60


async def test_the_client_fetches_the_keys_again_for_a_rotated_key(
    key: SigningKey, other_key: SigningKey
) -> None:
    """After the issuer rotates its key, a token under the new key id verifies (one refetch);
    a public client sends no assertion."""
    endpoints = FakeEndpoints(key)
    async with httpx.AsyncClient(transport=httpx.MockTransport(endpoints)) as http:
        client = IssuerClient(ISSUER, CLIENT, http)
        await client.verify(key.sign(claims()), "the-nonce")
        endpoints.key = other_key
        await client.verify(other_key.sign(claims()), "the-nonce")
        assert endpoints.key_fetches == 2
        await client.exchange("the-code", "v" * 43, REDIRECT)
    assert "client_assertion" not in endpoints.token_forms[0]
