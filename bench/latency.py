"""End-to-end latency, gateway accept → delivery on the agency topic, at fixed offered loads.

Load is offered open-loop: every request has a scheduled send time (one every 10 ms) and is
sent then whether or not earlier ones were answered, so a slow system cannot slow the load
down and hide its own queueing. At 100 events/s each request is one POST /v1/events; above
that, POST /v1/events:batch with load/100 events per request. Every event is an admission
whose home municipality is not in the care team: the router delivers it on the statutory basis
to `care.deliveries.municipality.v1`, exactly once.

An event's latency runs from its request's scheduled send time to the moment its Delivery was
on the topic: on this private stack the delivery topic stamps records with the broker's
append time (LogAppendTime), so a record's timestamp is when the broker wrote it. Beside it:
when the router decided (the Delivery's `decided_at`) and when this process's consumer got it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from bench.harness import Bench, Goal, Row, percentiles, private_stack
from bench.router import await_router_coordinator
from carebus.adapters.kafka import client_security
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import ensure_dev_tokens
from carebus_dev.testing import EventFactory, ServiceProcess, TestStack

SECTION: Final = "latency"
INTERVAL_S: Final = 0.01  # one request every 10 ms
PERSONS: Final = 1_000
CONNECTIONS: Final = 64
WARMUP_S: Final = 3.0
WARMUP_LOAD: Final = 100
STARTUP_TIMEOUT_S: Final = 180.0
DRAIN_TIMEOUT_S: Final = 30.0
GOAL_LOAD: Final = 1_000
TOPIC: Final = topics.deliveries("municipality")


def run(bench: Bench) -> None:
    scale = bench.scale
    with private_stack() as stack:
        token = ensure_dev_tokens(stack.settings)["dps"]
        stamp_on_append(stack)
        await_router_coordinator(stack)
        services = [stack.start_service("gateway"), stack.start_service("router")]
        deliveries = DeliveryWatcher(stack)
        deliveries.start()
        try:
            admissions = Admissions()
            url = stack.settings.service_url(stack.settings.gateway_port)
            first = asyncio.run(offer(url, token, admissions.requests(1, 1)))
            if first.failed:
                raise RuntimeError("the gateway did not accept the first admission")
            # The router recovers its table and joins its group before it routes anything.
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not deliveries.latencies(first.sent_at).on_topic:
                check_alive(services, "before the first delivery")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no delivery within {STARTUP_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
            warmup = asyncio.run(offer(url, token, admissions.at(WARMUP_LOAD, WARMUP_S)))
            drain(deliveries, warmup)
            for load in scale.latency_loads:
                offered = asyncio.run(offer(url, token, admissions.at(load, scale.latency_seconds)))
                drain(deliveries, offered)
                check_alive(services, f"during the {load:,} events/s run")
                report(bench, load, offered, deliveries.latencies(offered.sent_at))
        finally:
            deliveries.stop()


def stamp_on_append(stack: TestStack) -> None:
    """Make the broker stamp the delivery topic's records with their append time."""
    admin = AdminClient(client_security(stack.settings))
    entry = ConfigEntry(
        "message.timestamp.type",
        "LogAppendTime",
        incremental_operation=AlterConfigOpType.SET,
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def check_alive(services: Sequence[ServiceProcess], when: str) -> None:
    for service in services:
        if not service.alive:
            raise RuntimeError(
                f"{service.name} exited (code {service.kill()}) {when}; "
                f"last lines of its log:\n{service.log_tail(10)}"
            )


class Admissions:
    """Admissions from the DPS, round-robin over PERSONS persons, as request bodies."""

    def __init__(self) -> None:
        self.factory = EventFactory()
        self.nins = [self.factory.nin() for _ in range(PERSONS)]
        self.count = 0

    def requests(self, batches: int, size: int) -> list[Request]:
        made = []
        for _ in range(batches):
            events = []
            for _ in range(size):
                events.append(self.factory.event("admission", nin=self.nins[self.count % PERSONS]))
                self.count += 1
            body = events[0] if size == 1 else {"events": events}
            made.append(
                Request(
                    path="/v1/events" if size == 1 else "/v1/events:batch",
                    body=json.dumps(body, separators=(",", ":")).encode(),
                    event_ids=[str(event["event_id"]) for event in events],
                )
            )
        return made

    def at(self, load: int, seconds: float) -> list[Request]:
        """Requests that offer `load` events/s for `seconds`, one request every INTERVAL_S."""
        return self.requests(round(seconds / INTERVAL_S), batch_size(load))


def batch_size(load: int) -> int:
    return max(1, round(load * INTERVAL_S))


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    event_ids: list[str]


@dataclass
class Offered:
    """What one open-loop run sent: each accepted event's scheduled send time (epoch s), and how
    it went."""

    sent_at: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    elapsed_s: float = 0.0
    late_s: list[float] = field(default_factory=list)  # actual − scheduled send time
    answered_s: list[float] = field(default_factory=list)  # scheduled send → 202, per request


async def offer(url: str, token: str, requests: Sequence[Request]) -> Offered:
    """Send each request at its scheduled time (every INTERVAL_S), never waiting for answers."""
    offered = Offered()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:

        async def send(request: Request, sent: float) -> None:
            try:
                response = await client.post(request.path, content=request.body, headers=headers)
            except httpx.HTTPError:
                offered.failed += len(request.event_ids)
                return
            if response.status_code != 202:
                offered.failed += len(request.event_ids)
                return
            offered.answered_s.append(time.time() - sent)
            for event_id in request.event_ids:
                offered.sent_at[event_id] = sent

        loop = asyncio.get_running_loop()
        started = loop.time() + 0.05
        to_epoch = time.time() - loop.time()
        tasks = []
        for index, request in enumerate(requests):
            scheduled = started + index * INTERVAL_S
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            offered.late_s.append(loop.time() - scheduled)
            # The clock starts at the scheduled time: a late send, or a wait for a free
            # connection, counts as latency (no coordinated omission).
            tasks.append(asyncio.create_task(send(request, scheduled + to_epoch)))
        offered.elapsed_s = loop.time() - started + INTERVAL_S
        await asyncio.gather(*tasks)
    return offered


@dataclass
class Latencies:
    """Milliseconds from each delivered event's send time to three moments of its Delivery."""

    on_topic: list[float] = field(default_factory=list)  # broker append time
    decided: list[float] = field(default_factory=list)  # the router's decided_at
    consumed: list[float] = field(default_factory=list)  # received by this process


class DeliveryWatcher:
    """Consumes the municipality's delivery topic from its current end, in a thread."""

    def __init__(self, stack: TestStack) -> None:
        self._consumer = Consumer(
            {
                **client_security(stack.settings),
                "group.id": f"bench-latency-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        metadata = self._consumer.list_topics(TOPIC, timeout=10)
        assignment = []
        for partition in metadata.topics[TOPIC].partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(TOPIC, partition), timeout=10
            )
            assignment.append(TopicPartition(TOPIC, partition, high))
        self._consumer.assign(assignment)
        self._codec = Codec.default()
        # (value, append time in ms, epoch s when consumed); decoded outside the consuming thread
        self._received: list[tuple[bytes, int, float]] = []
        self._decoded = 0
        # event_id -> (appended, decided, consumed), epoch s
        self._by_event: dict[str, tuple[float, float, float]] = {}
        self._wrong_stamps = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._consumer.close()

    def _consume(self) -> None:
        # poll, not consume(n, timeout): that waits for n records or the whole timeout.
        while not self._stopped.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error() is not None:
                continue
            seen = time.time()
            value = message.value()
            kind, stamp_ms = message.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME:
                self._wrong_stamps += 1
            elif value is not None:
                self._received.append((value, stamp_ms, seen))

    def latencies(self, sent_at: dict[str, float]) -> Latencies:
        """The latencies of the events of `sent_at` delivered so far."""
        if self._wrong_stamps:
            raise RuntimeError(f"{TOPIC} does not stamp records with their append time")
        received = self._received[self._decoded :]
        self._decoded += len(received)
        for value, stamp_ms, seen in received:
            record = self._codec.decode(value).record
            moments = (stamp_ms / 1000, record["decided_at"].timestamp(), seen)
            self._by_event.setdefault(record["event_id"], moments)
        found = Latencies()
        for event_id, sent in sent_at.items():
            if event_id in self._by_event:
                appended, decided, consumed = self._by_event[event_id]
                found.on_topic.append((appended - sent) * 1000)
                found.decided.append((decided - sent) * 1000)
                found.consumed.append((consumed - sent) * 1000)
        return found


def drain(deliveries: DeliveryWatcher, offered: Offered) -> None:
    """Wait (at most DRAIN_TIMEOUT_S) until a delivery was consumed for every accepted event."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (
        len(deliveries.latencies(offered.sent_at).on_topic) < len(offered.sent_at)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)


def report(bench: Bench, load: int, offered: Offered, latencies: Latencies) -> None:
    missing = len(offered.sent_at) - len(latencies.on_topic)
    on_topic = percentiles(latencies.on_topic)
    decided = percentiles(latencies.decided, (50, 99))
    consumed = percentiles(latencies.consumed, (50, 99))
    answered = percentiles([s * 1000 for s in offered.answered_s], (50, 99))
    late = percentiles(offered.late_s, (99,))[99] * 1000
    sent = len(offered.sent_at) + offered.failed
    size = batch_size(load)
    how = (
        "one POST /v1/events every 10 ms"
        if size == 1
        else f"one POST /v1/events:batch of {size} every 10 ms"
    )
    where = f"at {load:,} events/s"
    span = "scheduled send → Delivery appended to the topic"
    bench.add(
        Row(
            SECTION,
            f"p50 {where}",
            on_topic[50],
            "ms",
            baseline="kafka.latency_p50_ms",
            note=f"{span}; {how}, open loop, up to {CONNECTIONS} connections",
        )
    )
    bench.add(Row(SECTION, f"p95 {where}", on_topic[95], "ms", note=span))
    bench.add(
        Row(
            SECTION,
            f"p99 {where}",
            on_topic[99],
            "ms",
            baseline="kafka.latency_p99_ms",
            goal=Goal("<=", 50) if load == GOAL_LOAD else None,
            note=(
                f"{span}; of it, gateway 202 p50 {answered[50]:,.1f} / p99 {answered[99]:,.1f} ms,"
                f" router decided p50 {decided[50]:,.1f} / p99 {decided[99]:,.1f} ms after sending"
            ),
        )
    )
    bench.add(
        Row(
            SECTION,
            f"p99 seen by a consumer {where}",
            consumed[99],
            "ms",
            baseline="kafka.latency_p99_ms",
            note=(
                "scheduled send → received by a confluent-kafka consumer; "
                f"p50 {consumed[50]:,.1f} ms"
            ),
        )
    )
    bench.add(
        Row(
            SECTION,
            f"achieved rate {where}",
            sent / offered.elapsed_s,
            "events/s",
            note=(
                f"{sent:,} events offered in {offered.elapsed_s:.1f} s; {offered.failed} not "
                f"accepted, {missing} accepted but not delivered within {DRAIN_TIMEOUT_S:.0f} s;"
                f" sends p99 {late:.1f} ms behind schedule"
            ),
        )
    )
