"""The person view's reads, and the record of each lookup (`disclosure_lookups`, what
`person_timeline`): one transaction, so no answer goes out unrecorded. A look-up refused for
want of a relation to a known person is kept in `authority_refusals` (statement `person_view`).

Reads only what migration 0022 grants the inbox: the SLA engine's state of the person
(`sla_persons`), the caller organisation's delivered disclosures (which events it was told
of, and with which fields), its deliveries (as delivered) and the events it sent itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
import orjson

from carebus.adapters import person_keys
from carebus.adapters.sessions import Actor
from carebus.domain.events import rfc3339
from carebus.domain.obligations import SlaState
from carebus.domain.routing import PersonState
from carebus.runtime.telemetry import get_logger
from carebus.wire.cursor import Cursor
from carebus.wire.sealing import PREFIX, Keyring, KeyWrap, open_body, open_sealed
from carebus.wire.sealing import SealedUnreadableError as Unreadable
from services.inbox.alerts import ContactPerson
from services.inbox.person import Row, first_sealed_nin, received_item, seen_events, sent_item
from services.inbox.store import current_contacts

log = get_logger(__name__)

PERSON_TIMELINE: Final = "person_timeline"

_PERSON: Final = "SELECT state, routing FROM sla_persons WHERE subject_key = $1"
# Routing's deliveries to the caller (an alert's disclosure has no delivery_id: it told the
# caller of the alert, not the event's fields).
_SEEN: Final = """
    SELECT source_org, event_id, fields FROM disclosures
    WHERE subject_key = $1 AND recipient_org = $2 AND decision = 'delivered'
      AND delivery_id IS NOT NULL
"""
# The caller's deliveries about the person and the events it sent, newest first, by
# (occurred_at, key) under the C collation; `key` tells a delivery from an own event.
_TIMELINE: Final = """
    SELECT direction, key, occurred_at, event_id, event_type, body FROM (
        SELECT 'received' AS direction, 'd:' || delivery_id AS key, occurred_at, event_id,
               event_type, body::text AS body
        FROM deliveries WHERE recipient_org = $1 AND subject_key = $2
        UNION ALL
        SELECT 'sent', 'e:' || event_id, occurred_at, event_id, event_type, payload::text
        FROM events WHERE source_org = $1 AND subject_key = $2
    ) AS timeline
    WHERE $3::timestamptz IS NULL OR (occurred_at, key COLLATE "C") < ($3, $4 COLLATE "C")
    ORDER BY occurred_at DESC, key COLLATE "C" DESC
    LIMIT $5
"""
# The latest individual plan the caller was delivered or sent, for the view's `plan`.
_PLAN: Final = """
    SELECT direction, key, occurred_at, event_id, event_type, body FROM (
        SELECT 'received' AS direction, 'd:' || delivery_id AS key, occurred_at, event_id,
               event_type, body::text AS body
        FROM deliveries
        WHERE recipient_org = $1 AND subject_key = $2 AND event_type = 'ip_update'
        UNION ALL
        SELECT 'sent', 'e:' || event_id, occurred_at, event_id, event_type, payload::text
        FROM events WHERE source_org = $1 AND subject_key = $2 AND event_type = 'ip_update'
    ) AS plans
    ORDER BY occurred_at DESC, key COLLATE "C" DESC
    LIMIT 1
"""
# The newest delivery to the caller names the person as it was told of them.
_NIN: Final = """
    SELECT body -> 'subject' ->> 'nin' FROM deliveries
    WHERE recipient_org = $1 AND subject_key = $2 AND body -> 'subject' ->> 'nin' IS NOT NULL
    ORDER BY occurred_at DESC LIMIT 1
"""
_RECORD: Final = """
    INSERT INTO disclosure_lookups (lookup_id, subject_key, org_id, role, token_id,
                                    looked_by_subject, looked_by_issuer, items, what)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

# An alert that names the person to the caller's organisation, for the caller's audience, and is
# not resolved: the way from an alert to the person stays open while there is something to act
# on (the discharging DPS's alerts after the discharge ended its relation).
_NAMED_IN_ALERT: Final = """
    SELECT EXISTS (
        SELECT 1 FROM alerts
        WHERE recipient_org = $1 AND audience = $2 AND subject_key = $3
          AND nin IS NOT NULL AND status <> 'resolved'
    )
"""
# A refused look-up of a known person, as the audit store writes an AuthorityRefusal record
# (migration 0026 lets the inbox add rows of statement `person_view` only). The audit id is one
# per organisation, role, person and hour (`refusal_id`): repeats within the hour are one row.
_REFUSED: Final = """
    INSERT INTO authority_refusals (audit_id, subject_key, actor_org, actor_agency, actor_role,
                                    statement, rule_id, field, policy_version, decided_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT DO NOTHING
"""
_REFUSAL_IDS: Final = uuid.UUID("5f0c8a52-7c1e-4d0b-9a57-2f3f1b6f3c11")


def refusal_id(org_id: str, role: str, subject_key: str, at: datetime) -> str:
    """The audit id of `org_id`'s `role`'s refused looks at one person within `at`'s hour: a
    caller repeating a refused look adds one row an hour to the person's log, not thousands."""
    hour = at.strftime("%Y-%m-%dT%H")
    return str(uuid.uuid5(_REFUSAL_IDS, "\x1f".join((org_id, role, subject_key, hour))))


@dataclass(frozen=True, slots=True)
class Looker:
    """Who looks: the organisation, the role, and the token or the signed-in person."""

    org_id: str
    role: str
    actor: Actor


@dataclass(frozen=True, slots=True)
class Person:
    """What the view is cut from, as stored."""

    routing: PersonState
    state: SlaState


