"""The audit service's reads: an organisation's deliveries, a person's disclosures and the
patient's own log; and the one thing it writes, the record of who looked."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
import orjson

from carebus.adapters import person_keys
from carebus.domain.events import rfc3339
from carebus.wire.cursor import BEGINNING, Cursor
from carebus.wire.sealing import PREFIX, Keyring, KeyWrap, open_body
from services.audit.patient_log import (
    ConsentChange,
    Decision,
    Lookup,
    Party,
    Refusal,
    patient_log,
)

# Bounds that every stored row satisfies, so one statement (and one index range scan on
# (recipient_org, delivered_at, delivery_id)) serves every combination of since and cursor.

_DELIVERIES: Final = """
    SELECT delivery_id, delivered_at, subject_key, body::text AS body
    FROM deliveries
    WHERE recipient_org = $1
      AND delivered_at >= $2
      AND (delivered_at, delivery_id) > ($3, $4)
    ORDER BY delivered_at, delivery_id
    LIMIT $5
"""

# "Persons its organisation has data on" (DESIGN): the organisation published an event about
# the person, was a candidate recipient of one (delivered or withheld: it is or was in the care
# team, is the home municipality, or was named in an emergency), is or was registered in the
# care team, or recorded a care-team change or a consent for the person.
_RELATED: Final = """
    SELECT EXISTS (SELECT 1 FROM disclosures
                   WHERE subject_key = $1 AND (recipient_org = $2 OR source_org = $2))
        OR EXISTS (SELECT 1 FROM events WHERE subject_key = $1 AND source_org = $2)
        OR EXISTS (SELECT 1 FROM care_team_changes
                   WHERE subject_key = $1 AND (org_id = $2 OR recorded_by_org = $2))
        OR EXISTS (SELECT 1 FROM consents WHERE subject_key = $1 AND recorded_by_org = $2)
"""

# `no_candidate` rows stay in the table but are not decisions about a recipient, and the
# contract's decision is delivered | withheld. $2 is the caller's organisation, or NULL for
# everything (the operator's data protection officer, the patient).
# `retracted_by`: the retraction that withdrew the event since (the gateway's ledger, kept as
# long as the disclosures of the event: migration 0018), or NULL.
_DISCLOSURES: Final = """
    SELECT d.event_id, d.event_type, d.source_org, d.recipient_agency, d.recipient_org,
           d.decision, d.reason, d.basis, d.categories, d.fields, d.rule_id, d.policy_version,
           d.decided_at, r.retraction_event_id AS retracted_by
    FROM disclosures d
    LEFT JOIN retractions r
        ON r.source_org = d.source_org AND r.retracted_event_id = d.event_id
    WHERE d.subject_key = $1 AND d.decision IN ('delivered', 'withheld')
      AND ($2::text IS NULL OR d.source_org = $2 OR d.recipient_org = $2)
    ORDER BY d.decided_at, d.audit_id
"""
# Every looking organisation had a token or a person's session, and either's is registered.
_LOOKUPS: Final = """
    SELECT l.org_id, o.agency, l.role, l.purpose, l.looked_at, l.what
    FROM disclosure_lookups l JOIN organisations o USING (org_id)
    WHERE l.subject_key = $1 AND ($2::text IS NULL OR l.org_id = $2)
    ORDER BY l.looked_at, l.lookup_id
"""
_REFUSALS: Final = """
    SELECT actor_org, actor_agency, statement, rule_id, field, decided_at
    FROM authority_refusals
    WHERE subject_key = $1 AND ($2::text IS NULL OR actor_org = $2)
    ORDER BY decided_at, audit_id
"""
_RECORD_LOOKUP: Final = """
    INSERT INTO disclosure_lookups (lookup_id, subject_key, org_id, role, token_id,
                                    looked_by_subject, looked_by_issuer, purpose, items)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_CONSENTS: Final = """
    SELECT recipient_agency, recipient_org, categories, status, state, recorded_by_org,
           recorded_at, valid_from, valid_to, confirmed_by_org, confirmed_at
    FROM consents
    WHERE subject_key = $1
    ORDER BY recorded_at, consent_id
"""
_DIRECTORY: Final = "SELECT org_id, agency, name FROM organisations WHERE org_id = ANY($1::text[])"


