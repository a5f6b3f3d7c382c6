"""State that can be rebuilt: a person's state snapshot, how a lost state is restored from one,
and the fold that rebuilds a state from the system of record's history (pure, no I/O).

The registry publishes a `PersonSnapshot` with every change it records, onto a compacted topic
that keeps each person's latest for good; `carebus rebuild-state` republishes one per person,
folded from the registry's history and the event store. The router restores from it with
`restore`, which can never make a state more permissive than the newer of the two records it
holds for a recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, TypedDict

import orjson

from carebus.domain.records import NAMESPACE
from carebus.domain.routing import Consent, PersonState, apply

PERSON_SNAPSHOT: Final = f"{NAMESPACE}.PersonSnapshot"
ORIGIN_CHANGE: Final = "change"
ORIGIN_REBUILD: Final = "rebuild"
# How far a consent record restricts: between two records of one recipient at the same time,
# the more restrictive stands.
_RESTRICTION: Final = {"objection": 2, "withdrawn": 1}


class PersonSnapshot(TypedDict):
    """A person's state on care.persons.v1 (schemas/avro/person_snapshot.avsc)."""

    subject_key: str
    state_json: str
    as_of: datetime
    origin: str


def snapshot(subject_key: str, state: PersonState, as_of: datetime, origin: str) -> PersonSnapshot:
    """The snapshot record of `state`; `as_of` is when its latest registry change was recorded."""
    return {
        "subject_key": subject_key,
        "state_json": orjson.dumps(state.to_json()).decode(),
        "as_of": as_of,
        "origin": origin,
    }


def snapshot_state(record: Mapping[str, Any]) -> PersonState:
    """The state a snapshot record carries."""
    return PersonState.from_json(orjson.loads(record["state_json"]))


# Clocks of the registry's hosts and the router's may differ by this much.
CLOCK_SKEW: Final = timedelta(minutes=5)


def snapshot_problem(
    record: Mapping[str, Any], key: str, state: PersonState, now: datetime
) -> str | None:
    """Why a snapshot read under Kafka key `key` must not be restored from (None: it may): it
    is another person's, or it or a consent in it is from the future — a consent recorded
    "later" than every real one would outrank them all in `merged_consents`."""
    if record["subject_key"] != key:
        return "subject_key_mismatch"
    horizon = now + CLOCK_SKEW
    if record["as_of"] > horizon:
        return "as_of_in_the_future"
    if any(consent.recorded_at > horizon for consent in state.consents):
        return "consent_in_the_future"
    return None


def restore(held: PersonState | None, snapshot_of: PersonState) -> PersonState:
    """The state to route by, from the router's (`held`; None: it has none for the person, its
    changelog is lost or never had them) and the registry's latest snapshot.

    Without a held state the snapshot is the state. With one, the held state stands (it has
    folded events the snapshot may not have seen), but its consents are merged with the
    snapshot's: per recipient the later record, at the same time the more restrictive. So an
    objection or withdrawal either side knows is never lost to an older consent.
    """
    if held is None:
        return snapshot_of
    consents = merged_consents(held.consents, snapshot_of.consents)
    return held if consents == held.consents else replace(held, consents=consents)


def merged_consents(ours: Iterable[Consent], theirs: Iterable[Consent]) -> tuple[Consent, ...]:
    """The latest record per recipient of both, in recording order (as `PersonState` keeps
    them); a tie in time goes to the more restrictive record."""
    latest: dict[tuple[str, str | None], Consent] = {}
    for consent in (*ours, *theirs):
        scope = (consent.agency, consent.org_id)
        kept = latest.get(scope)
        if kept is None or _outranks(consent, kept):
            latest[scope] = consent
    return tuple(sorted(latest.values(), key=lambda c: c.recorded_at))


def _outranks(candidate: Consent, kept: Consent) -> bool:
    if candidate.recorded_at != kept.recorded_at:
        return candidate.recorded_at > kept.recorded_at
    return _RESTRICTION.get(candidate.status, 0) > _RESTRICTION.get(kept.status, 0)


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One record of a person's history as the system of record keeps it: a registry change
    (by when it took effect) or a stored event (by when it was received)."""

    at: datetime
    schema_name: str
    record: Mapping[str, Any]
    # Breaks ties in `at`: the order the store holds them in (events: their stream offset).
    sequence: int = 0


def rebuild(history: Iterable[HistoryRecord]) -> PersonState:
    """The person's state folded from their history in time order, with the router's own fold.

    The registry's changes and the events were one ordered stream; the store keeps their times,
    not that order, so records are taken by time. Consents are ordered by their recording time
    whatever the order, and the other changes each set one thing, so only changes of one thing
    within the same instant could come out differently.
    """
    state = PersonState()
    for entry in sorted(history, key=lambda h: (h.at, h.sequence)):
        state = apply(state, entry.schema_name, entry.record)
    return state
