"""The SLA engine: reads every person's ordered stream and raises alerts when deadlines pass.

One faust agent reads `care.events.v1`. For each record it locks the person's row of
`sla_persons`, applies the record to the person's routing state (`carebus.domain.routing.apply`) and
SLA state (`carebus.domain.obligations.observe`), publishes the Alert and Disclosure records that
causes, and writes the new state, the person's rows of the deadline index and the record's
offset in ONE transaction. A replayed record (offset at or below the stored one) is skipped,
so the database sees every record once although faust delivers at least once. A police callout
or housing incident is also counted at its place (`sla_places`, carebus.domain.places) in that
transaction, so a place sees it once too.

A timer scans the deadline index (`sla_deadlines`, ordered by deadline: never the persons'
state) for obligations past their deadline and breaches them under the same row lock. Alerts
are published before the transaction commits; a crash in between publishes the same
`alert_id`s again, which the inbox and the audit store keep once. The scan is safe to run
twice and on several workers at once (`FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import faust
from confluent_kafka import Producer
from faust.types import EventT

from carebus.adapters.deadletter import DeadLetterPolicy, FaustMessage, Reason
from carebus.adapters.kafka import producer_config
from carebus.adapters.outages import OUTAGES
from carebus.adapters.publisher import OutgoingRecord, Publisher, RecordPublisher
from carebus.adapters.resources import broker_answers
from carebus.adapters.streams import batch_agent, stream_app
from carebus.domain.alerts import AlertContext
from carebus.domain.events import RETRACTION, record_to_json
from carebus.domain.obligations import SlaState, breach_due, observe
from carebus.domain.places import (
    Counted,
    PlaceStep,
    Withdrawn,
    entry,
    observe_place,
    place_key,
    place_of,
    withdraw,
)
from carebus.domain.policy import Policy
from carebus.domain.records import (
    ALERT,
    CARE_TEAM_CHANGE,
    CONSENT_CHANGE,
    DISCLOSURE,
    Alert,
    AlertJson,
)
from carebus.domain.routing import PersonState, apply, route
from carebus.domain.sla import RuleSet, parse_rfc3339
from carebus.domain.sla_limits import (
    DEFAULT_CAPS,
    PersonCapExceededError,
    PersonCaps,
    exceeded,
    forget_settled,
    sizes,
)
from carebus.runtime import metrics
from carebus.runtime.config import Settings
from carebus.runtime.retry import RetryPolicy
from carebus.runtime.telemetry import get_logger
from carebus.runtime.worker import Readiness
from carebus.wire import topics
from carebus.wire.codec import Codec, DecodeError
from carebus.wire.policy_files import load_policy, load_rules

from .store import PgSlaStore, SlaStore, SlaTransaction

log = get_logger(__name__)

SCAN_BATCH: Final = 500
# Full passes one scan runs back to back before it yields to the timer's next tick.
MAX_PASSES: Final = 20
# Failures that are not the records' fault: retried until they pass.
# A database or broker outage is waited out; the offset table makes a repeated batch harmless.
BATCH_RETRY: Final = RetryPolicy(OUTAGES, initial_s=0.5, maximum_s=30.0)
# Records applied per transaction while catching up; a lone record waits at most this long.
BATCH_SIZE: Final = 500
BATCH_WITHIN_S: Final = 0.05
# The per-rule obligation gauges count the whole deadline index: on their own timer, this often.
GAUGE_INTERVAL_S: Final = 15.0


def create_app(settings: Settings, readiness: Readiness) -> faust.App:
    """The SLA engine's faust app wired to the broker, the database and its rules; its
    dependencies' checks go to `readiness` (/healthz)."""
    rules = load_rules(settings.sla_rules, settings.sla_rules_override)
    policy = load_policy(settings.routing_policy)
    codec = Codec.default()
    app = stream_app("sla", settings)
    letters = Producer(producer_config(settings, "carebus-sla-deadletters"))
    store = PgSlaStore(settings)
    engine = SlaEngine(
        rules,
        policy,
        codec,
        store=store,
        publisher=Publisher.connect(settings, "carebus-sla"),
        dead_letters=DeadLetterPolicy(letters, codec, consumer="sla"),
        place_secret=settings.subject_key_secret.get_secret_value().encode(),
    )
    readiness.add("broker", lambda: broker_answers(letters))
    readiness.add("database", store.answers)

    batch_agent(app, topics.EVENTS, engine.handle_batch, size=BATCH_SIZE, within_s=BATCH_WITHIN_S)

    @app.timer(interval=settings.sla_scan_interval_s)  # type: ignore[untyped-decorator]
    async def scan() -> None:
        # An exception would end faust's timer for good: a failed pass is logged, the next
        # one retries (CarebusSlaScanStalled fires if they keep failing).
        try:
            await engine.scan()
        except Exception as error:
            log.error("sla_scan_failed", error_type=type(error).__name__)

    @app.timer(interval=GAUGE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def gauges() -> None:
        try:
            await engine.refresh_gauges()
        except Exception as error:
            log.warning("sla_gauges_failed", error_type=type(error).__name__)

    log.info("sla_rules_loaded", version=rules.version, rules=len(rules.rules))
    app.sla_engine = engine  # type: ignore[attr-defined]
    return app


class RecordFailedError(Exception):
    """A record of a batch could not be applied: the batch is applied again record by record."""


class SlaEngine:
    """What the agent and the timer do; kept apart from faust's wiring so it reads plainly."""

    def __init__(
        self,
        rules: RuleSet,
        policy: Policy,
        codec: Codec,
        *,
        store: SlaStore,
        publisher: RecordPublisher,
        dead_letters: DeadLetterPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        caps: PersonCaps = DEFAULT_CAPS,
        place_secret: bytes | None = None,
    ) -> None:
        self._rules = rules
        # Place keys are HMACs under the subject-key secret; without it places are not counted.
        self._place_secret = place_secret
        self._caps = caps
        self._policy = policy
        self._codec = codec
        self._store = store
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._clock = clock
        for rule in rules.rules:  # every series from the start, so increase() sees the first one
            metrics.SLA_BREACHES.labels(rule.rule_id)
        for place in ("registered", "unregistered"):
            metrics.SLA_PLACE_EVENTS.labels(place)

    async def handle_batch(self, batch: Sequence[EventT[bytes]]) -> None:
        """Apply a batch of records; never raises, so the agent never stops.

        A record that cannot be decoded or applied is dead-lettered and the rest go on, so one
        bad record never stops a partition. When a record cannot be applied or the database
        refuses the batch (a value it cannot store), the records are applied one by one so that
        only the culprit is dead-lettered. A database or broker outage is not the records'
        fault: the batch is retried with backoff until it goes through (the offset table makes a
        retry harmless).
        """
        messages = [event.message for event in batch]
        try:
            await BATCH_RETRY.call(
                "batch", functools.partial(self._apply_batch, messages), on_retry=_log_retry
            )
        except asyncpg.PostgresError as error:  # not an outage: a value the database refuses
            log.error("sla_batch_refused", error_type=type(error).__name__)
            await self._apply_one_by_one(messages)
        except RecordFailedError:
            await self._apply_one_by_one(messages)

    async def _apply_one_by_one(self, messages: Sequence[Any]) -> None:
        for message in messages:
            try:
                await BATCH_RETRY.call(
                    "record", functools.partial(self._apply_batch, [message]), on_retry=_log_retry
                )
            except asyncpg.PostgresError as error:
                self._dead_letters.send(
                    FaustMessage(message),
                    Reason.INVALID_RECORD,
                    f"sla state not storable: {type(error).__name__}",
                )
                await self._dead_letters.acknowledged(timeout_s=30.0)
                metrics.SLA_EVENTS.labels("dead_lettered").inc()

    async def _apply_batch(self, messages: Sequence[Any]) -> None:
        async with self._store.transaction() as tx:
            stored = await tx.claim_offsets(sorted({str(m.topic) for m in messages}))
            fresh = [
                m for m in messages if m.offset > stored.get((str(m.topic), int(m.partition)), -1)
            ]
            persons = await tx.load(sorted({_text(m.key) for m in fresh}))
            alerts: list[tuple[str, AlertJson]] = []
            places: list[PlaceStep] = []
            applied = 0
            for message in fresh:
                raised = self._apply(message, persons, places, alone=len(messages) == 1)
                if raised is not None:
                    applied += 1
                    alerts.extend(raised)
            at_places, counted = await self._count_at_places(tx, places)
            alerts.extend(at_places)
            await self._publish(alerts)
            await tx.save(persons)
            latest: dict[tuple[str, int], int] = {}
            for m in fresh:
                place = (str(m.topic), int(m.partition))
                latest[place] = max(latest.get(place, -1), int(m.offset))
            await tx.save_offsets(latest)
        # Counted once committed: a batch that is rolled back and applied again counts once.
        metrics.SLA_EVENTS.labels("replayed").inc(len(messages) - len(fresh))
        metrics.SLA_EVENTS.labels("applied").inc(applied)
        for registered, count in counted.items():
            metrics.SLA_PLACE_EVENTS.labels(registered).inc(count)
        await self._dead_letters.acknowledged(timeout_s=30.0)

    async def _count_at_places(
        self, tx: SlaTransaction, places: Sequence[PlaceStep]
    ) -> tuple[list[tuple[str, AlertJson]], Counter[str]]:
        """Count the batch's events at their places and take retracted ones out, in record
        order and in the batch's transaction (so an event counts once however often it is
        delivered); the alerts that raises, keyed by place, and the events counted at
        registered and unregistered places. Place rows are locked after the persons, in key
        order."""
        counted: Counter[str] = Counter()
        if not places:
            return [], counted
        keys = {step.key for step in places if isinstance(step, Counted)}
        retracted = [step.event_id for step in places if isinstance(step, Withdrawn)]
        if retracted:
            keys.update(await tx.places_counting(retracted))
        stored = await tx.load_places(sorted(keys))
        alerts: list[tuple[str, AlertJson]] = []
        for step in places:
            if isinstance(step, Withdrawn):
                for state, _ in stored.values():
                    withdraw(state, step)
                continue
            state, owners = stored[step.key]
            counted["unregistered" if owners is None else "registered"] += 1
            raised = observe_place(
                state, step.entry, step.place, step.key, owners, self._rules, self._clock()
            )
            alerts.extend((f"place:{step.key}", alert) for alert in raised)
        await tx.save_places({key: state for key, (state, _) in stored.items()})
        return alerts, counted

    def _apply(
        self,
        message: Any,
        persons: dict[str, tuple[PersonState, SlaState]],
        places: list[PlaceStep],
        *,
        alone: bool,
    ) -> list[tuple[str, AlertJson]] | None:
        """Apply one record to its person's states in `persons`; the alerts it raises, or None
        if it was dead-lettered. A police callout or housing incident at a place, or a
        retraction, is added to `places`, to be counted (or withdrawn) there once the batch's
        persons are applied.

        A record the engine cannot apply may have changed the person's state half-way, and
        states are changed in place (copying ~6 KB of state per record to undo it was a third
        of a replay's cost). So in a batch such a record — or one that does not decode — aborts
        the batch, which is applied again one record per transaction (`alone`): nothing is
        dead-lettered twice. Alone, it is dead-lettered and the person's half-changed state is
        dropped unwritten, so the stored one stays as it was.
        """
        subject_key = _text(message.key)
        try:
            decoded = self._codec.decode(message.value or b"")
        except DecodeError as error:
            if not alone:
                raise RecordFailedError(error.reason) from None
            self._dead_letters.send_undecodable(FaustMessage(message), error.reason)
            metrics.SLA_EVENTS.labels("dead_lettered").inc()
            return None
        routing, state = persons.get(subject_key, (PersonState(), SlaState()))
        try:
            record = decoded.record
            routing = apply(routing, decoded.schema_name, record)
            alerts: list[AlertJson] = []
            if "event_type" in record and decoded.schema_name not in (
                CONSENT_CHANGE,
                CARE_TEAM_CHANGE,
            ):
                context = self._context(routing)
                before = sizes(state)
                event = record_to_json(record)
                alerts = observe(state, event, self._rules, context)
                # The person's state is bounded (carebus.domain.sla_limits): a record that
                # would grow it past a cap is dead-lettered below, naming the cap.
                cap = exceeded(before, sizes(state), self._caps)
                if cap is not None:
                    raise PersonCapExceededError(cap)
                forgotten = forget_settled(state, self._caps)
                if forgotten:
                    metrics.SLA_PERSON_CAP.labels("settled_forgotten").inc(forgotten)
                places.extend(self._place_steps(event, record, routing, context.now))
        except Exception as error:  # a record the engine cannot apply is a dead letter
            if not alone:
                raise RecordFailedError(type(error).__name__) from None
            log.error("sla_record_failed", error_type=type(error).__name__, subject_key=subject_key)
            detail = (
                str(error)
                if isinstance(error, PersonCapExceededError)
                else f"sla failed: {type(error).__name__}"
            )
            self._dead_letters.send(FaustMessage(message), Reason.INVALID_RECORD, detail)
            if isinstance(error, PersonCapExceededError):
                metrics.SLA_PERSON_CAP.labels("dead_lettered").inc()
            metrics.SLA_EVENTS.labels("dead_lettered").inc()
            persons.pop(subject_key, None)
            return None
        persons[subject_key] = (routing, state)
        return [(subject_key, alert) for alert in alerts]

    def _place_steps(
        self, event: Mapping[str, Any], record: Any, routing: PersonState, now: datetime
    ) -> list[PlaceStep]:
        """What `event` (JSON form; `record` its wire form) does at a place: counted there (with
        the organisations routing delivered it to), withdrawn by a retraction, or nothing."""
        if self._place_secret is None:
            return []
        if event.get("event_type") == RETRACTION:
            return [Withdrawn(event["source"]["org_id"], event["payload"]["retracted_event_id"])]
        place = place_of(event)
        if place is None:
            return []
        routed = route(record, routing, self._policy, now)
        told = [delivery["recipient"]["org_id"] for delivery in routed.deliveries]
        return [Counted(place_key(place, self._place_secret), place, entry(event, told))]

    async def scan(self) -> int:
        """Breach every obligation past its deadline; the number of alert records published.

        A pass takes the persons with the earliest due deadlines, up to SCAN_BATCH of them, in
        one transaction: their rows are locked with SKIP LOCKED (a person the agent or another
        worker holds is left for the next pass, and a locker never waits for the scan), their
        alerts go to the broker in one publish, and only then are the new states written. A
        full pass is followed at once by the next one, so a burst of deadlines is not paced by
        the timer. Safe twice: a second scan finds the obligations breached and the index rows
        gone; a crash before the commit re-publishes the same deterministic alert ids.
        """
        started = time.perf_counter()
        published = 0
        for _pass in range(MAX_PASSES):
            async with self._store.transaction() as tx:
                due = await tx.due(self._clock(), SCAN_BATCH)
                if not due:
                    break
                persons = await tx.load(sorted(due), skip_locked=True)
                alerts: list[tuple[str, AlertJson]] = []
                for subject_key, (routing, state) in persons.items():
                    raised = breach_due(state, self._rules, self._context(routing))
                    alerts.extend((subject_key, alert) for alert in raised)
                await self._publish(alerts)
                await tx.save(persons)
            published += len(alerts)
            _observe_alert_delay([alert for _, alert in alerts], self._clock())
            if len(due) < SCAN_BATCH:
                break
        metrics.SLA_SCAN_SECONDS.observe(time.perf_counter() - started)
        return published

    async def refresh_gauges(self) -> None:
        """Open and overdue obligations per rule. It counts the whole index (0.3 s at a million
        open obligations), so it runs on its own slow timer, never inside the due scan."""
        counts = await self._store.open_obligations()
        for rule_id in {*(rule.rule_id for rule in self._rules.rules), *counts}:
            open_, overdue = counts.get(rule_id, (0, 0))
            metrics.SLA_OPEN_OBLIGATIONS.labels(rule_id).set(open_)
            metrics.SLA_OVERDUE_OBLIGATIONS.labels(rule_id).set(overdue)

    def _context(self, routing: PersonState | None) -> AlertContext:
        return AlertContext(
            now=self._clock(),
            routing=routing or PersonState(),
            policy=self._policy,
            rules_version=self._rules.version,
        )

    async def _publish(self, alerts: Sequence[tuple[str, AlertJson]]) -> None:
        if not alerts:
            return
        outgoing = []
        for subject_key, alert in alerts:
            key = subject_key.encode()
            disclosure = alert.get("disclosure")
            outgoing.append(
                OutgoingRecord(topics.ALERTS, key, self._codec.encode(ALERT, alert_record(alert)))
            )
            if disclosure is not None:
                audit = {**disclosure, "decided_at": parse_rfc3339(disclosure["decided_at"])}
                outgoing.append(
                    OutgoingRecord(
                        topics.ALERT_DISCLOSURES, key, self._codec.encode(DISCLOSURE, audit)
                    )
                )
        await self._publisher.publish_all(outgoing)
        breaches = {
            (subject_key, alert["rule_id"], tuple(alert["event_ids"]))
            for subject_key, alert in alerts
            if alert["status"] == "open"
        }
        for _, rule_id, _ in breaches:
            metrics.SLA_BREACHES.labels(rule_id).inc()
        for subject_key, alert in alerts:
            metrics.SLA_ALERTS.labels(alert["rule_id"], alert["kind"], alert["status"]).inc()
            log.info(
                "alert_published",
                alert_id=alert["alert_id"],
                rule_id=alert["rule_id"],
                status=alert["status"],
                event_ids=alert["event_ids"],
                subject_key=subject_key,
            )


def _observe_alert_delay(alerts: Sequence[AlertJson], published: datetime) -> None:
    """How long after its deadline the scan published each breach (one per obligation)."""
    seen = set()
    for alert in alerts:
        if alert["status"] != "open" or alert.get("deadline") is None:
            continue
        breach = (alert["rule_id"], tuple(alert["event_ids"]))
        if breach in seen:
            continue
        seen.add(breach)
        delay = (published - parse_rfc3339(alert["deadline"])).total_seconds()
        metrics.SLA_ALERT_DELAY.labels(alert["rule_id"]).observe(max(0.0, delay))


def alert_record(alert: AlertJson) -> Alert:
    """The Avro record of an alert in the engine's JSON form (times as datetimes)."""
    deadline = alert["deadline"]
    return {
        "alert_id": alert["alert_id"],
        "rule_id": alert["rule_id"],
        "title": alert["title"],
        "kind": alert["kind"],
        "status": alert["status"],
        "resolution": alert["resolution"],
        "subject_key": alert["subject_key"],
        "subject": alert["subject"],
        "recipient": alert["recipient"],
        "recipient_role": alert.get("recipient_role"),
        "audience": alert["audience"],
        "contact": alert["contact"],
        "deadline": None if deadline is None else parse_rfc3339(deadline),
        "breached_at": parse_rfc3339(alert["breached_at"]),
        "escalate_at": parse_rfc3339(alert["escalate_at"]),
        "summary": alert["summary"],
        "event_ids": alert["event_ids"],
        "rules_version": alert["rules_version"],
        "changed_at": parse_rfc3339(alert["changed_at"]),
    }


def _log_retry(step: str, error: BaseException, delay: float) -> None:
    log.warning("sla_batch_retry", step=step, error_type=type(error).__name__, wait_s=delay)


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
