"""Recording registry changes: judged by the authority policy, a history row and outbox record
in one transaction with the person's facts, then the publish."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from carebus.adapters import facts, person_keys
from carebus.adapters.auth import Connection
from carebus.adapters.publisher import BrokerUnavailableError, OutgoingRecord
from carebus.domain.authority import Actor, AuthorityPolicy, NotEntitledError, Refusal
from carebus.domain.identity import subject_key
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE, REGISTER_CHANGE
from carebus.domain.routing import PersonState, apply
from carebus.runtime import metrics
from carebus.runtime.telemetry import get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.sealing import KeyWrap, seal
from services.registry.changes import (
    CareTeamChange,
    CareTeamContact,
    Consent,
    care_team_record,
    consent_record,
    snapshot_record,
)
from services.registry.outbox import Outbox

log = get_logger(__name__)

# The sealed name's field path (carebus.wire.sealing binds a sealed value to it).
CONTACT_NAME_PATH: Final = "contact.name"

_UNAVAILABLE: Final = (
    BrokerUnavailableError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


class OrganisationMismatchError(Exception):
    """The request names an organisation that is not registered as the agency it claims."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class ChangeNotPublishedError(Exception):
    """The change is committed but not acknowledged by the broker; the relay will publish it."""

    def __init__(self, change_id: str) -> None:
        super().__init__(f"change {change_id} is recorded but not yet published")
        self.change_id = change_id


@dataclass(frozen=True, slots=True)
class RecordedConsent:
    consent_id: str
    state: str  # effective | pending | confirmed
    pending_reason: str | None = None


class ConsentSupersededError(Exception):
    """A withdrawal or objection for the consent's recipient came after it: it cannot be
    confirmed any more (record a new consent if the person wants it now)."""


class UnknownConsentError(Exception):
    """No pending consent with that id for the caller to see."""