@dataclass(frozen=True, slots=True)
class Looker:
    """Who runs a disclosure query: its organisation and role, and the token, or else the
    person (their `sub` at their issuer) in whose session it runs."""

    org_id: str
    role: str
    token_id: uuid.UUID | None = None
    subject: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """A disclosure query's answer: decisions, lookups and refusals, in DESIGN's JSON shapes."""

    items: list[dict[str, Any]]
    lookups: list[dict[str, Any]]
    refusals: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "lookups": self.lookups, "refusals": self.refusals}


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Delivery JSON texts (as stored) and the cursor after the last one, if more follow."""

    bodies: Sequence[str]
    next: Cursor | None


def _opened(body: str, subject_key: str, keys: Keyring) -> str:
    """A stored delivery body as its recipient reads it: the nin and free text opened, or the
    person's fields erased (docs/design.md, "Erasure"); a body with nothing sealed as stored."""
    if PREFIX not in body:
        return body
    return orjson.dumps(open_body(orjson.loads(body), subject_key, keys)).decode()


class AuditStore:
    """Queries over the tables the audit store sink fills."""

    def __init__(self, pool: asyncpg.Pool, wrap: KeyWrap) -> None:
        self._pool = pool
        self._wrap = wrap

    async def deliveries(
        self, org_id: str, *, since: datetime | None, after: Cursor | None, limit: int
    ) -> DeliveryPage:
        """Up to `limit` deliveries to `org_id`, oldest first, from `since` and after `after`."""
        start = after or BEGINNING
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                _DELIVERIES,
                org_id,
                since or BEGINNING.at,
                start.at,
                start.key,
                limit + 1,  # one more than asked tells whether another page follows
            )
            page = rows[:limit]
            sealed = [row["subject_key"] for row in page if PREFIX in row["body"]]
            keys = await person_keys.keyring(conn, self._wrap, sealed)
        more = len(rows) > limit
        cursor = Cursor(page[-1]["delivered_at"], page[-1]["delivery_id"]) if more else None
        return DeliveryPage(
            [_opened(row["body"], row["subject_key"], keys) for row in page], cursor
        )

    async def related(self, org_id: str, subject_key: str) -> bool:
        """Whether `org_id` has data on the person (see `_RELATED`)."""
        return bool(await self._pool.fetchval(_RELATED, subject_key, org_id))

    async def report(
        self, subject_key: str, scope: str | None, looker: Looker, purpose: str | None
    ) -> Report:
        """The person's decisions, lookups and refusals that involve `scope` (None: all), oldest
        first; the lookup itself is recorded in the same transaction, so no answer goes out
        unrecorded."""
        async with self._pool.acquire() as conn, conn.transaction():
            items = [disclosure_json(r) for r in await conn.fetch(_DISCLOSURES, subject_key, scope)]
            lookups = [lookup_json(r) for r in await conn.fetch(_LOOKUPS, subject_key, scope)]
            refusals = [refusal_json(r) for r in await conn.fetch(_REFUSALS, subject_key, scope)]
            await conn.execute(
                _RECORD_LOOKUP,
                uuid.uuid4(),
                subject_key,
                looker.org_id,
                looker.role,
                looker.token_id,
                looker.subject,
                looker.issuer,
                purpose,
                len(items),
            )
        return Report(items, lookups, refusals)

    async def patient_log(self, subject_key: str) -> list[dict[str, Any]]:
        """Everything about the person, in plain words, oldest first (see patient_log.py)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            decisions = await conn.fetch(_DISCLOSURES, subject_key, None)
            consents = await conn.fetch(_CONSENTS, subject_key)
            lookups = await conn.fetch(_LOOKUPS, subject_key, None)
            refusals = await conn.fetch(_REFUSALS, subject_key, None)
            named = _named_orgs(decisions, consents, lookups, refusals)
            directory = _Directory(await conn.fetch(_DIRECTORY, sorted(named)))
        return patient_log(
            [directory.decision(row) for row in decisions],
            [directory.consent(row) for row in consents],
            [directory.lookup(row) for row in lookups],
            [directory.refusal(row) for row in refusals],
        )


def disclosure_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """One disclosure item: `reason` if withheld, `basis` and `fields` if delivered."""
    item: dict[str, Any] = {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "recipient": {"agency": row["recipient_agency"], "org_id": row["recipient_org"]},
        "decision": row["decision"],
    }
    if row["decision"] == "withheld":
        item["reason"] = row["reason"]
    else:
        item["basis"] = row["basis"]
        item["fields"] = list(row["fields"])
    item["rule_id"] = row["rule_id"]
    item["policy_version"] = row["policy_version"]
    item["decided_at"] = rfc3339(row["decided_at"])
    if row.get("retracted_by"):
        item["retracted_by"] = row["retracted_by"]  # the sender withdrew the event since
    return item


def lookup_json(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """One lookup of a disclosure report: who looked, when and why."""
    return {
        "org_id": row["org_id"],
        "agency": row["agency"],
        "role": row["role"],
        "purpose": row["purpose"],
        "looked_at": rfc3339(row["looked_at"]),
        # Added field: disclosure_query (this service) or person_timeline (the inbox's view).
        "what": row["what"],
    }


def refusal_json(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """One refusal of a disclosure report: who tried what, and the rule that said no."""
    return {
        "actor": {"agency": row["actor_agency"], "org_id": row["actor_org"]},
        "statement": row["statement"],
        "rule_id": row["rule_id"],
        "field": row["field"],
        "decided_at": rfc3339(row["decided_at"]),
    }


_ORG_COLUMNS: Final = (
    "source_org",
    "recipient_org",
    "recorded_by_org",
    "confirmed_by_org",
    "org_id",
    "actor_org",
)


def _named_orgs(*row_lists: Iterable[asyncpg.Record]) -> set[str]:
    """Every organisation number the patient's rows name, to look their names up at once."""
    return {
        org_id
        for rows in row_lists
        for row in rows
        for column in _ORG_COLUMNS
        if (org_id := row.get(column))
    }


