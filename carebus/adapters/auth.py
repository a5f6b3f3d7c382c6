"""API tokens: one organisation and one role each, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from carebus.adapters.access_tokens import AccessTokenRefusedError, AccessTokens
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import get_logger
from carebus.wire.topics import AGENCIES

log = get_logger(__name__)

# `admin` is an agency's own administrator (its organisation's tokens and webhook); `operator`
# belongs to the organisation that runs carebus (the directory, the registers, every token);
# `patient` is a person reading their own disclosure log, bound to their subject key.
ROLES: Final = ("system", "coordinator", "privacy_officer", "admin", "operator", "patient")
# The operator's realm is not an agency: it sends no events and receives no deliveries.
OPERATOR: Final = "operator"
REALMS: Final = (*AGENCIES, OPERATOR)
# Roles each realm's tokens may have.
_REALM_ROLES: Final = {
    OPERATOR: ("operator", "privacy_officer", "patient"),
    **dict.fromkeys(AGENCIES, ("system", "coordinator", "privacy_officer", "admin")),
}
# A plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy
_ORG_ID: Final = re.compile(r"^[0-9]{9}$")
TOKEN_PREFIX: Final = "cbt_"  # noqa: S105 -- a prefix, not a secret
# How long a new token is accepted; rotate before then (`carebus token rotate`).
DEFAULT_LIFETIME: Final = timedelta(days=90)
# How long a rotated token stays valid beside its replacement, for the system to switch over.
DEFAULT_GRACE: Final = timedelta(hours=24)
# How long a token look-up is reused: a revoked or expired token is refused within this.
TOKEN_CACHE_TTL_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the organisation a token belongs to and the role it was given."""

    token_id: uuid.UUID
    org_id: str
    agency: str
    role: str
    # Only for `patient` tokens: the person the token reads about.
    subject_key: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.agency == OPERATOR


def generate_token() -> str:
    """A new bearer token: 256 random bits, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    # Tokens carry 256 bits of entropy, so a fast digest is as safe as a slow password hash.
    return hashlib.sha256(token.encode()).digest()


def check_organisation(agency: str, org_id: str) -> None:
    if agency not in REALMS:
        raise ValueError(f"unknown agency {agency!r}; expected one of {', '.join(REALMS)}")
    if not _ORG_ID.fullmatch(org_id):
        raise ValueError("org_id must be a 9-digit organisation number")


async def ensure_organisation(conn: Connection, *, agency: str, org_id: str) -> None:
    """Register the organisation if it is new; an org_id belongs to exactly one agency."""
    check_organisation(agency, org_id)
    registered = await conn.fetchval(
        """
        INSERT INTO organisations (org_id, agency) VALUES ($1, $2)
        ON CONFLICT (org_id) DO UPDATE SET org_id = EXCLUDED.org_id
        RETURNING agency
        """,
        org_id,
        agency,
    )
    if registered != agency:
        raise ValueError(f"organisation {org_id} is registered as {registered}, not {agency}")


def check_role(agency: str, role: str, subject_key: str | None = None) -> None:
    """Refuse a role the realm cannot have, and a patient token not bound to one person."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    allowed = _REALM_ROLES.get(agency, ())
    if role not in allowed:
        raise ValueError(f"a {agency} organisation's tokens have the roles {', '.join(allowed)}")
    if (role == "patient") != (subject_key is not None):
        raise ValueError("a patient token, and only a patient token, is bound to one person")


