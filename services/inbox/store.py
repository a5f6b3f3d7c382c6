"""The inbox's reads and writes on `alerts`; every change is announced on `carebus_alerts`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from carebus.adapters import person_keys
from carebus.adapters.auth import Principal
from carebus.adapters.sessions import Actor
from carebus.wire.cursor import BEGINNING, Cursor
from carebus.wire.sealing import PREFIX, Keyring, KeyWrap, open_sealed, open_text
from carebus.wire.sealing import SealedUnreadableError as Unreadable
from services.inbox.alerts import (
    AUDIENCE_OF_ROLE,
    AlertFilter,
    AlertRow,
    ContactPerson,
    works_the_queue,
)

# The channel the alert store sink and this service notify, with the alert id as payload.
CHANNEL: Final = "carebus_alerts"

_COLUMNS: Final = """
    alert_id, rule_id, title, kind, status, resolution, escalated, subject_key, nin,
    recipient_agency,
    recipient_org, audience, contact_agency, contact_org, deadline, breached_at, escalate_at,
    summary, event_ids, acknowledged_at, resolved_at, acknowledged_by_subject,
    acknowledged_by_issuer, resolved_by_subject, resolved_by_issuer, recipient_role
"""
# services.inbox.alerts.can_see in SQL ($1: the caller's org_id). Fixed texts only: the
# audience comes from AUDIENCE_OF_ROLE, never from the request.
_OWN: Final = {
    audience: f"(recipient_org = $1 AND audience = '{audience}')"
    for audience in set(AUDIENCE_OF_ROLE.values())
}
_QUEUE: Final = "recipient_org IS NULL"
# Bounds that every stored row satisfies, so one statement serves the first page and the rest.

_PAGE: Final = """
    SELECT {columns} FROM alerts
    WHERE {visible}
      AND ($2::text IS NULL OR status = $2)
      AND ($3::text IS NULL OR rule_id = $3)
      AND ($4::boolean IS NULL OR escalated = $4)
      AND (breached_at, alert_id) > ($5, $6)
    ORDER BY breached_at, alert_id
    LIMIT $7
"""
_ONE: Final = f"SELECT {_COLUMNS} FROM alerts WHERE alert_id = $1"  # noqa: S608
_SOME: Final = f"SELECT {_COLUMNS} FROM alerts WHERE alert_id = ANY($1::text[])"  # noqa: S608
_ACKNOWLEDGE: Final = f"""
    UPDATE alerts
    SET status = 'acknowledged', acknowledged_at = clock_timestamp(), acknowledged_by = $2,
        acknowledged_by_subject = $3, acknowledged_by_issuer = $4,
        updated_at = clock_timestamp()
    WHERE alert_id = $1 AND status = 'open'
    RETURNING {_COLUMNS}
"""  # noqa: S608
_RESOLVE: Final = f"""
    UPDATE alerts
    SET status = 'resolved', resolution = 'resolved_by_recipient',
        resolved_at = clock_timestamp(), resolved_by = $2, resolved_by_subject = $3,
        resolved_by_issuer = $4, updated_at = clock_timestamp()
    WHERE alert_id = $1 AND status <> 'resolved'
    RETURNING {_COLUMNS}
"""  # noqa: S608
# Row locks make two inbox processes escalate each alert once: the second re-checks
# `NOT escalated` after the first commits.
_ESCALATE: Final = """
    WITH escalated AS (
        UPDATE alerts
        SET escalated = true, escalated_at = clock_timestamp(), updated_at = clock_timestamp()
        WHERE status = 'open' AND NOT escalated AND escalate_at <= clock_timestamp()
        RETURNING alert_id
    )
    SELECT alert_id FROM escalated
