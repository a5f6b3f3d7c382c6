"""Webhook registrations: each organisation's delivery URL and signing secret in PostgreSQL.

Shared by the registry's `/v1/webhooks` API and `carebus webhook set`, so both check URLs the
same way and both issue a fresh secret on every registration.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy
MAX_URL_LENGTH: Final = 2000


class UnknownOrganisationError(Exception):
    """The organisation has no row in `organisations` (it gets one with its first token)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where an organisation receives its deliveries; the secret signs each request body."""

    org_id: str
    url: str
    secret: str = field(repr=False)
    created_at: datetime
    updated_at: datetime


def url_problem(url: object) -> str | None:
    """None if `url` can receive deliveries (an absolute http or https URL), else the problem."""
    if not isinstance(url, str):
        return "must be a string"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(character.isspace() for character in url):
        return "must not contain whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    # The URL is shown by GET /v1/webhooks and in operators' tools; the signature, not a
    # password in the URL, is what tells the receiver a request comes from carebus.
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    return None


def new_secret() -> str:
    """A fresh signing secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


async def set_webhook(conn: Connection, org_id: str, url: str) -> Webhook:
    """Register `url` for `org_id` with a new secret, replacing any earlier registration.

    Raises ValueError for a URL `url_problem` refuses, UnknownOrganisationError for an
    organisation that is not registered.
    """
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"url {problem}")
    async with conn.transaction():
        known = await conn.fetchval("SELECT 1 FROM organisations WHERE org_id = $1", org_id)
        if known is None:
            raise UnknownOrganisationError(f"organisation {org_id} is not registered")
        row = await conn.fetchrow(
            """
            INSERT INTO webhooks (org_id, url, secret) VALUES ($1, $2, $3)
            ON CONFLICT (org_id) DO UPDATE
                SET url = EXCLUDED.url, secret = EXCLUDED.secret, updated_at = now()
            RETURNING org_id, url, secret, created_at, updated_at
            """,
            org_id,
            url,
            new_secret(),
        )
    assert row is not None
    return _webhook(row)


async def get_webhook(conn: Connection | asyncpg.Pool, org_id: str) -> Webhook | None:
    """The registration of `org_id`, or None."""
    row = await conn.fetchrow(
        "SELECT org_id, url, secret, created_at, updated_at FROM webhooks WHERE org_id = $1",
        org_id,
    )
    return None if row is None else _webhook(row)


async def delete_webhook(conn: Connection | asyncpg.Pool, org_id: str) -> bool:
    """Remove the registration of `org_id`; False if there was none."""
    deleted = await conn.fetchval("DELETE FROM webhooks WHERE org_id = $1 RETURNING org_id", org_id)
    return deleted is not None


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(
        org_id=row["org_id"],
        url=row["url"],
        secret=row["secret"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
