"""People in the inbox: OpenID Connect sign-ins in progress, sessions, and the CSRF rule.

The browser holds only random values: the sign-in's (SameSite=Lax, to survive the issuer's
redirect back) and the session's (SameSite=Strict). The database holds their SHA-256 digests,
so a read of the tables yields no usable cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from carebus.adapters.auth import Principal
from carebus.adapters.oidc import Person, new_verifier, pkce_challenge

SESSION_COOKIE: Final = "carebus_session"
SIGN_IN_COOKIE: Final = "carebus_sign_in"
SIGN_IN_PATH: Final = "/callback"
# A sign-in not finished within this long is forgotten (the person starts again).
SIGN_IN_LIFETIME: Final = timedelta(minutes=10)
# The header the page's script sends with every POST: a cross-site form cannot send it, and a
# cross-site script cannot without a CORS preflight the inbox never grants.
CSRF_HEADER: Final = "x-carebus-request"
CSRF_VALUE: Final = "inbox"


def digest(value: str) -> bytes:
    # Cookie values carry 256 random bits: a fast digest is as safe as a slow one.
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True, slots=True)
class SignIn:
    """What binds an authorization response to the browser that asked for it."""

    state: str
    nonce: str
    code_verifier: str

    @classmethod
    def new(cls) -> SignIn:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), new_verifier())

    @property
    def code_challenge(self) -> str:
        return pkce_challenge(self.code_verifier)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted on an alert: a system's token, or a person (their `sub` and issuer)."""

    token_id: uuid.UUID | None = None
    subject: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """An inbox caller: the principal the alert rules see, and who acts in their name."""

    principal: Principal
    actor: Actor
    # The session cookie's value, for a person; None for a bearer token.
    session: str | None = None


def csrf_problem(origin: str | None, header: str | None, own_origin: str) -> str | None:
    """Why a cookie-authenticated POST may not be the inbox page's own; None when it is."""
    if header != CSRF_VALUE:
        return f"the {CSRF_HEADER} header is missing"
    if origin is not None and origin != own_origin:
        return "the request comes from another origin"
    return None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_BEGIN: Final = """
    WITH forgotten AS (
        DELETE FROM person_sign_ins WHERE created_at < clock_timestamp() - $5::interval
    )
    INSERT INTO person_sign_ins (sign_in_hash, state, nonce, code_verifier)
    VALUES ($1, $2, $3, $4)
"""
_FINISH: Final = """
    DELETE FROM person_sign_ins
    WHERE sign_in_hash = $1 AND created_at >= clock_timestamp() - $2::interval
    RETURNING state, nonce, code_verifier
"""
_OPEN: Final = """
    INSERT INTO person_sessions (session_id, session_hash, issuer, subject, org_id, role,
                                 expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp() + $7::interval)
"""
# A session is valid until ended, past its absolute end, or unused for `idle` ($2).
_VALID: Final = """
    s.session_hash = $1 AND s.ended_at IS NULL AND s.expires_at > clock_timestamp()
    AND s.last_seen_at > clock_timestamp() - $2::interval
"""
_TOUCH: Final = f"""
    UPDATE person_sessions s SET last_seen_at = clock_timestamp()
    FROM organisations o
    WHERE o.org_id = s.org_id AND {_VALID}
    RETURNING s.session_id, s.issuer, s.subject, s.org_id, o.agency, s.role
"""  # noqa: S608 -- fixed texts
_PEEK: Final = f"""
    SELECT s.session_id FROM person_sessions s WHERE {_VALID}
"""  # noqa: S608 -- fixed texts
_END: Final = """
    UPDATE person_sessions SET ended_at = clock_timestamp()
    WHERE session_hash = $1 AND ended_at IS NULL
"""


class PersonSessions:
    """Sign-ins in progress and people's sessions, in PostgreSQL (every inbox process shares
    them)."""

    def __init__(self, pool: asyncpg.Pool, *, max_age: timedelta, idle: timedelta) -> None:
        self._pool = pool
        self._max_age = max_age
        self._idle = idle

    async def begin_sign_in(self) -> tuple[str, SignIn]:
        """A new sign-in: the value for the browser's cookie, and what the issuer is sent."""
        cookie, sign_in = secrets.token_urlsafe(32), SignIn.new()
        await self._pool.execute(
            _BEGIN,
            digest(cookie),
            sign_in.state,
            sign_in.nonce,
            sign_in.code_verifier,
            SIGN_IN_LIFETIME,
        )
        return cookie, sign_in

    async def finish_sign_in(self, cookie: str) -> SignIn | None:
        """The sign-in of `cookie`, once (it is forgotten here); None if unknown or too old."""
        row = await self._pool.fetchrow(_FINISH, digest(cookie), SIGN_IN_LIFETIME)
        if row is None:
            return None
        return SignIn(row["state"], row["nonce"], row["code_verifier"])

    async def open(self, person: Person) -> str:
        """A new session for `person`; the value for the browser's cookie."""
        cookie = secrets.token_urlsafe(32)
        await self._pool.execute(
            _OPEN,
            uuid.uuid4(),
            digest(cookie),
            person.issuer,
            person.subject,
            person.org_id,
            person.role,
            self._max_age,
        )
        return cookie

    async def caller(self, cookie: str) -> Caller | None:
        """The session's caller, its idle clock restarted; None once it has ended."""
        row = await self._pool.fetchrow(_TOUCH, digest(cookie), self._idle)
        if row is None:
            return None
        principal = Principal(row["session_id"], row["org_id"], row["agency"], row["role"])
        actor = Actor(subject=row["subject"], issuer=row["issuer"])
        return Caller(principal, actor, session=cookie)

    async def valid(self, cookie: str) -> bool:
        """Whether the session still holds, without counting this as use (an open stream)."""
        return await self._pool.fetchval(_PEEK, digest(cookie), self._idle) is not None

    async def agency_of(self, org_id: str) -> str | None:
        """The agency `org_id` is registered as; None when it is not registered."""
        agency: str | None = await self._pool.fetchval(
            "SELECT agency FROM organisations WHERE org_id = $1", org_id
        )
        return agency

    async def end(self, cookie: str) -> None:
        await self._pool.execute(_END, digest(cookie))
