"""The development OpenID Connect issuer: authorization code flow with PKCE (S256 only), RS256 ID
tokens, and a sign-in page that lists the development people instead of asking for a password.

It stands in for HelseID (staff) and ID-porten (patients: `pid` and `acr` claims, for the
audit service's patient client) on the local stack and in tests, with HelseID's strictness where it
matters to the client: exact redirect URIs, PKCE required, single-use codes that live 60 s,
`state` and `nonce` echoed. State (pending sign-ins, codes) is in memory: one process.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from carebus.adapters.http import ApiError, create_app
from carebus.adapters.oidc import pkce_matches
from carebus.runtime.config import Settings, get_settings
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY, OPERATOR_ORG

CODE_LIFETIME_S: Final = 60.0
SIGN_IN_LIFETIME_S: Final = 600.0
ID_TOKEN_LIFETIME_S: Final = 300
# The claims carrying the person's organisation number and carebus role (docs/operations.md
# maps HelseID's onto them).
ORG_CLAIM: Final = "carebus_org"
ROLE_CLAIM: Final = "carebus_role"
# Pending sign-ins and unused codes kept at most, so a flood of requests cannot fill memory.
MAX_PENDING: Final = 10_000
_SUB_NAMESPACE: Final = uuid.UUID("5b0c8a43-2f0e-4f4e-9d0e-6a8f3c1d2b7e")


@dataclass(frozen=True, slots=True)
class DevPerson:
    """A development person: what the sign-in page shows, and the claims they get."""

    key: str
    label: str
    org_id: str
    role: str

    @property
    def subject(self) -> str:
        # Stable and pseudonymous, like HelseID's `sub`: never derived from an identity number.
        return str(uuid.uuid5(_SUB_NAMESPACE, f"{self.org_id}:{self.role}"))


PEOPLE: Final = (
    DevPerson(
        "municipality-coordinator",
        "Coordinator, demo municipality",
        DEMO_MUNICIPALITY,
        "coordinator",
    ),
    DevPerson(
        "municipality-privacy-officer",
        "Privacy officer, demo municipality",
        DEMO_MUNICIPALITY,
        "privacy_officer",
    ),
    DevPerson("operator", "Operator, carebus", OPERATOR_ORG, "operator"),
)
PEOPLE_BY_KEY: Final = {person.key: person for person in PEOPLE}

ACR_HIGH: Final = "idporten-loa-high"
ACR_SUBSTANTIAL: Final = "idporten-loa-substantial"


@dataclass(frozen=True, slots=True)
class DevPatient:
    """A development patient as ID-porten would sign them in: a synthetic identity number (the
    tests' own) and the level of assurance of the means they chose."""

    key: str
    label: str
    person: str
    nin: str
    acr: str

    @property
    def subject(self) -> str:
        # ID-porten's `sub` is pseudonymous too: from the person's name here, never the number.
        return str(uuid.uuid5(_SUB_NAMESPACE, f"patient:{self.person}"))


PATIENTS: Final = (
    DevPatient("patient-kari-high", "Kari, BankID (high)", "kari", "14038512324", ACR_HIGH),
    DevPatient(
        "patient-kari-substantial",
        "Kari, MinID (substantial)",
        "kari",
        "14038512324",
        ACR_SUBSTANTIAL,
    ),
    DevPatient("patient-ola-high", "Ola, BankID (high)", "ola", "54038512318", ACR_HIGH),
)
PATIENTS_BY_KEY: Final = {patient.key: patient for patient in PATIENTS}


@dataclass(frozen=True, slots=True)
class Grant:
    """An authorization request the issuer accepted: where to send the code, and what binds it."""

    client_id: str
    redirect_uri: str
    state: str
    nonce: str
    code_challenge: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Code:
    grant: Grant
    person: DevPerson | DevPatient
    expires_at: float


class SigningKey:
    """The issuer's RSA key, generated once into the state dir (0600) and reused."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.private_key = private_key
        public = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(public).digest()[:12]).decode()

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it meanwhile: use that one
            else:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(pem)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise TypeError(f"{path} does not hold an RSA key")
        return cls(loaded)

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def key_path(settings: Settings) -> Path:
    return settings.state_dir / "oidc" / "issuer_key.pem"


def issuer_url(settings: Settings) -> str:
    return settings.oidc_issuer or settings.service_url(settings.oidc_issuer_port)


class Issuer:
    """The issuer's state: registered clients, pending sign-ins and unused codes."""

    def __init__(
        self,
        url: str,
        key: SigningKey,
        clients: dict[str, tuple[str, ...]],
        patient_clients: frozenset[str] = frozenset(),
    ) -> None:
        self.url = url
        self.key = key
        self.clients = clients
        # Clients that sign patients in (ID-porten's role): they are offered PATIENTS only.
        self.patient_clients = patient_clients
        self.pending: dict[str, Grant] = {}
        self.codes: dict[str, Code] = {}

    def accept(self, params: dict[str, str]) -> tuple[str, Grant]:
        """Check an authorization request; the id of the pending sign-in and its grant."""
        client_id = params.get("client_id", "")
        redirects = self.clients.get(client_id)
        if redirects is None:
            raise _bad("client_id", "unknown client")
        # Exact match, before anything is sent to it: an unregistered URI gets no redirect.
        if params.get("redirect_uri") not in redirects:
            raise _bad("redirect_uri", "not registered for this client")
        if params.get("response_type") != "code":
            raise _bad("response_type", "must be code")
        if "openid" not in params.get("scope", "").split():
            raise _bad("scope", "must include openid")
        for name in ("state", "nonce", "code_challenge"):
            if not 0 < len(params.get(name, "")) <= 512:
                raise _bad(name, "required, at most 512 characters")
        if params.get("code_challenge_method") != "S256":
            raise _bad("code_challenge_method", "must be S256")
        self._prune()
        grant = Grant(
            client_id,
            params["redirect_uri"],
            params["state"],
            params["nonce"],
            params["code_challenge"],
            time.monotonic() + SIGN_IN_LIFETIME_S,
        )
        request_id = secrets.token_urlsafe(24)
        self.pending[request_id] = grant
        return request_id, grant

    def choose(self, request_id: str, person_key: str) -> str:
        """The redirect that gives the client a code for `person_key`'s sign-in."""
        grant = self.pending.pop(request_id, None)
        if grant is None or grant.expires_at < time.monotonic():
            raise _bad("request", "unknown or expired sign-in; start again")
        person = self.people(grant.client_id).get(person_key)
        if person is None:
            raise _bad("person", "unknown")
        code = secrets.token_urlsafe(32)
        self.codes[code] = Code(grant, person, time.monotonic() + CODE_LIFETIME_S)
        query = urlencode({"code": code, "state": grant.state})
        return f"{grant.redirect_uri}?{query}"

    def redeem(self, form: dict[str, str]) -> dict[str, Any]:
        """The token response for a code exchange; TokenError when it is refused."""
        if form.get("grant_type") != "authorization_code":
            raise TokenError("unsupported_grant_type", "grant_type must be authorization_code")
        # Used once, whatever happens next: a refused exchange cannot be retried either.
        code = self.codes.pop(form.get("code", ""), None)
        if code is None or code.expires_at < time.monotonic():
            raise TokenError("invalid_grant", "code unknown, used or expired")
        grant = code.grant
        if form.get("client_id") != grant.client_id:
            raise TokenError("invalid_grant", "client_id does not match the code")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise TokenError("invalid_grant", "redirect_uri does not match the code")
        if not pkce_matches(form.get("code_verifier", ""), grant.code_challenge):
            raise TokenError("invalid_grant", "code_verifier does not match the code_challenge")
        now = int(time.time())
        id_token = self.key.sign(
            {
                "iss": self.url,
                "aud": grant.client_id,
                "sub": code.person.subject,
                "iat": now,
                "auth_time": now,
                "exp": now + ID_TOKEN_LIFETIME_S,
                "nonce": grant.nonce,
                **_person_claims(code.person),
            }
        )
        return {
            "access_token": secrets.token_urlsafe(32),  # required by OAuth; carebus ignores it
            "token_type": "Bearer",
            "expires_in": ID_TOKEN_LIFETIME_S,
            "id_token": id_token,
        }

    def people(self, client_id: str) -> dict[str, DevPerson | DevPatient]:
        """Whom a client's sign-in page offers."""
        if client_id in self.patient_clients:
            return dict(PATIENTS_BY_KEY)
        return dict(PEOPLE_BY_KEY)

    def _prune(self) -> None:
        now = time.monotonic()
        for table in (self.pending, self.codes):
            for key in [key for key, value in table.items() if value.expires_at < now]:
                del table[key]
        if len(self.pending) >= MAX_PENDING:
            self.pending.clear()


def _person_claims(person: DevPerson | DevPatient) -> dict[str, str]:
    if isinstance(person, DevPatient):
        return {"pid": person.nin, "acr": person.acr}
    return {ORG_CLAIM: person.org_id, ROLE_CLAIM: person.role}


class TokenError(Exception):
    """A refused token request, answered as RFC 6749 section 5.2 says."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"`{field}` is invalid", [(field, problem)])


def _form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a repeated field keeps its first value."""
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise _bad("body", "not a form") from None
    return {name: values[0] for name, values in parsed.items()}


def page_headers(redirect_uri: str) -> dict[str, str]:
    """The sign-in page's CSP: no script at all, and its forms may go only here and on (through
    the issuer's redirect) to the client's registered redirect URI."""
    parts = urlsplit(redirect_uri)
    return {
        "Content-Security-Policy": (
            "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
            f"form-action 'self' {parts.scheme}://{parts.netloc}"
        ),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def sign_in_page(request_id: str, people: Sequence[DevPerson | DevPatient] = PEOPLE) -> str:
    choices = "\n".join(
        '<form method="post" action="/authorize">'
        f'<input type="hidden" name="request" value="{html.escape(request_id)}">'
        f'<input type="hidden" name="person" value="{person.key}">'
        f'<button type="submit" id="person-{person.key}">{html.escape(person.label)}'
        f"{_suffix(person)}</button></form>"
        for person in people
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>carebus development sign-in</title>\n</head>\n<body>\n"
        "<h1>carebus development sign-in</h1>\n"
        "<p>Local development only: choose who you are.</p>\n"
        f"{choices}\n</body>\n</html>\n"
    )


def _suffix(person: DevPerson | DevPatient) -> str:
    return f" ({person.org_id})" if isinstance(person, DevPerson) else ""


def clients(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The registered clients and their redirect URIs: the inbox, the audit service's privacy
    officer and its patients (a client id shared by two of them gets both URIs)."""
    registered: dict[str, tuple[str, ...]] = {}
    for client_id, redirect in (
        (settings.oidc_client_id, settings.oidc_redirect),
        (settings.audit_oidc_client_id, settings.audit_oidc_redirect),
        (settings.patient_oidc_client_id, settings.patient_oidc_redirect),
    ):
        registered[client_id] = (*registered.get(client_id, ()), redirect)
    return registered


def build_app(settings: Settings | None = None) -> FastAPI:
    """The issuer, with its key from the state dir and carebus's clients registered."""
    settings = settings or get_settings()
    issuer = Issuer(
        issuer_url(settings),
        SigningKey.load_or_create(key_path(settings)),
        clients(settings),
        frozenset({settings.patient_oidc_client_id}),
    )
    app = create_app("oidc_issuer", title="carebus development OpenID Connect issuer")
    app.state.issuer = issuer

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> JSONResponse:
        return JSONResponse(
            {
                "issuer": issuer.url,
                "authorization_endpoint": f"{issuer.url}/authorize",
                "token_endpoint": f"{issuer.url}/token",
                "jwks_uri": f"{issuer.url}/jwks",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": ["openid"],
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nonce",
                    ORG_CLAIM,
                    ROLE_CLAIM,
                    "pid",
                    "acr",
                ],
                "acr_values_supported": [ACR_SUBSTANTIAL, ACR_HIGH],
            }
        )

    @app.get("/jwks")
    async def jwks() -> JSONResponse:
        return JSONResponse(issuer.key.jwks())

    @app.get("/authorize")
    async def authorize(request: Request) -> HTMLResponse:
        request_id, grant = issuer.accept(dict(request.query_params))
        people = list(issuer.people(grant.client_id).values())
        return HTMLResponse(
            sign_in_page(request_id, people), headers=page_headers(grant.redirect_uri)
        )

    @app.post("/authorize")
    async def choose(request: Request) -> Response:
        form = _form(await request.body())
        target = issuer.choose(form.get("request", ""), form.get("person", ""))
        return RedirectResponse(target, status_code=303)

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        try:
            answer = issuer.redeem(_form(await request.body()))
        except TokenError as error:
            return JSONResponse(
                {"error": error.error, "error_description": error.description}, status_code=400
            )
        return JSONResponse(answer, headers={"Pragma": "no-cache"})

    return app
