"""Recording consent and care-team changes: a history row and outbox record, then the publish."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from carebus import metrics, topics
from carebus.auth import Connection
from carebus.codec import Codec
from carebus.identity import subject_key
from carebus.publisher import BrokerUnavailableError, OutgoingRecord
from carebus.telemetry import get_logger
from services.registry.changes import (
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    CareTeamChange,
    Consent,
    care_team_record,
    consent_record,
)
from services.registry.outbox import Outbox

log = get_logger(__name__)

_UNAVAILABLE: Final = (
    BrokerUnavailableError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


class OrganisationMismatchError(Exception):
    """The request names an organisation number that is registered under another agency."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class ChangeNotPublishedError(Exception):
    """The change is committed but not acknowledged by the broker; the relay will publish it."""

    def __init__(self, change_id: str) -> None:
        super().__init__(f"change {change_id} is recorded but not yet published")
        self.change_id = change_id


class History:
    """The registry's system of record: changes are appended, never updated, and then streamed.

    A change is recorded by one transaction (the person's outbox lock, the history row, the
    outbox record) and then published with every record of the person still pending; only
    after the broker's acknowledgement does the caller get the change's id. The nin is used
    only to compute the subject key and is never stored.
    """

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox, codec: Codec, secret: bytes) -> None:
        self._pool = pool
        self._outbox = outbox
        self._codec = codec
        self._secret = secret

    async def record_consent(self, consent: Consent, *, recorded_by_org: str) -> str:
        """Append `consent` and publish it; its consent_id.

        Raises OrganisationMismatchError (nothing recorded) or ChangeNotPublishedError
        (recorded, publish pending).
        """
        key = subject_key(consent.nin, self._secret)
        consent_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            await Outbox.lock_subject(conn, key)
            if consent.recipient_org is not None:
                await _check_agency(
                    conn, consent.recipient_org, consent.recipient_agency, "recipient.org_id"
                )
            recorded_at = datetime.now(UTC)
            await conn.execute(
                """
                INSERT INTO consents (consent_id, subject_key, recipient_agency, recipient_org,
                    categories, status, valid_from, valid_to, recorded_by, recorded_by_org,
                    recorded_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
                recorded_by_org,
                recorded_at,
            )
            record = consent_record(
                consent,
                consent_id=consent_id,
                subject_key=key,
                recorded_by_org=recorded_by_org,
                recorded_at=recorded_at,
            )
            await Outbox.add(conn, self._outgoing(CONSENT_CHANGE, key, record))
        metrics.REGISTRY_CHANGES.labels("consent").inc()
        log.info(
            "consent_recorded",
            change_id=consent_id,
            subject_key=key,
            status=consent.status,
            recipient_agency=consent.recipient_agency,
            recipient_org=consent.recipient_org,
        )
        await self._publish(key, consent_id)
        return consent_id

    async def record_care_team_change(self, change: CareTeamChange, *, recorded_by_org: str) -> str:
        """Append `change` and publish it; its change_id (errors as for `record_consent`)."""
        key = subject_key(change.nin, self._secret)
        change_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            await Outbox.lock_subject(conn, key)
            await _check_agency(conn, change.org_id, change.agency, "org_id")
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
                recorded_by_org,
                recorded_at,
            )
            record = care_team_record(
                change,
                change_id=change_id,
                subject_key=key,
                recorded_by_org=recorded_by_org,
                recorded_at=recorded_at,
            )
            await Outbox.add(conn, self._outgoing(CARE_TEAM_CHANGE, key, record))
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

    def _outgoing(self, schema: str, key: str, record: dict[str, Any]) -> OutgoingRecord:
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


async def _check_agency(conn: Connection, org_id: str, agency: str, field: str) -> None:
    """An organisation number not yet registered is accepted; one of another agency is not."""
    registered = await conn.fetchval("SELECT agency FROM organisations WHERE org_id = $1", org_id)
    if registered is not None and registered != agency:
        raise OrganisationMismatchError(
            field, f"organisation {org_id} is registered as {registered}, not {agency}"
        )