@dataclass(frozen=True, slots=True)
class Timeline:
    """The view's person-level facts (opened) and one page of items."""

    subject: dict[str, Any] | None
    seen: dict[tuple[str, str], frozenset[str]]
    items: list[dict[str, Any]]
    next: Cursor | None
    # org_id -> the contact persons it named for the person (active ones, names opened).
    contacts: dict[str, list[ContactPerson]]
    # The latest individual plan the caller holds, as a timeline item (None: it holds none).
    plan: dict[str, Any] | None = None


class PersonStore:
    def __init__(self, pool: asyncpg.Pool, wrap: KeyWrap) -> None:
        self._pool = pool
        self._wrap = wrap

    async def person(self, subject_key: str) -> Person | None:
        """The SLA engine's routing state and obligations of the person; None if unknown."""
        row = await self._pool.fetchrow(_PERSON, subject_key)
        if row is None:
            return None
        return Person(
            PersonState.from_json(orjson.loads(row["routing"])),
            SlaState.from_json(orjson.loads(row["state"])),
        )

    async def named_in_alert(self, subject_key: str, org_id: str, audience: str) -> bool:
        """Whether an unresolved alert names the person to `org_id`'s `audience`."""
        return bool(await self._pool.fetchval(_NAMED_IN_ALERT, org_id, audience, subject_key))

    async def refused(self, record: Mapping[str, Any]) -> None:
        """Keep a refused look-up (an AuthorityRefusal record) in the person's log."""
        await self._pool.execute(
            _REFUSED,
            record["audit_id"],
            record["subject_key"],
            record["actor_org"],
            record["actor_agency"],
            record["actor_role"],
            record["statement"],
            record["rule_id"],
            record["field"],
            record["policy_version"],
            record["decided_at"],
        )

    async def timeline(
        self,
        subject_key: str,
        person: Person,
        looker: Looker,
        *,
        before: Cursor | None,
        limit: int,
    ) -> Timeline:
        """One page of the caller's timeline and what the view needs besides; the lookup is
        recorded in the same transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            seen_rows = await conn.fetch(_SEEN, subject_key, looker.org_id)
            rows = await conn.fetch(
                _TIMELINE,
                looker.org_id,
                subject_key,
                before.at if before else None,
                before.key if before else "",
                limit + 1,  # one more than asked tells whether another page follows
            )
            sealed_nin = await conn.fetchval(_NIN, looker.org_id, subject_key)
            plan_row = await conn.fetchrow(_PLAN, looker.org_id, subject_key)
            keys = await person_keys.keyring(conn, self._wrap, [subject_key])
            contacts = await current_contacts(
                conn, [(subject_key, member) for member in sorted(person.routing.team)], keys
            )
            page = rows[:limit]
            await conn.execute(
                _RECORD,
                uuid.uuid4(),
                subject_key,
                looker.org_id,
                looker.role,
                looker.actor.token_id,
                looker.actor.subject,
                looker.actor.issuer,
                len(page),
                PERSON_TIMELINE,
            )
        more = len(rows) > limit
        cursor = Cursor(page[-1]["occurred_at"], page[-1]["key"]) if more else None
        seen = seen_events(seen_rows)
        nin = sealed_nin or first_sealed_nin(person.state, looker.org_id, seen)
        return Timeline(
            subject=_subject(nin, subject_key, keys),
            seen=seen,
            items=[_item(row, subject_key, keys) for row in page],
            next=cursor,
            contacts={org: found for (_, org), found in contacts.items()},
            plan=None if plan_row is None else _item(plan_row, subject_key, keys),
        )


def _subject(nin: str | None, subject_key: str, keys: Keyring) -> dict[str, Any] | None:
    """The person's nin opened; `{"nin": null, "erased": true}` once erased; None when the
    caller holds nothing that names the person."""
    if nin is None:
        return None
    if not nin.startswith(PREFIX):
        return {"nin": nin}
    try:
        return {"nin": open_sealed(keys, subject_key, "subject.nin", nin)}
    except Unreadable:
        return {"nin": None, "erased": True}


def _item(row: Row, subject_key: str, keys: Keyring) -> dict[str, Any]:
    body = orjson.loads(row["body"])
    if row["direction"] == "received":
        return received_item(open_body(body, subject_key, keys) if PREFIX in row["body"] else body)
    payload = body
    if PREFIX in row["body"]:
        payload = open_body({"payload": body}, subject_key, keys).get("payload") or {}
    occurred_at: datetime = row["occurred_at"]
    return sent_item(row["event_id"], row["event_type"], rfc3339(occurred_at), payload)


class RefusalKeeper:
    """Writes refused look-ups to the person's log after their `404` has gone out.

    The answer never waits for the write, so a refused look at a known person takes the time a
    look at an unknown key does, and a failing write (the database full, read-only or behind
    a migration) is logged and never turns the `404` into a `500` or `503` that would tell the
    two apart. The queue is bounded: under a flood, what does not fit is logged and dropped
    (the hourly audit id keeps one row per caller and person an hour anyway).
    """

    def __init__(self, people: PersonStore, capacity: int = 1000) -> None:
        self._people = people
        self._queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=capacity)

    def keep(self, record: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            log.error(
                "inbox.person_view_refusal_not_kept",
                audit_id=record["audit_id"],
                error="queue full",
            )

    async def run(self) -> None:
        """Write queued refusals one by one until cancelled."""
        while True:
            record = await self._queue.get()
            await self._write(record)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Write what is still queued, for at most `timeout_s` (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self._queue.empty():
                    await self._write(self._queue.get_nowait())

    async def _write(self, record: Mapping[str, Any]) -> None:
        try:
            await self._people.refused(record)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.error(
                "inbox.person_view_refusal_not_kept",
                audit_id=record["audit_id"],
                error=type(error).__name__,
            )
