"""The gateway's retraction ledger: each event a sender retracts, retracted once (PostgreSQL).

A retraction is judged (`carebus.domain.retraction.retraction_refusal`) against the gateway's
own ledger of accepted events, which knows every event's sender, person and type the moment it
is accepted, and recorded in `retractions` in the transaction that accepts it: the primary key
(source_org, retracted_event_id) makes a concurrent second retraction of the same event wait
for the first and then see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from carebus.adapters.auth import Connection
from carebus.domain.authority import NotEntitledError
from carebus.domain.events import RETRACTION, Event
from carebus.domain.retraction import Retracted, Standing, retraction_refusal


class Candidate(Protocol):
    """An event of a request being accepted: its position, the event, the person's key."""

    @property
    def index(self) -> int: ...

    @property
    def event(self) -> Event: ...

    @property
    def subject_key(self) -> str: ...


async def screen(conn: Connection, candidates: Sequence[Candidate]) -> None:
    """Judge and record every retraction among `candidates` (a request's events, in order).

    Raises NotEntitledError (422 or 409, `Refusal.status`) for the first refused one; the
    caller's transaction then rolls back, so nothing of the request is recorded. An event
    earlier in the same request counts as accepted.
    """
    earlier: dict[tuple[str, str], Retracted] = {}
    for candidate in candidates:
        event = candidate.event
        if event.event_type == RETRACTION:
            target = event.payload["retracted_event_id"]
            original = earlier.get((event.source_org, target)) or await _accepted(
                conn, event.source_org, target
            )
            standing = await _claim(conn, candidate, target)
            refusal = retraction_refusal(
                subject_key=candidate.subject_key,
                retraction_event_id=event.event_id,
                original=original,
                standing=standing,
            )
            if refusal is not None:
                raise NotEntitledError(refusal, candidate.subject_key, candidate.index)
        earlier[(event.source_org, event.event_id)] = Retracted(
            candidate.subject_key, event.event_type
        )


async def _accepted(conn: Connection, source_org: str, event_id: str) -> Retracted | None:
    row = await conn.fetchrow(
        "SELECT subject_key, event_type FROM accepted_events "
        "WHERE source_org = $1 AND event_id = $2",
        source_org,
        event_id,
    )
    return None if row is None else Retracted(row["subject_key"], row["event_type"])


async def _claim(conn: Connection, candidate: Candidate, target: str) -> Standing | None:
    """Record this retraction of `target`; the one that stood before it, if any."""
    event = candidate.event
    inserted = await conn.fetchval(
        """
        INSERT INTO retractions
            (source_org, retracted_event_id, retraction_event_id, reason, subject_key)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (source_org, retracted_event_id) DO NOTHING
        RETURNING retraction_event_id
        """,
        event.source_org,
        target,
        event.event_id,
        event.payload["reason"],
        candidate.subject_key,
    )
    if inserted is not None:
        return None
    row = await conn.fetchrow(
        "SELECT retraction_event_id, reason FROM retractions "
        "WHERE source_org = $1 AND retracted_event_id = $2",
        event.source_org,
        target,
    )
    assert row is not None  # the conflicting row is committed: ON CONFLICT waited for it
    return Standing(row["retraction_event_id"], row["reason"])
