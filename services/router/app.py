"""The router: routes every event on care.events.v1 to the organisations that may see it.

One faust agent reads the person-keyed stream in order. Consent and care-team changes update a
table of person state (backed by a changelog topic, so a restarted or rebalanced worker recovers
it); each event first updates that state and is then routed by the pure decisions in
`domain.routing`: deliveries to `care.deliveries.<agency>.v1`, one disclosure per candidate to
`care.audit.v1`. A state lost with its changelog is restored from the registry's latest snapshot
of the person (care.persons.v1, compacted: `services.router.snapshots`), read to its end before
anything is routed. Records are taken in batches; a batch's deliveries and disclosures go out
through one confluent-kafka producer (murmur2, so keys land where faust puts them) and the batch
is acknowledged to faust only when the broker has all of them. Processing is at-least-once:
faust commits offsets only of acknowledged records (and flushes the table's changelog first),
ids are deterministic and every sink is idempotent.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import faust
import orjson
from confluent_kafka import Producer
from faust.types import EventT

from carebus.adapters.deadletter import (
    DeadLetterPolicy,
    FaustMessage,
    Reason,
)
from carebus.adapters.kafka import producer_config
from carebus.adapters.outages import OUTAGES
from carebus.adapters.publisher import OutgoingRecord, Publisher, RecordPublisher
from carebus.adapters.resources import broker_answers
from carebus.adapters.streams import batch_agent, stream_app
from carebus.domain.policy import Policy
from carebus.domain.routing import PersonState, apply
from carebus.domain.snapshots import restore
from carebus.runtime import metrics
from carebus.runtime.config import Settings
from carebus.runtime.retry import OnRetry, RetryPolicy
from carebus.runtime.telemetry import get_logger
from carebus.runtime.worker import Readiness
from carebus.wire import topics
from carebus.wire.codec import Codec, DecodeError
from carebus.wire.policy_files import load_policy
from services.router.retractions import RoutedRecipients
from services.router.snapshots import PersonSnapshots, Snapshots

log = get_logger(__name__)
# faust must not commit offsets whose output the broker does not have: a broker outage is
# waited out until the batch is out.
PUBLISH_RETRY: Final = RetryPolicy(OUTAGES, initial_s=0.5, maximum_s=30.0)

CONSENT_CHANGE = "no.carebus.v1.ConsentChange"
CARETEAM_CHANGE = "no.carebus.v1.CareTeamChange"
DELIVERY = "no.carebus.v1.Delivery"
DISCLOSURE = "no.carebus.v1.Disclosure"
# Records routed per broker round trip while catching up; a lone record waits at most this long
# (the batch is cut when full or when this has passed, so under load batches fill first).
BATCH_SIZE = 500
BATCH_WITHIN_S = 0.01


def create_app(settings: Settings, readiness: Readiness) -> faust.App:
    """The router's faust app wired to the broker, its topics, its table and its agent; its
    broker check goes to `readiness` (/healthz)."""
    policy = load_policy(settings.routing_policy)
    codec = Codec.default()
    app = stream_app("router", settings)
    # Written while a batch is routed, outside faust's per-event context, so the changelog
    # partition comes from the partitioner: murmur2 of the subject key, the very partition the
    # person's events are on (the gateway and the registry produce with murmur2 too).
    persons = app.Table(
        "persons",
        partitions=settings.person_partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )
    # Who got each person's recent events, for retractions (services/router/retractions.py);
    # keyed and partitioned like `persons`.
    recipients = app.Table(
        "recipients",
        partitions=settings.person_partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )
    letters = Producer(producer_config(settings, "carebus-router-deadletters"))
    dead_letters = DeadLetterPolicy(letters, codec, consumer="router")
    readiness.add("broker", lambda: broker_answers(letters))
    publisher = Publisher.connect(settings, "carebus-router")
    snapshots = PersonSnapshots(settings, codec)
    readiness.add("person_snapshots", snapshots.is_caught_up)
    snapshots.start()
    router = Router(policy, codec, persons, publisher, dead_letters, snapshots, recipients)

    batch_agent(app, topics.EVENTS, router.handle_batch, size=BATCH_SIZE, within_s=BATCH_WITHIN_S)
    app.router_core = router  # type: ignore[attr-defined]
    return app


class Router:
    """What the agent does with records; kept apart from faust's wiring so it reads plainly."""

    def __init__(
        self,
        policy: Policy,
        codec: Codec,
        persons: Any,
        publisher: RecordPublisher,
        dead_letters: DeadLetterPolicy,
        snapshots: Snapshots | None = None,
        recipients: Any = None,
    ) -> None:
        self._policy = policy
        self._recipients = RoutedRecipients({} if recipients is None else recipients, policy)
        self._snapshots = snapshots
        self._codec = codec
        self._persons = persons
        self._publisher = publisher
        self._dead_letters = dead_letters
        # Metric children by metric and label values: `labels()` takes a lock per call.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._routed: list[str] = []  # event ids of the batch being routed, for its log line

    async def handle_batch(self, batch: Sequence[EventT[bytes]]) -> None:
        """Route a batch of records and return once the broker has every record it produced.

        Records are routed one by one in stream order (a person's state changes between them);
        their deliveries and disclosures go out together. A record that cannot be routed is
        dead-lettered, never retried forever, so one bad record cannot stop a person's
        partition. A broker outage is retried with backoff until the batch is out: faust must
        not commit offsets whose output the broker does not have.
        """
        if self._snapshots is not None:
            await self._snapshots.caught_up()
        outgoing: list[OutgoingRecord] = []
        self._routed = []
        for event in batch:
            outgoing.extend(self.route_one(event.message))

        async def publish() -> None:
            await self._dead_letters.acknowledged(timeout_s=30.0)
            await self._publisher.publish_all(outgoing)

        await PUBLISH_RETRY.call("publish", publish, on_retry=_log_retry(len(outgoing)))
        # One line per batch, not per event (that was 6 % of the router's CPU); the event ids
        # are all in it, so grepping an event_id still finds its routing. A batch of registry
        # changes only (folding state) routes nothing and says nothing.
        if self._routed:
            log.info(
                "events_routed",
                records=len(batch),
                event_ids=self._routed,
                published=len(outgoing),
            )

    def route_one(self, message: Any) -> list[OutgoingRecord]:
        """The records routing one stream record produces; [] and a dead letter if it fails."""
        try:
            return self._route(message)
        except Exception as error:  # any failure of one record is a dead letter
            log.error(
                "routing_failed",
                error_type=type(error).__name__,
                subject_key=_text(message.key),
                # Where, never what: the frames' files, lines and functions, not the exception's
                # text or any value (they could hold personal data).
                where=[
                    f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                    for frame in traceback.extract_tb(error.__traceback__)[-6:]
                ],
            )
            self._dead_letters.send(
                FaustMessage(message),
                Reason.INVALID_RECORD,
                f"routing failed: {type(error).__name__}",
            )
            return []

    def _route(self, message: Any) -> list[OutgoingRecord]:
        subject_key = _text(message.key)
        try:
            decoded = self._codec.decode(message.value or b"")
        except DecodeError as error:
            self._dead_letters.send_undecodable(FaustMessage(message), error.reason)
            return []
        table_key = subject_key.encode()
        stored = self._persons.get(table_key)
        held = PersonState.from_json(orjson.loads(stored)) if stored else None
        base = held or PersonState()
        restored = self._snapshots.take(subject_key) if self._snapshots is not None else None
        before = base if restored is None else restore(held, restored)
        state = apply(before, decoded.schema_name, decoded.record)
        if state is not base:
            # orjson's bytes keep a 4 KiB buffer; the table holds one per person for good, so
            # it gets a right-sized copy (RSS at 100,000 persons: 558 → ~200 MiB).
            self._persons[table_key] = orjson.dumps(state.to_json()).decode().encode()
        if "event_type" not in decoded.record or decoded.schema_name in (
            CONSENT_CHANGE,
            CARETEAM_CHANGE,
        ):
            return []
        routing = self._recipients.route(decoded.record, state, table_key)
        records = [
            OutgoingRecord(
                topics.deliveries(delivery["recipient"]["agency"]),
                table_key,
                self._codec.encode(DELIVERY, delivery),
            )
            for delivery in routing.deliveries
        ]
        for disclosure in routing.disclosures:
            records.append(
                OutgoingRecord(topics.AUDIT, table_key, self._codec.encode(DISCLOSURE, disclosure))
            )
            self._child(
                metrics.ROUTING_DECISIONS,
                disclosure["event_type"],
                disclosure["recipient"]["agency"] if disclosure["recipient"] else "",
                disclosure["decision"],
                disclosure["basis"] or "",
                disclosure["reason"] or "",
            ).inc()
        received_at = decoded.record.get("received_at")
        if isinstance(received_at, datetime):
            self._child(metrics.ROUTING_DELAY, decoded.record["event_type"]).observe(
                max(0.0, (datetime.now(UTC) - received_at).total_seconds())
            )
        self._routed.append(decoded.record["event_id"])
        log.debug(
            "event_routed",
            event_id=decoded.record["event_id"],
            subject_key=subject_key,
            deliveries=len(routing.deliveries),
            decisions=len(routing.disclosures),
        )
        return records

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


def _log_retry(records: int) -> OnRetry:
    def on_retry(step: str, error: BaseException, delay: float) -> None:
        log.warning(
            "router_publish_retry", records=records, error=type(error).__name__, wait_s=delay
        )

    return on_retry


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