"""
_NOTIFY: Final = "SELECT pg_notify($1, alert_id) FROM unnest($2::text[]) AS alert_id"
# The fields of an alert's trigger its summary may quote (an emergency's justification).
_QUOTED: Final = ("emergency.justification", "emergency.accountable")


# The current contact of each (person, organisation, role, position): its latest row.
_CONTACTS: Final = """
    SELECT DISTINCT ON (subject_key, org_id, role, position)
        subject_key, org_id, role, position, name, hpr_number, phone, status
    FROM care_team_contacts
    WHERE (subject_key, org_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY subject_key, org_id, role, position, recorded_at DESC, contact_id DESC
"""
# carebus.wire.sealing path of a contact's name (services.registry.history seals it).
CONTACT_NAME_PATH: Final = "contact.name"


async def current_contacts(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    wanted: Sequence[tuple[str, str]],
    keys: Keyring,
) -> dict[tuple[str, str], list[ContactPerson]]:
    """The active contact persons of each (subject key, org_id), names opened; a name that does
    not open (the person was erased) leaves its contact out."""
    found: dict[tuple[str, str], list[ContactPerson]] = {}
    if not wanted:
        return found
    rows = await conn.fetch(_CONTACTS, [w[0] for w in wanted], [w[1] for w in wanted])
    for row in rows:
        if row["status"] != "active":
            continue
        try:
            name = open_sealed(keys, row["subject_key"], CONTACT_NAME_PATH, row["name"])
        except Unreadable:
            continue
        found.setdefault((row["subject_key"], row["org_id"]), []).append(
            ContactPerson(
                row["org_id"], row["role"], row["position"], name, row["hpr_number"], row["phone"]
            )
        )
    return found


def opened(row: AlertRow, keys: Keyring) -> AlertRow:
    """An alert row as its recipient reads it: the nin and the quoted free text opened, or,
    once the person was erased, `nin` None and `erased` True (docs/design.md, "Erasure")."""
    nin, summary = row["nin"], row["summary"]
    if not (isinstance(nin, str) and nin.startswith(PREFIX)) and PREFIX not in summary:
        return row
    subject_key = row["subject_key"]
    erased = False
    if isinstance(nin, str) and nin.startswith(PREFIX):
        try:
            nin = open_sealed(keys, subject_key, "subject.nin", nin)
        except Unreadable:
            nin, erased = None, True
    summary, summary_erased = open_text(summary, subject_key, keys, _QUOTED)
    return {**dict(row), "nin": nin, "summary": summary, "erased": erased or summary_erased}


def visible_to(caller: Principal) -> str:
    """The SQL condition on `alerts` for the rows `caller` may see (`can_see`, as SQL)."""
    conditions = []
    audience = AUDIENCE_OF_ROLE.get(caller.role)
    if audience is not None:
        conditions.append(_OWN[audience])
    if works_the_queue(caller):
        conditions.append(_QUEUE)
    if not conditions:
        return "false AND $1::text IS NULL"  # keeps $1 typed; the route's roles never get here
    return "(" + " OR ".join(conditions) + ")"


@dataclass(frozen=True, slots=True)
class AlertPage:
    """Alert rows in list order and the cursor after the last one, if more follow."""

    rows: Sequence[AlertRow]
    next: Cursor | None


@dataclass(frozen=True, slots=True)
class Change:
    """An alert after an acknowledge or resolve call, and whether the call changed it."""

    row: AlertRow
    changed: bool


class AlertStore:
    """Queries and state changes over the table the alert store sink fills."""

    def __init__(self, pool: asyncpg.Pool, wrap: KeyWrap) -> None:
        self._pool = pool
        self._wrap = wrap

    async def _opened(self, rows: Sequence[AlertRow]) -> list[AlertRow]:
        """`rows` with their sealed values opened under the persons' current keys (no cache:
        an erasure shows at the next read), and each alert that names the person with its
        recipient's contact persons (`contacts`), read now."""
        sealed = [
            row["subject_key"]
            for row in rows
            if PREFIX in (row["nin"] or "") or PREFIX in row["summary"]
        ]
        naming = sorted(
            {
                (row["subject_key"], row["recipient_org"])
                for row in rows
                if row["nin"] is not None and row["recipient_org"] is not None
            }
        )
        if not sealed and not naming:
            return list(rows)
        async with self._pool.acquire() as conn:
            keys = await person_keys.keyring(
                conn, self._wrap, {*sealed, *(subject for subject, _ in naming)}
            )
            contacts = await current_contacts(conn, naming, keys)
        shown = [opened(row, keys) for row in rows]
        return [
            {**dict(row), "contacts": contacts.get((row["subject_key"], row["recipient_org"]), [])}
            if row["nin"] is not None and row["recipient_org"] is not None
            else row
            for row in shown
        ]

    async def page(
        self, caller: Principal, wanted: AlertFilter, *, after: Cursor | None, limit: int
    ) -> AlertPage:
        """Up to `limit` alerts `caller` may see, matching `wanted`, after `after`."""
        start = after or BEGINNING
        query = _PAGE.format(columns=_COLUMNS, visible=visible_to(caller))
        rows = await self._pool.fetch(
            query,
            caller.org_id,
            wanted.status,
            wanted.rule_id,
            wanted.escalated,
            start.at,
            start.key,
            limit + 1,  # one more than asked tells whether another page follows
        )
        page = rows[:limit]
        more = len(rows) > limit
        cursor = Cursor(page[-1]["breached_at"], page[-1]["alert_id"]) if more else None
        return AlertPage(await self._opened(page), cursor)

    async def get(self, alert_id: str) -> AlertRow | None:
        row: AlertRow | None = await self._pool.fetchrow(_ONE, alert_id)
        return None if row is None else (await self._opened([row]))[0]

    async def load(self, alert_ids: Sequence[str]) -> list[AlertRow]:
        """The alerts with these ids that exist, in the order of `alert_ids`."""
        rows = await self._opened(await self._pool.fetch(_SOME, list(alert_ids)))
        by_id = {row["alert_id"]: row for row in rows}
        return [by_id[alert_id] for alert_id in alert_ids if alert_id in by_id]

    async def acknowledge(self, alert_id: str, actor: Actor) -> Change | None:
        """open -> acknowledged by `actor`; any other state is left as it is. None if unknown."""
        return await self._change(_ACKNOWLEDGE, alert_id, actor)

    async def resolve(self, alert_id: str, actor: Actor) -> Change | None:
        """-> resolved by the recipient (`actor`), unless already resolved. None if unknown."""
        return await self._change(_RESOLVE, alert_id, actor)

    async def _change(self, statement: str, alert_id: str, actor: Actor) -> Change | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                statement, alert_id, actor.token_id, actor.subject, actor.issuer
            )
            changed = row is not None
            if changed:
                await conn.execute(_NOTIFY, CHANNEL, [alert_id])
            else:
                row = await conn.fetchrow(_ONE, alert_id)
        if row is None:
            return None
        return Change((await self._opened([row]))[0], changed=changed)

    async def counts(self) -> dict[tuple[str, bool], int]:
        """Unresolved alerts by (status, escalated)."""
        rows = await self._pool.fetch(
            "SELECT status, escalated, count(*) AS n FROM alerts "
            "WHERE status <> 'resolved' GROUP BY status, escalated"
        )
        return {(row["status"], row["escalated"]): row["n"] for row in rows}

    async def escalate_due(self) -> list[str]:
        """Flag every open alert past its escalation time; the ids flagged, each announced."""
        async with self._pool.acquire() as conn, conn.transaction():
            alert_ids = [row["alert_id"] for row in await conn.fetch(_ESCALATE)]
            if alert_ids:
                await conn.execute(_NOTIFY, CHANNEL, alert_ids)
            return alert_ids