class History:
    """The registry's system of record: changes are appended, never updated, and then streamed.

    A change is judged (`carebus.domain.authority`) and recorded by one transaction (the person's
    outbox lock, the person's facts row, the history row, the outbox record, the facts the
    change updates) and then published with every record of the person still pending; only
    after the broker's acknowledgement does the caller get the change's id. A refused change
    leaves nothing. The nin is used only to compute the subject key and is never stored.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: Outbox,
        codec: Codec,
        secret: bytes,
        authority: AuthorityPolicy,
        wrap: KeyWrap,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._codec = codec
        self._secret = secret
        self._authority = authority
        self._wrap = wrap

    def subject_key(self, nin: str) -> str:
        return subject_key(nin, self._secret)

    async def record_consent(self, consent: Consent, actor: Actor) -> RecordedConsent:
        """Judge and append `consent`; effective ones are published, pending ones wait.

        Raises NotEntitledError or OrganisationMismatchError (nothing recorded) or
        ChangeNotPublishedError (recorded, publish pending).
        """
        key = self.subject_key(consent.nin)
        consent_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            state = await self._locked(conn, key)
            if consent.recipient_org is not None:
                await _check_agency(
                    conn, consent.recipient_org, consent.recipient_agency, "recipient.org_id"
                )
            verdict = self._authority.consent_verdict(
                state, actor, consent.recipient_agency, consent.recipient_org, consent.status
            )
            _refuse(verdict.refusal, key)
            recorded_at = datetime.now(UTC)
            await conn.execute(
                """
                INSERT INTO consents (consent_id, subject_key, recipient_agency, recipient_org,
                    categories, status, valid_from, valid_to, recorded_by, recorded_by_org,
                    recorded_at, state, statement_ref, recorded_by_role)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                """,
                uuid.UUID(consent_id),
                key,
                consent.recipient_agency,
                consent.recipient_org,
                list(consent.categories),
                consent.status,
                consent.valid_from,
                consent.valid_to,
                consent.recorded_by,
                actor.org_id,
                recorded_at,
                verdict.effect,
                consent.statement_ref,
                actor.role,
            )
            if verdict.effect == "effective":
                record = consent_record(
                    consent,
                    consent_id=consent_id,
                    subject_key=key,
                    recorded_by_org=actor.org_id,
                    recorded_at=recorded_at,
                )
                await self._append(conn, key, state, CONSENT_CHANGE, record)
        metrics.REGISTRY_CHANGES.labels("consent").inc()
        log.info(
            "consent_recorded",
            change_id=consent_id,
            subject_key=key,
            status=consent.status,
            state=verdict.effect,
            recipient_agency=consent.recipient_agency,
            recipient_org=consent.recipient_org,
        )
        if verdict.effect == "effective":
            await self._publish(key, consent_id)
        return RecordedConsent(consent_id, verdict.effect, verdict.pending_reason)

    async def confirm_consent(
        self, consent_id: uuid.UUID, actor: Actor, patient_key: str | None = None
    ) -> RecordedConsent:
        """Confirm a pending consent (by a disinterested health organisation with a relation,
        or by the patient: `patient_key`) and publish it. Confirming twice is harmless.

        Raises UnknownConsentError (no such consent, or about another person for a patient),
        NotEntitledError, or ChangeNotPublishedError.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM consents WHERE consent_id = $1", consent_id)
            if row is None or (patient_key is not None and row["subject_key"] != patient_key):
                raise UnknownConsentError(str(consent_id))
            key = row["subject_key"]
            state = await self._locked(conn, key)
            row = await conn.fetchrow(
                "SELECT * FROM consents WHERE consent_id = $1 FOR UPDATE", consent_id
            )
            assert row is not None  # history rows are never deleted
            if row["state"] != "pending":
                return RecordedConsent(str(consent_id), row["state"])
            if self._authority.restricted_since(
                state, row["recipient_agency"], row["recipient_org"], row["recorded_at"]
            ):
                raise ConsentSupersededError(str(consent_id))
            if patient_key is None:
                _refuse(
                    self._authority.confirmation_refusal(
                        state, actor, row["recipient_agency"], row["recipient_org"]
                    ),
                    key,
                )
            confirmed_at = datetime.now(UTC)
            await conn.execute(
                "UPDATE consents SET state = 'confirmed', confirmed_by_org = $2,"
                " confirmed_at = $3 WHERE consent_id = $1",
                consent_id,
                actor.org_id,
                confirmed_at,
            )
            consent = Consent(
                nin="",
                recipient_agency=row["recipient_agency"],
                recipient_org=row["recipient_org"],
                categories=tuple(row["categories"]),
                status=row["status"],
                valid_from=row["valid_from"],
                valid_to=row["valid_to"],
                recorded_by=row["recorded_by"],
            )
            # It takes effect from its confirmation: a restriction recorded while it waited
            # stays before it.
            record = consent_record(
                consent,
                consent_id=str(consent_id),
                subject_key=key,
                recorded_by_org=row["recorded_by_org"],
                recorded_at=confirmed_at,
            )
            await self._append(conn, key, state, CONSENT_CHANGE, record)
        log.info("consent_confirmed", change_id=str(consent_id), subject_key=key)
        await self._publish(key, str(consent_id))
        return RecordedConsent(str(consent_id), "confirmed")

    async def record_care_team_change(self, change: CareTeamChange, actor: Actor) -> str:
        """Judge, append and publish `change`; its change_id (errors as for `record_consent`)."""
        key = self.subject_key(change.nin)
        change_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            state = await self._locked(conn, key)
            await _check_agency(conn, change.org_id, change.agency, "org_id")
            _refuse(
                self._authority.care_team_refusal(
                    state, actor, change.org_id, change.status, change.role
                ),
                key,
            )
            recorded_at = datetime.now(UTC)
            await conn.execute(
                """
                INSERT INTO care_team_changes (change_id, subject_key, agency, org_id, role,
                    status, recorded_by_org, recorded_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                """,
                uuid.UUID(change_id),
                key,
                change.agency,
                change.org_id,
                change.role,
                change.status,
                actor.org_id,
                recorded_at,
            )
            record = care_team_record(
                change,
                change_id=change_id,
                subject_key=key,
                recorded_by_org=actor.org_id,
                recorded_at=recorded_at,
            )
            await self._append(conn, key, state, CARE_TEAM_CHANGE, record)
        metrics.REGISTRY_CHANGES.labels("care_team").inc()
        log.info(
            "care_team_change_recorded",
            change_id=change_id,
            subject_key=key,
            status=change.status,
            role=change.role,
            org_id=change.org_id,
        )
        await self._publish(key, change_id)
        return change_id

    async def record_contact(self, contact: CareTeamContact, actor: Actor) -> str:
        """Judge (`contact.own_staff`) and append a contact person; its contact_id.

        Not streamed: no staff name goes on Kafka; the inbox reads the table when it shows an
        alert or the person view. The name is sealed under the person's current data key
        (`contact.name`), so an erasure makes it unreadable. Raises NotEntitledError (nothing
        recorded).
        """
        key = self.subject_key(contact.nin)
        contact_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            # The care-team changes' locks: a removal recorded meanwhile is judged before or
            # after this, never beside it.
            state = await self._locked(conn, key)
            _refuse(
                self._authority.contact_refusal(state, actor, contact.org_id, contact.role), key
            )
            data_key = (await person_keys.current(conn, self._wrap, [key]))[key]
            await conn.execute(
                """
                INSERT INTO care_team_contacts (contact_id, subject_key, org_id, role, position,
                    name, hpr_number, phone, status, recorded_by_org)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                """,
                contact_id,
                key,
                contact.org_id,
                contact.role,
                contact.position,
                seal(data_key, CONTACT_NAME_PATH, contact.name),
                contact.hpr_number,
                contact.phone,
                contact.status,
                actor.org_id,
            )
        metrics.REGISTRY_CHANGES.labels("contact").inc()
        log.info(
            "contact_recorded",
            contact_id=str(contact_id),
            subject_key=key,
            org_id=contact.org_id,
            role=contact.role,
            position=contact.position,
            status=contact.status,
        )
        return str(contact_id)

    async def record_register_change(
        self, nin: str, register: str, agency: str, org_id: str | None, operator_org: str
    ) -> str:
        """The operator sets (or, with org_id None, clears) a person's home municipality or GP.

        Only the operator calls this (the caller checks the role); the organisation must be a
        registered organisation of `agency`.
        """
        key = self.subject_key(nin)
        change_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            state = await self._locked(conn, key)
            if org_id is not None:
                await _check_agency(conn, org_id, agency, "org_id")
            recorded_at = datetime.now(UTC)
            await conn.execute(
                """
                INSERT INTO register_changes (change_id, subject_key, register, org_id,
                    recorded_by_org, recorded_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                """,
                uuid.UUID(change_id),
                key,
                register,
                org_id,
                operator_org,
                recorded_at,
            )
            record = {
                "change_id": change_id,
                "subject_key": key,
                "register": register,
                "organisation": None if org_id is None else {"agency": agency, "org_id": org_id},
                "recorded_by_org": operator_org,
                "recorded_at": recorded_at,
            }
            await self._append(conn, key, state, REGISTER_CHANGE, record)
        metrics.REGISTRY_CHANGES.labels("register").inc()
        log.info(
            "register_change_recorded", change_id=change_id, subject_key=key, register=register
        )
        await self._publish(key, change_id)
        return change_id

    @staticmethod
    async def _locked(conn: Connection, key: str) -> PersonState:
        """The person's facts, with the person's outbox lock and facts row lock held."""
        await Outbox.lock_subject(conn, key)
        return (await facts.lock(conn, [key]))[key]

    async def _append(
        self,
        conn: Connection,
        key: str,
        state: PersonState,
        schema: str,
        record: Mapping[str, Any],
    ) -> None:
        """The outbox record of a change, and the facts it changes."""
        await Outbox.add(conn, self._outgoing(schema, key, record))
        after = apply(state, schema, record)
        if after is not state:
            await facts.save(conn, {key: after})
        await Outbox.add(conn, snapshot_record(self._codec, key, after, record["recorded_at"]))

    def _outgoing(self, schema: str, key: str, record: Mapping[str, Any]) -> OutgoingRecord:
        return OutgoingRecord(topics.EVENTS, key.encode(), self._codec.encode(schema, record))

    async def _publish(self, key: str, change_id: str) -> None:
        try:
            await self._outbox.publish_pending(key)
        except _UNAVAILABLE as error:
            log.warning(
                "change_publish_pending",
                change_id=change_id,
                subject_key=key,
                error_type=type(error).__name__,
            )
            raise ChangeNotPublishedError(change_id) from error


def _refuse(refusal: Refusal | None, key: str) -> None:
    if refusal is not None:
        raise NotEntitledError(refusal, key)


async def _check_agency(conn: Connection, org_id: str, agency: str, field: str) -> None:
    """The organisation must be registered in the directory as the agency it is claimed to be."""
    registered = await conn.fetchval("SELECT agency FROM organisations WHERE org_id = $1", org_id)
    if registered != agency:
        raise OrganisationMismatchError(field, f"is not a registered {agency} organisation")