class _Directory:
    """The directory entries of the organisations a patient's rows name, and the records built
    from those rows with each organisation's name."""

    def __init__(self, entries: Iterable[asyncpg.Record]) -> None:
        self._entries = {entry["org_id"]: entry for entry in entries}

    def party(self, org_id: str, agency: str | None = None) -> Party:
        """The organisation; a row's own agency wins over the directory's (they agree)."""
        entry = self._entries.get(org_id)
        if entry is None:
            return Party(agency or "", org_id)
        return Party(agency or entry["agency"], org_id, entry["name"] or "")

    def decision(self, row: asyncpg.Record) -> Decision:
        return Decision(
            event_id=row["event_id"],
            event_type=row["event_type"],
            source=self.party(row["source_org"]),
            recipient=self.party(row["recipient_org"], row["recipient_agency"]),
            decision=row["decision"],
            reason=row["reason"],
            basis=row["basis"],
            categories=list(row["categories"]),
            decided_at=row["decided_at"],
            retracted_by=row.get("retracted_by"),
        )

    def consent(self, row: asyncpg.Record) -> ConsentChange:
        recipient_org, confirmed_by = row["recipient_org"], row["confirmed_by_org"]
        return ConsentChange(
            # Without an org_id the consent covers every organisation of the agency.
            recipient=(
                self.party(recipient_org, row["recipient_agency"])
                if recipient_org
                else Party(row["recipient_agency"], "")
            ),
            categories=list(row["categories"]),
            status=row["status"],
            state=row["state"],
            recorded_by=self.party(row["recorded_by_org"]),
            recorded_at=row["recorded_at"],
            valid_from=row["valid_from"],
            valid_to=row["valid_to"],
            confirmed_by=self.party(confirmed_by) if confirmed_by else None,
            confirmed_at=row["confirmed_at"],
        )

    def lookup(self, row: asyncpg.Record) -> Lookup:
        return Lookup(
            self.party(row["org_id"], row["agency"]),
            row["role"],
            row["purpose"],
            row["looked_at"],
            row["what"],
        )

    def refusal(self, row: asyncpg.Record) -> Refusal:
        return Refusal(
            self.party(row["actor_org"], row["actor_agency"]),
            row["statement"],
            row["rule_id"],
            row["decided_at"],
        )
