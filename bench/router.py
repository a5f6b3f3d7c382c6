"""Router throughput: events/s per worker process, with realistic consent and care-team state.

For each worker count, on a fresh stack: the persons' registry history (care teams, consents,
a withdrawal) goes on the stream first, the workers start and fold it, and once the group is
stable with every worker holding partitions the workload's events are produced. The rate is
the events routed between the router's first and last disclosure on `care.audit.v1`; the
startup (process start → state folded, group stable) is reported apart from it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.harness import Bench, Goal, Row, private_stack, produce_all
from bench.workload import Workload
from carebus.adapters.kafka import client_security
from carebus.domain.records import CARE_TEAM_CHANGE, CONSENT_CHANGE
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from carebus_dev.testing import ServiceProcess, TestStack
from services.registry.changes import CareTeamChange, Consent, care_team_record, consent_record

GROUP: Final = "carebus-router"
PARTITIONS: Final = 4  # as production runs it; at least the largest worker count
EVENTS_PER_PERSON: Final = 10  # one journey: every event type of the workload's mix once
STARTUP_TIMEOUT_S: Final = 180.0
SAMPLE_S: Final = 0.02
SINCE: Final = datetime(2026, 1, 1, tzinfo=UTC)  # when the registry history begins


def run(bench: Bench) -> None:
    persons = max(10, bench.scale.router_events // EVENTS_PER_PERSON)
    # Built once, for the first stack's secret, and produced again on every fresh stack.
    built: dict[str, tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]] = {}
    for workers in bench.scale.router_workers:
        if workers > PARTITIONS:
            raise ValueError(f"{workers} workers need {workers} partitions; there are {PARTITIONS}")
        with private_stack(person_partitions=PARTITIONS) as stack:
            secret = stack.settings.subject_key_secret.get_secret_value()
            if secret not in built:
                workload = Workload(secret, persons)
                built[secret] = (
                    registry_history(workload),
                    list(workload.records(bench.scale.router_events)),
                )
            history, events = built[secret]
            measured = measure(stack, workers, history, events)
        note = (
            f"{persons:,} persons, {len(history):,} consent/care-team changes folded first; "
            f"{measured.disclosures / len(events):.2f} disclosures and "
            f"{measured.deliveries / len(events):.2f} deliveries per event; "
            f"startup {measured.startup_s:.1f} s (processes start → state folded, group stable), "
            f"not counted"
        )
        total = len(events) / measured.routing_s
        bench.add(
            Row(
                "router",
                f"events/s with {workers} worker(s)",
                total,
                "events/s",
                baseline="kafka.loop",
                note=note,
            )
        )
        bench.add(
            Row(
                "router",
                f"events/s per worker with {workers} worker(s)",
                total / workers,
                "events/s",
                baseline="kafka.loop",
                goal=Goal(">=", 10_000),
                note=f"{workers} worker process(es) on a box whose broker shares the cores",
            )
        )


def registry_history(workload: Workload) -> list[tuple[bytes, bytes]]:
    """Each person's care team and consents as the registry publishes them, keyed by person.

    Every person has a municipal coordinator and a GP; every second one NAV in the care team
    with a consent for logistics and social information; every third one the housing office
    with a consent that was later withdrawn; every seventh one an objection against the GP.
    """
    codec = Codec.default()
    history: list[tuple[bytes, bytes]] = []
    for index, (nin, key) in enumerate(zip(workload.nins, workload.keys, strict=True)):
        changes: list[CareTeamChange | Consent] = [
            _member(nin, "municipality", "coordinator"),
            _member(nin, "fastlege", "gp"),
        ]
        if index % 2 == 0:
            changes += [_member(nin, "nav", "participant"), _consent(nin, "nav", "given")]
        if index % 3 == 0:
            changes += [
                _member(nin, "housing", "participant"),
                _consent(nin, "housing", "given"),
                _consent(nin, "housing", "withdrawn"),
            ]
        if index % 7 == 0:
            changes.append(_consent(nin, "fastlege", "objection"))
        subject_key = key.decode()
        municipality = DEV_ORGANISATIONS["municipality"]
        for step, change in enumerate(changes):
            change_id = str(uuid.uuid4())
            recorded_at = SINCE + timedelta(seconds=step)
            record: Mapping[str, Any]
            if isinstance(change, Consent):
                record = consent_record(
                    change,
                    consent_id=change_id,
                    subject_key=subject_key,
                    recorded_by_org=municipality,
                    recorded_at=recorded_at,
                )
                history.append((key, codec.encode(CONSENT_CHANGE, record)))
            else:
                record = care_team_record(
                    change,
                    change_id=change_id,
                    subject_key=subject_key,
                    recorded_by_org=municipality,
                    recorded_at=recorded_at,
                )
                history.append((key, codec.encode(CARE_TEAM_CHANGE, record)))
    return history


def _member(nin: str, agency: str, role: str) -> CareTeamChange:
    return CareTeamChange(nin, agency, DEV_ORGANISATIONS[agency], role, "member")


def _consent(nin: str, agency: str, status: str) -> Consent:
    """A consent to logistics and social information for the whole agency, or its end."""
    return Consent(
        nin=nin,
        recipient_agency=agency,
        recipient_org=None,
        categories=("logistics", "social") if status == "given" else (),
        status=status,
        valid_from=SINCE,
        valid_to=None,
        recorded_by="bench",
    )


@dataclass(frozen=True)
class Measured:
    startup_s: float
    routing_s: float
    disclosures: int
    deliveries: int


def measure(
    stack: TestStack,
    workers: int,
    history: Sequence[tuple[bytes, bytes]],
    events: Sequence[tuple[bytes, bytes]],
) -> Measured:
    """Fold `history` with `workers` routers, then time routing `events`."""
    produce_all(stack, history)
    offsets = Offsets(stack)
    try:
        offsets.await_coordinator()
        started = time.perf_counter()
        routers = [
            stack.start_service("router", name=f"router-{i}", wait=False) for i in range(workers)
        ]
        for router in routers:
            router.wait_ready()
        await_routers(
            routers,
            lambda: offsets.group_members() == workers and offsets.caught_up(),
            STARTUP_TIMEOUT_S,
            "fold the registry history",
            offsets.describe,
        )
        startup_s = time.perf_counter() - started
        if offsets.total(topics.AUDIT):
            raise RuntimeError("registry changes alone must not produce disclosures")
        watcher = AuditWatcher(offsets)
        watcher.start()
        try:
            produce_all(stack, events)
            await_routers(
                routers,
                offsets.caught_up,
                max(STARTUP_TIMEOUT_S, len(events) / 200),
                "route the events",
                offsets.describe,
            )
        finally:
            watcher.stop()
        dead_letters = offsets.total(topics.DEADLETTER)
        if dead_letters:
            raise RuntimeError(
                f"the routers dead-lettered {dead_letters} of {len(history) + len(events)} "
                f"records: a rate of failing records would mean nothing. Last lines of "
                f"router-0:\n{routers[0].log_tail(5)}"
            )
        disclosures = offsets.total(topics.AUDIT)
        if disclosures < len(events):
            raise RuntimeError(f"{disclosures} disclosures for {len(events)} events")
        deliveries = sum(offsets.total(topic) for topic in topics.DELIVERIES)
        return Measured(startup_s, watcher.routing_s(disclosures), disclosures, deliveries)
    finally:
        offsets.close()


def await_routers(
    routers: Sequence[ServiceProcess],
    done: Callable[[], bool],
    timeout_s: float,
    what: str,
    progress: Callable[[], str] = lambda: "",
) -> None:
    """Poll `done` until it holds; raises if a router exits or `timeout_s` passes first."""
    deadline = time.perf_counter() + timeout_s
    while not done():
        for router in routers:
            if not router.alive:
                raise RuntimeError(
                    f"{router.name} exited (code {router.proc and router.proc.returncode}) "
                    f"before the routers could {what}; last lines of its log:\n"
                    + router.log_tail(10)
                )
        if time.perf_counter() > deadline:
            raise TimeoutError(
                f"{len(routers)} router(s) did not {what} within {timeout_s:.0f} s "
                f"({progress()}); last lines of router-0:\n{routers[0].log_tail(10)}"
            )
        time.sleep(0.2)


class Offsets:
    """End offsets of the stack's topics and the router group's progress, from the broker."""

    def __init__(self, stack: TestStack) -> None:
        self._admin = AdminClient(client_security(stack.settings))
        self._consumer = Consumer(
            {**client_security(stack.settings), "group.id": f"bench-{uuid.uuid4().hex[:8]}"}
        )
        # Reads the router group's commits and never subscribes, so it never joins the group.
        # Not AdminClient.list_consumer_group_offsets: librdkafka 2.16 crashes (NULL consumer
        # group handle) when a broker answers that call with NOT_COORDINATOR, as a fresh one may
        # (librdkafka issue #5040).
        self._committed = Consumer(
            {**client_security(stack.settings), "group.id": GROUP, "enable.auto.commit": False}
        )
        self._partitions: dict[str, int] = {}

    def total(self, topic: str) -> int:
        """How many records `topic` holds (the sum of its partitions' end offsets)."""
        if topic not in self._partitions:
            metadata = self._consumer.list_topics(topic, timeout=10)
            self._partitions[topic] = len(metadata.topics[topic].partitions)
        return sum(
            self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(self._partitions[topic])
        )

    def group_members(self) -> int:
        """Router group members holding partitions of the events topic (0 unless stable)."""
        [future] = self._admin.describe_consumer_groups([GROUP]).values()
        group = future.result(timeout=10)
        if str(group.state).rsplit(".", 1)[-1] != "STABLE":
            return 0
        return sum(
            1
            for member in group.members
            if member.assignment
            and any(tp.topic == topics.EVENTS for tp in member.assignment.topic_partitions)
        )

    def await_coordinator(self, timeout_s: float = 60.0) -> None:
        """Until the broker's coordinator of the router group answers.

        A router asks for its group's offsets as it starts (its lag reporter), through the
        librdkafka call that crashes when a fresh broker answers NOT_COORDINATOR (see above):
        on a broker that answers, a benchmark measures the router instead of that crash.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._committed.committed([TopicPartition(topics.EVENTS, 0)], timeout=10)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def describe(self) -> str:
        """The group's state and every partition's committed and end offset, for errors."""
        [future] = self._admin.describe_consumer_groups([GROUP]).values()
        group = future.result(timeout=10)
        wanted = [TopicPartition(topics.EVENTS, p) for p in range(PARTITIONS)]
        ends = [self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted]
        places = ", ".join(
            f"p{tp.partition} {tp.offset}/{ends[tp.partition]}"
            for tp in self._committed.committed(wanted, timeout=10)
        )
        return (
            f"group {str(group.state).rsplit('.', 1)[-1]}, {len(group.members)} members, "
            f"{self.group_members()} holding events partitions; committed/end: {places}"
        )

    def caught_up(self) -> bool:
        """Whether the router group has committed every record of the events topic."""
        wanted = [TopicPartition(topics.EVENTS, p) for p in range(PARTITIONS)]
        return all(
            tp.offset >= 0
            and tp.offset
            >= self._consumer.get_watermark_offsets(
                TopicPartition(topics.EVENTS, tp.partition), timeout=10
            )[1]
            for tp in self._committed.committed(wanted, timeout=10)
        )

    def close(self) -> None:
        self._consumer.close()
        self._committed.close()


class AuditWatcher:
    """Samples the audit topic's end offsets; when it first grew and when it reached a count."""

    def __init__(self, offsets: Offsets) -> None:
        self._offsets = offsets
        self._samples: list[tuple[float, int]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._samples.append((time.perf_counter(), self._offsets.total(topics.AUDIT)))

    def _sample(self) -> None:
        while not self._stopped.is_set():
            self._samples.append((time.perf_counter(), self._offsets.total(topics.AUDIT)))
            self._stopped.wait(SAMPLE_S)

    def routing_s(self, final: int) -> float:
        """Seconds from the first disclosure to the sample that saw `final` of them."""
        first = next(t for t, count in self._samples if count > 0)
        last = next(t for t, count in self._samples if count >= final)
        return last - first


def await_router_coordinator(stack: TestStack) -> None:
    """Until the broker's coordinator of the router group answers (see `Offsets`)."""
    offsets = Offsets(stack)
    try:
        offsets.await_coordinator()
    finally:
        offsets.close()