async def create_token(
    conn: Connection,
    *,
    agency: str,
    org_id: str,
    role: str,
    label: str = "",
    subject_key: str | None = None,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> str:
    """Create a token for `org_id` with `role`; only its digest is stored, the token is returned.

    A `patient` token is issued by the operator and bound to `subject_key`. The token is
    accepted for `lifetime`.
    """
    check_role(agency, role, subject_key)
    if lifetime <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    token = generate_token()
    async with conn.transaction():
        await ensure_organisation(conn, agency=agency, org_id=org_id)
        await _insert(conn, uuid.uuid4(), token, org_id, role, label, subject_key, lifetime)
    return token


async def _insert(
    conn: Connection,
    token_id: uuid.UUID,
    token: str,
    org_id: str,
    role: str,
    label: str,
    subject_key: str | None,
    lifetime: timedelta,
) -> None:
    await conn.execute(
        "INSERT INTO api_tokens"
        " (token_id, token_hash, org_id, role, label, subject_key, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval)",
        token_id,
        hash_token(token),
        org_id,
        role,
        label,
        subject_key,
        lifetime,
    )


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's record, never its secret."""

    token_id: uuid.UUID
    org_id: str
    role: str
    label: str
    expires_at: datetime
    revoked_at: datetime | None


def token_id_of(token_or_id: str) -> uuid.UUID | bytes:
    """What `token_or_id` names a token by: its id (a UUID) or, for a token, its digest."""
    if token_or_id.startswith(TOKEN_PREFIX):
        return hash_token(token_or_id)
    try:
        return uuid.UUID(token_or_id)
    except ValueError:
        raise ValueError("not a token id (a UUID) or a carebus token (cbt_...)") from None


async def find_token(conn: Connection, token_or_id: str) -> TokenInfo | None:
    """The record of a token named by its id or by the token itself."""
    named = token_id_of(token_or_id)
    column = "token_hash" if isinstance(named, bytes) else "token_id"
    row = await conn.fetchrow(
        "SELECT token_id, org_id, role, label, expires_at, revoked_at FROM api_tokens "  # noqa: S608
        f"WHERE {column} = $1",
        named,
    )
    return None if row is None else TokenInfo(**dict(row))


async def revoke_token(conn: Connection, token_id: uuid.UUID) -> bool:
    """Refuse the token from now on (within TOKEN_CACHE_TTL_S everywhere); False if it was
    already revoked or does not exist."""
    revoked = await conn.fetchval(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL"
        " RETURNING token_id",
        token_id,
    )
    return revoked is not None


async def rotate_token(
    conn: Connection,
    token_id: uuid.UUID,
    *,
    grace: timedelta = DEFAULT_GRACE,
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> str:
    """A new token with the same organisation, role and label; the old one stays valid for
    `grace` (both are accepted meanwhile), then expires. ValueError for a token that is
    revoked, expired or unknown."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT org_id, role, label, subject_key FROM api_tokens WHERE token_id = $1"
            " AND revoked_at IS NULL AND expires_at > now() FOR UPDATE",
            token_id,
        )
        if row is None:
            raise ValueError("no valid token with this id (revoked, expired or unknown)")
        token, new_id = generate_token(), uuid.uuid4()
        await _insert(
            conn,
            new_id,
            token,
            row["org_id"],
            row["role"],
            row["label"],
            row["subject_key"],
            lifetime,
        )
        await conn.execute(
            "UPDATE api_tokens SET replaced_by = $2,"
            " expires_at = least(expires_at, now() + $3::interval) WHERE token_id = $1",
            token_id,
            new_id,
            grace,
        )
    return token


async def lookup_token(conn: Connection | asyncpg.Pool, token: str) -> Principal | None:
    """The principal behind a bearer token, or None if it is unknown, revoked or expired."""
    row = await conn.fetchrow(
        """
        SELECT t.token_id, t.org_id, o.agency, t.role, t.subject_key
        FROM api_tokens t JOIN organisations o USING (org_id)
        WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now()
        """,
        hash_token(token),
    )
    if row is None:
        return None
    return Principal(row["token_id"], row["org_id"], row["agency"], row["role"], row["subject_key"])


class TokenRefusedError(Exception):
    """Why an access token is refused, in words fit for the 401: never any of the token itself."""


class TokenCache:
    """Remembers recent token look-ups so a busy gateway does not query PostgreSQL per request.

    A revoked or expired token stays usable for at most `ttl_s` seconds. Where the settings
    trust an issuer, a system's access token (a JWT, docs/security.md 3c) is verified once and
    then remembered the same way, never past its own expiry.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl_s: float = TOKEN_CACHE_TTL_S,
        max_entries: int = 10_000,
        *,
        access_tokens: AccessTokens | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._access = access_tokens or AccessTokens.from_settings(settings or get_settings())
        # A principal; None for an unknown API token; why an access token is refused.
        self._entries: dict[bytes, tuple[float, Principal | str | None]] = {}

    async def principal(self, token: str) -> Principal | None:
        """The principal behind `token`; None for an API token that is unknown, revoked or
        expired; TokenRefusedError (saying why) for an access token that is refused."""
        key = hash_token(token)
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            found, ttl_s = await self._look_up(token)
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = (now + ttl_s, found)
        if isinstance(found, str):
            raise TokenRefusedError(found)
        return found

    async def _look_up(self, token: str) -> tuple[Principal | str | None, float]:
        """What `token` stands for and how long that may be remembered. Refusals are
        remembered briefly too, so guessing or replaying cannot load the database or the CPU."""
        if self._access is None or not AccessTokens.looks_like_jwt(token):
            principal = await lookup_token(self._pool, token)
            return principal, (self._ttl_s if principal else 2.0)
        try:
            grant = await self._access.verify(token)
            agency = await self._pool.fetchval(
                "SELECT agency FROM organisations WHERE org_id = $1", grant.org_id
            )
            if agency is None:
                raise AccessTokenRefusedError("the access token's organisation is not registered")
            try:
                check_role(agency, grant.role)
            except ValueError:
                raise AccessTokenRefusedError(
                    "the access token's organisation cannot have its client's role"
                ) from None
        except AccessTokenRefusedError as refused:
            log.warning("access_token_refused", reason=str(refused))
            return str(refused), 2.0
        principal = Principal(grant.token_id, grant.org_id, agency, grant.role)
        return principal, min(self._ttl_s, grant.expires_at - time.time())
