"""Consent and care-team changes: the validated change (`services.registry.requests` reads it
from a request body) and its record for the stream; and the person's state snapshot that goes
out with every change."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from carebus.adapters.publisher import OutgoingRecord
from carebus.domain import records
from carebus.domain.routing import PersonState
from carebus.domain.snapshots import ORIGIN_CHANGE, PERSON_SNAPSHOT, snapshot
from carebus.wire import topics
from carebus.wire.codec import Codec


@dataclass(frozen=True, slots=True)
class Consent:
    """A validated consent, withdrawal or objection; times are UTC."""

    nin: str = field(repr=False)
    recipient_agency: str
    recipient_org: str | None  # None: every organisation of the agency
    categories: tuple[str, ...]
    status: str
    valid_from: datetime
    valid_to: datetime | None
    recorded_by: str = field(repr=False)  # a staff reference may name a person
    # Where the patient's statement is kept (a journal note, a signed form): proof of consent.
    statement_ref: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CareTeamChange:
    """A validated care-team change: an organisation joins or leaves a person's care team."""

    nin: str = field(repr=False)
    agency: str
    org_id: str
    role: str
    status: str


@dataclass(frozen=True, slots=True)
class CareTeamContact:
    """A validated contact person: a named member of staff at a care-team organisation, in a
    role and a position, for one person (issue 17, item 4). Not streamed: the inbox reads it."""

    nin: str = field(repr=False)
    org_id: str
    role: str  # coordinator | pathway_coordinator | gp | contact
    position: str  # accountable | deputy
    name: str = field(repr=False)  # a staff member's name: sealed under the person's key
    hpr_number: str | None
    phone: str | None = field(repr=False)
    status: str  # active | ended


def consent_record(
    consent: Consent,
    *,
    consent_id: str,
    subject_key: str,
    recorded_by_org: str,
    recorded_at: datetime,
) -> records.ConsentChange:
    """The `ConsentChange` record of `consent`; it carries the subject key, never the nin."""
    return {
        "change_id": consent_id,
        "subject_key": subject_key,
        "recipient": {"agency": consent.recipient_agency, "org_id": consent.recipient_org},
        "categories": list(consent.categories),
        "status": consent.status,
        "valid_from": consent.valid_from,
        "valid_to": consent.valid_to,
        "recorded_by": consent.recorded_by,
        "recorded_by_org": recorded_by_org,
        "recorded_at": recorded_at,
    }


def care_team_record(
    change: CareTeamChange,
    *,
    change_id: str,
    subject_key: str,
    recorded_by_org: str,
    recorded_at: datetime,
) -> records.CareTeamChange:
    """The `CareTeamChange` record of `change`; it carries the subject key, never the nin."""
    return {
        "change_id": change_id,
        "subject_key": subject_key,
        "member": {"agency": change.agency, "org_id": change.org_id},
        "role": change.role,
        "status": change.status,
        "recorded_by_org": recorded_by_org,
        "recorded_at": recorded_at,
    }


def snapshot_record(
    codec: Codec, subject_key: str, state: PersonState, recorded_at: datetime
) -> OutgoingRecord:
    """The person's state after a change recorded at `recorded_at`, for care.persons.v1.

    It goes into the outbox right after the change's own record, so it is published after it
    and in the person's order; the compacted topic keeps the latest for good, which is what a
    router that lost its state restores from (`carebus.domain.snapshots.restore`).
    """
    record = snapshot(subject_key, state, recorded_at, ORIGIN_CHANGE)
    return OutgoingRecord(
        topics.PERSONS, subject_key.encode(), codec.encode(PERSON_SNAPSHOT, record)
    )
