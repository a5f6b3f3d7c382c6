"""Accepting events: the idempotency ledger and the publish that must finish before `202`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from carebus.adapters import facts, person_keys, retractions
from carebus.adapters.auth import Connection
from carebus.adapters.publisher import OutgoingRecord, RecordPublisher
from carebus.domain.authority import JUDGED_EVENT_TYPES, Actor, AuthorityPolicy, NotEntitledError
from carebus.domain.events import Event, content_fingerprint, event_to_record
from carebus.domain.identity import subject_key
from carebus.domain.records import event_schema_name
from carebus.domain.routing import STATE_SENDERS, PersonState, apply
from carebus.runtime import metrics
from carebus.runtime.telemetry import get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.sealing import KeyWrap, seal_record

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    subject_key: str


class ConflictError(Exception):
    """An event_id this source organisation already used for other content."""

    def __init__(self, index: int) -> None:
        super().__init__("event_id already accepted with other content")
        self.index = index


@dataclass(frozen=True, slots=True)
class _Prepared:
    index: int  # position in the request, for error messages
    event: Event
    subject_key: str
    fingerprint: bytes


class Ingest:
    """Records each (source organisation, event_id) once and publishes it once.

    The ledger row is inserted in a transaction that stays open until the broker has
    acknowledged the record: a concurrent repeat of the same event waits on that row and then
    sees it, and a failed publish rolls the row back so the client's retry publishes again.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: RecordPublisher,
        codec: Codec,
        secret: bytes,
        authority: AuthorityPolicy,
        wrap: KeyWrap,
    ) -> None:
        self._pool = pool
        self._wrap = wrap
        self._publisher = publisher
        self._codec = codec
        self._secret = secret
        self._authority = authority

    async def accept(self, events: Sequence[Event], actor: Actor) -> list[Accepted]:
        """Accept `events` all or nothing.

        Raises ConflictError, NotEntitledError (a claim `actor` may not make about a person,
        judged against every claim accepted before it) or BrokerUnavailableError; nothing is
        recorded or published then.
        """
        received_at = datetime.now(UTC)
        prepared = self._deduplicate(
            [
                _Prepared(
                    index, event, subject_key(event.nin, self._secret), content_fingerprint(event)
                )
                for index, event in enumerate(events)
            ]
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await retractions.screen(conn, prepared)  # may refuse: nothing is recorded then
            new_ids = await self._record(conn, prepared)
            await self._check_repeats(conn, prepared, new_ids)
            fresh = [p for p in prepared if (p.event.source_org, p.event.event_id) in new_ids]
            # The nin and free text leave the gateway sealed under the person's data key
            # (docs/retention.md, "Erasure"); the fingerprint above is of the clear event, so a
            # retry still matches.
            keys = await person_keys.current(conn, self._wrap, (p.subject_key for p in fresh))
            records = [
                seal_record(
                    event_to_record(p.event, p.subject_key, received_at), keys[p.subject_key]
                )
                for p in fresh
            ]
            outgoing = [self._outgoing(p, r) for p, r in zip(fresh, records, strict=True)]
            stateful = [
                (p, record)
                for p, record in zip(fresh, records, strict=True)
                if p.event.event_type in STATE_SENDERS or p.event.event_type in JUDGED_EVENT_TYPES
            ]
            if any(p.event.event_type in JUDGED_EVENT_TYPES for p, _ in stateful):
                await self._fold(conn, stateful, actor)  # may refuse: nothing is published
                await self._publisher.publish(outgoing)
            else:
                # Nothing to judge (admissions, discharges change only their sender's facts):
                # the facts are folded while the broker acknowledges; the transaction commits
                # only when both are done.
                await asyncio.gather(
                    self._fold(conn, stateful, actor), self._publisher.publish(outgoing)
                )
        if fresh:
            counts = Counter((p.event.event_type, p.event.source_agency) for p in fresh)
            for (event_type, agency), count in counts.items():
                metrics.EVENTS_ACCEPTED.labels(event_type, agency).inc(count)
            # One line per request (a batch of 1,000 used to log 1,000 lines).
            log.info(
                "events_accepted",
                event_ids=[p.event.event_id for p in fresh],
                subject_keys=[p.subject_key for p in fresh],
                event_types=sorted({p.event.event_type for p in fresh}),
            )
        repeats = len(prepared) - len(fresh)
        if repeats:
            metrics.EVENTS_DUPLICATE.labels(prepared[0].event.source_agency).inc(repeats)
        return [Accepted(p.event.event_id, p.subject_key) for p in prepared]

    @staticmethod
    def _deduplicate(prepared: list[_Prepared]) -> list[_Prepared]:
        """The same event twice in a batch counts once; the same id with other content conflicts."""
        seen: dict[tuple[str, str], bytes] = {}
        unique: list[_Prepared] = []
        for p in prepared:
            identity = (p.event.source_org, p.event.event_id)
            if identity in seen:
                if seen[identity] != p.fingerprint:
                    raise ConflictError(p.index)
                continue
            seen[identity] = p.fingerprint
            unique.append(p)
        return unique

    @staticmethod
    async def _record(conn: Connection, prepared: Sequence[_Prepared]) -> set[tuple[str, str]]:
        rows = await conn.fetch(
            """
            INSERT INTO accepted_events
                (source_org, event_id, content_hash, event_type, subject_key)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[])
            ON CONFLICT (source_org, event_id) DO NOTHING
            RETURNING source_org, event_id
            """,
            [p.event.source_org for p in prepared],
            [p.event.event_id for p in prepared],
            [p.fingerprint for p in prepared],
            [p.event.event_type for p in prepared],
            [p.subject_key for p in prepared],
        )
        return {(row["source_org"], row["event_id"]) for row in rows}

    @staticmethod
    async def _check_repeats(
        conn: Connection, prepared: Sequence[_Prepared], new_ids: set[tuple[str, str]]
    ) -> None:
        repeats = [p for p in prepared if (p.event.source_org, p.event.event_id) not in new_ids]
        if not repeats:
            return
        rows = await conn.fetch(
            """
            SELECT source_org, event_id, content_hash FROM accepted_events
            WHERE (source_org, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            """,
            [p.event.source_org for p in repeats],
            [p.event.event_id for p in repeats],
        )
        stored = {(row["source_org"], row["event_id"]): bytes(row["content_hash"]) for row in rows}
        for p in repeats:
            held = stored.get((p.event.source_org, p.event.event_id))
            # An erased person's fingerprints are gone (migration 0019): the id is a repeat.
            if held != p.fingerprint and held != person_keys.ERASED_FINGERPRINT:
                raise ConflictError(p.index)

    async def _fold(
        self,
        conn: Connection,
        stateful: Sequence[tuple[_Prepared, dict[str, object]]],
        actor: Actor,
    ) -> None:
        """Judge the events that change who learns about a person, in order, and write the
        person facts they change (locked until the transaction ends)."""
        if not stateful:
            return
        states = await facts.lock(conn, (p.subject_key for p, _ in stateful))
        changed: dict[str, PersonState] = {}
        for p, record in stateful:
            state = changed.get(p.subject_key, states[p.subject_key])
            event = p.event
            refusal = self._authority.event_refusal(state, actor, event.event_type, event.payload)
            if refusal is not None:
                raise NotEntitledError(refusal, p.subject_key, p.index)
            after = apply(state, event_schema_name(event.event_type), record)
            if after is not state:
                changed[p.subject_key] = after
        await facts.save(conn, changed)

    def _outgoing(self, p: _Prepared, record: dict[str, object]) -> OutgoingRecord:
        return OutgoingRecord(
            topic=topics.EVENTS,
            key=p.subject_key.encode(),
            value=self._codec.encode_event(record),
            headers=(
                ("carebus-event-id", p.event.event_id.encode()),
                ("carebus-event-type", p.event.event_type.encode()),
                ("carebus-source-org", p.event.source_org.encode()),
            ),
        )
