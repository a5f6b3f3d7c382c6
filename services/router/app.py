"""The router: routes every event on care.events.v1 to the organisations that may see it.

One faust agent reads the person-keyed stream in order. Consent and care-team changes update a
table of person state (backed by a changelog topic, so a restarted or rebalanced worker recovers
it); each event first updates that state and is then routed by the pure decisions in
`carebus.routing`: deliveries to `care.deliveries.<agency>.v1`, one disclosure per candidate to
`care.audit.v1`. Processing is at-least-once: faust flushes what was produced before it commits
an offset, ids are deterministic and every sink is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import faust
from confluent_kafka import Producer
from faust.types import EventT

from carebus import metrics, topics
from carebus.codec import Codec, DecodeError
from carebus.config import Settings
from carebus.deadletter import DeadLetterPolicy, FaustMessage, Reason
from carebus.kafka import producer_config
from carebus.policy import Policy, load_policy
from carebus.routing import PersonState, apply, route
from carebus.telemetry import get_logger

log = get_logger(__name__)

CONSENT_CHANGE = "no.carebus.v1.ConsentChange"
CARETEAM_CHANGE = "no.carebus.v1.CareTeamChange"
DELIVERY = "no.carebus.v1.Delivery"
DISCLOSURE = "no.carebus.v1.Disclosure"


def create_app(settings: Settings) -> faust.App:
    """The router's faust app wired to the broker, its topics, its table and its agent."""
    policy = load_policy(settings.routing_policy)
    codec = Codec.default()
    app = faust.App(
        "carebus-router",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        # Keys and table values are bytes we encode ourselves (subject key, JSON person state).
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(settings.state_dir / "router"),
        topic_partitions=settings.person_partitions,
        topic_replication_factor=settings.internal_topic_replication,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="lz4",
        web_enabled=False,
        stream_wait_empty=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    events_topic = app.topic(
        topics.EVENTS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    outgoing = {
        name: app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        for name in (topics.AUDIT, *topics.DELIVERIES)
    }
    persons = app.Table(
        "persons", partitions=settings.person_partitions, key_type=bytes, value_type=bytes
    )
    dead_letters = DeadLetterPolicy(
        Producer(producer_config(settings, "carebus-router-deadletters")), codec, consumer="router"
    )
    router = Router(policy, codec, persons, outgoing, dead_letters)

    @app.agent(events_topic)
    async def route_events(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            await router.handle(event)
            yield None

    app.router_core = router  # type: ignore[attr-defined]
    return app


class Router:
    """What the agent does with one record; kept apart from faust's wiring so it reads plainly."""

    def __init__(
        self,
        policy: Policy,
        codec: Codec,
        persons: Any,
        outgoing: dict[str, Any],
        dead_letters: DeadLetterPolicy,
    ) -> None:
        self._policy = policy
        self._codec = codec
        self._persons = persons
        self._outgoing = outgoing
        self._dead_letters = dead_letters

    async def handle(self, event: EventT[bytes]) -> None:
        """Route one record; a record that cannot be routed is dead-lettered, never retried
        forever, so one bad record cannot stop a person's partition."""
        try:
            await self._handle(event)
        except Exception as error:  # any failure of one record is a dead letter
            log.error(
                "routing_failed",
                error_type=type(error).__name__,
                subject_key=_text(event.message.key),
            )
            self._dead_letters.send(
                FaustMessage(event.message),
                Reason.INVALID_RECORD,
                f"routing failed: {type(error).__name__}",
            )
            self._dead_letters.flush(timeout=30.0)

    async def _handle(self, event: EventT[bytes]) -> None:
        message = event.message
        subject_key = _text(message.key)
        try:
            decoded = self._codec.decode(message.value or b"")
        except DecodeError as error:
            self._dead_letters.send_undecodable(FaustMessage(message), error.reason)
            self._dead_letters.flush(timeout=30.0)
            return
        table_key = subject_key.encode()
        stored = self._persons.get(table_key)
        before = PersonState.from_json(json.loads(stored)) if stored else PersonState()
        state = apply(before, decoded.schema_name, decoded.record)
        if state is not before:
            self._persons[table_key] = json.dumps(state.to_json(), separators=(",", ":")).encode()
        if "event_type" not in decoded.record or decoded.schema_name in (
            CONSENT_CHANGE,
            CARETEAM_CHANGE,
        ):
            return
        routing = route(decoded.record, state, self._policy, datetime.now(UTC))
        key = subject_key.encode()
        for delivery in routing.deliveries:
            topic = topics.deliveries(delivery["recipient"]["agency"])
            await self._outgoing[topic].send(key=key, value=self._codec.encode(DELIVERY, delivery))
        for disclosure in routing.disclosures:
            await self._outgoing[topics.AUDIT].send(
                key=key, value=self._codec.encode(DISCLOSURE, disclosure)
            )
            metrics.ROUTING_DECISIONS.labels(
                disclosure["event_type"],
                disclosure["recipient"]["agency"] if disclosure["recipient"] else "",
                disclosure["decision"],
                disclosure["basis"] or "",
                disclosure["reason"] or "",
            ).inc()
        received_at = decoded.record.get("received_at")
        if isinstance(received_at, datetime):
            metrics.ROUTING_DELAY.labels(decoded.record["event_type"]).observe(
                max(0.0, (datetime.now(UTC) - received_at).total_seconds())
            )
        log.info(
            "event_routed",
            event_id=decoded.record["event_id"],
            subject_key=subject_key,
            deliveries=len(routing.deliveries),
            decisions=len(routing.disclosures),
        )


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
