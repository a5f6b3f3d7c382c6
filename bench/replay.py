"""Replay: how long the router and the SLA engine take to rebuild their state from the stream.

`replay_events` events (every person one journey of the workload's mix) are put on
`care.events.v1` first; building them is not timed. Then the router starts from scratch and
the clock runs until its consumer group has committed the end of every partition: process
start, group join, and every record applied and routed (deliveries and disclosures produced).
The SLA engine does the same afterwards, alone on the box (obligations into PostgreSQL).
The baseline is the time Kafka's own ConsumerPerformance needs to read that many records.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.harness import Bench, Goal, Row, end_offsets, private_stack
from bench.workload import MIX, Workload
from carebus.adapters.kafka import client_security, producer_config
from carebus.domain.events import event_to_record, parse_event
from carebus.wire import topics
from carebus_dev.testing import ServiceProcess, TestStack

SECTION: Final = "replay"
CHUNK: Final = 10_000  # records one build task makes
BUILDERS: Final = 2
POLL_S: Final = 0.5
MIN_RATE: Final = 200.0  # events/s below which a replay is given up as stuck
CRASH_WINDOW_S: Final = 20.0  # a worker alive this long after its start has survived starting
MAX_CRASHES: Final = 2
GOAL_EVENTS: Final = 1_000_000  # issue 6: a replay of a million events in at most two minutes

Records = list[tuple[bytes, bytes]]


class GroupProgress:
    """How far a consumer group has committed on a topic: the sum of its partitions' offsets.

    Read with a consumer of the group that never joins it: the AdminClient's
    list_consumer_group_offsets crashes the process when the broker answers NOT_COORDINATOR
    (librdkafka issue 5040), which a fresh broker does while it loads its offsets topic.
    """

    def __init__(self, stack: TestStack, group: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                **client_security(stack.settings),
                "group.id": group,
                "enable.auto.commit": False,
            }
        )
        metadata = self.consumer.list_topics(topic, timeout=10)
        self.partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        self.group = group

    def committed(self) -> int:
        try:
            offsets = self.consumer.committed(self.partitions, timeout=10)
        except KafkaException:  # the coordinator is still loading on a fresh broker
            return 0
        return sum(tp.offset for tp in offsets if tp.offset > 0)

    def wait_for(self, target: int, timeout_s: float, worker: Worker) -> float:
        """Seconds from the worker's start until the group committed `target` records."""
        while self.committed() < target:
            worker.check()
            if time.perf_counter() - worker.started > timeout_s:
                raise TimeoutError(
                    f"{self.group} committed {self.committed():,} of {target:,} records "
                    f"within {timeout_s:.0f} s"
                )
            time.sleep(POLL_S)
        return time.perf_counter() - worker.started

    def close(self) -> None:
        self.consumer.close()


class Worker:
    """A faust worker started for a measurement, started again if it crashes while starting.

    The router and the SLA engine sometimes die of SIGSEGV in their first seconds on a fresh
    broker (their LagReporter's AdminClient, librdkafka issue 5040). A measurement's clock
    runs from the start that survived (`started`); `crashes` counts the others.
    """

    def __init__(self, stack: TestStack, name: str, env: dict[str, str] | None = None) -> None:
        self.stack = stack
        self.name = name
        self.env = env
        self.crashes = 0
        self.started = 0.0
        self.process = self._start()

    def _start(self) -> ServiceProcess:
        self.started = time.perf_counter()
        return self.stack.start_service(self.name, env=self.env, wait=False)

    def check(self) -> None:
        """Raise if the worker died, unless of SIGSEGV while starting: then start it again."""
        if self.process.alive:
            return
        code = self.process.proc.returncode if self.process.proc else None
        young = time.perf_counter() - self.started < CRASH_WINDOW_S
        if code == -signal.SIGSEGV and young and self.crashes < MAX_CRASHES:
            self.crashes += 1
            self.process = self._start()
            return
        raise RuntimeError(f"{self.name} exited with {code}:\n{self.process.log_tail(30)}")

    def note(self) -> str:
        return f"; {self.crashes} start(s) died of SIGSEGV first" if self.crashes else ""

    def stop(self) -> None:
        self.process.stop()


def produce_built(
    stack: TestStack,
    build: Callable[[int], Records],
    count: int,
    initializer: Callable[..., None],
    initargs: Sequence[object],
) -> float:
    """Produce the records `build(start)` makes for start = 0, CHUNK, … below `count`.

    The chunks are built in BUILDERS processes (~100 µs of Python per event) while this
    process produces them in order. Returns the seconds it all took.
    """
    started = time.perf_counter()
    producer = Producer(producer_config(stack.settings, f"bench-{uuid.uuid4().hex[:8]}"))
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    context = multiprocessing.get_context("spawn")
    with context.Pool(BUILDERS, initializer=initializer, initargs=tuple(initargs)) as pool:
        for records in pool.imap(build, range(0, count, CHUNK)):
            for key, value in records:
                while True:
                    try:
                        producer.produce(topics.EVENTS, value=value, key=key, on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
    if producer.flush(120) or failed:
        raise RuntimeError(f"records unacknowledged: {failed[:3]}")
    return time.perf_counter() - started


def distinct_persons(secret: str, persons: int) -> tuple[Workload, list[int]]:
    """A workload and the indices of `persons` of its persons whose nins all differ.

    The workload draws nins at random, so some repeat (470 of 100,000): a few more are drawn
    and the repeats left out, so that N persons are N people.
    """
    workload = Workload(secret, persons + persons // 50 + 10)
    first: dict[str, int] = {}
    for index, nin in enumerate(workload.nins):
        first.setdefault(nin, index)
    chosen = sorted(first.values())[:persons]
    if len(chosen) < persons:
        raise RuntimeError(f"only {len(chosen):,} distinct persons, {persons:,} wanted")
    return workload, chosen


# Each build process's workload and persons, made once by `_start_builder`.
_workload: Workload | None = None
_persons: list[int] = []
_count = 0


def _start_builder(secret: str, persons: int, count: int) -> None:
    global _workload, _persons, _count
    _workload, _persons = distinct_persons(secret, persons)
    _count = count


def _journeys(start: int) -> Records:
    """Records start … start + CHUNK of the replayed stream: person round-robin, each event
    type of the mix in turn (as `Workload.event`), each event with its own event id."""
    assert _workload is not None
    workload, persons = _workload, _persons
    records = []
    for index in range(start, min(start + CHUNK, _count)):
        person = persons[index % len(persons)]
        event_type = MIX[(index // len(persons)) % len(MIX)]
        event = workload.factory.event(event_type, nin=workload.nins[person])
        source = event["source"]
        event["event_id"] = f"{source['agency']}-{source['org_id']}-replay-{index:07d}"
        parsed, problems = parse_event(event)
        if parsed is None:
            raise ValueError(f"workload produced an invalid event: {problems}")
        key = workload.keys[person]
        record = event_to_record(parsed, key.decode(), datetime.now(UTC))
        records.append((key, workload.codec.encode_event(record)))
    return records


def run(bench: Bench) -> None:
    count = bench.scale.replay_events
    persons = max(1, count // len(MIX))  # every person one whole journey
    consume = bench.baseline_value("kafka.consume")
    if consume:
        bench.add(
            Row(
                SECTION,
                f"Kafka reads {count:,} records (derived)",
                count / consume,
                "s",
                key="kafka.read_replay_s",
                note="replay_events ÷ the ConsumerPerformance rate of this run",
            )
        )
    with private_stack() as stack:
        secret = stack.settings.subject_key_secret.get_secret_value()
        produced_s = produce_built(
            stack, _journeys, count, _start_builder, (secret, persons, count)
        )
        end = end_offsets(stack, topics.EVENTS)
        if end != count:
            raise RuntimeError(f"{end:,} records on {topics.EVENTS}, expected {count:,}")
        bench.echo(f"   {count:,} events built and produced in {produced_s:.0f} s (not counted)")
        for service, what in (
            ("router", "router state (routing every event)"),
            ("sla", "SLA engine state (obligations in PostgreSQL)"),
        ):
            seconds, cpu_s, crashes = replay(stack, service, count)
            found = asyncio.run(sla_state(stack)) if service == "sla" else ""
            bench.add(
                Row(
                    SECTION,
                    f"rebuild {what}",
                    seconds,
                    "s",
                    baseline="kafka.read_replay_s",
                    # The goal is for a million events; a smaller replay is judged by its rate.
                    goal=Goal("<=", 120) if count == GOAL_EVENTS else None,
                    note=(
                        f"{count:,} events of {persons:,} persons; process start → its group "
                        f"committed the end of {topics.EVENTS} (commits every ~3 s); "
                        f"{cpu_s * 1e6 / count:,.0f} µs of worker CPU per event{found}{crashes}"
                    ),
                )
            )
            bench.add(
                Row(
                    SECTION,
                    f"{service} replay rate",
                    count / seconds,
                    "events/s",
                    baseline="kafka.consume",
                    goal=Goal(">=", GOAL_EVENTS / 120),
                    note="one worker process, its start included; the goal is 1,000,000 in 120 s",
                )
            )


def replay(stack: TestStack, service: str, count: int) -> tuple[float, float, str]:
    """Start `service` from scratch until its group committed `count` records.

    Returns the seconds, the worker's CPU seconds and a note on crashed starts.
    """
    progress = GroupProgress(stack, f"carebus-{service}", topics.EVENTS)
    worker = Worker(stack, service)
    try:
        seconds = progress.wait_for(count, 120 + count / MIN_RATE, worker)
        cpu_s = cpu_seconds(worker.process.pid)
    finally:
        worker.stop()
        progress.close()
    return seconds, cpu_s, worker.note()


async def sla_state(stack: TestStack) -> str:
    """What the SLA engine stored: persons, their state's size, open obligations."""
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS persons, avg(octet_length(state::text)) AS state_bytes, "
            "(SELECT count(*) FROM sla_deadlines) AS deadlines FROM sla_persons"
        )
    finally:
        await conn.close()
    assert row is not None
    return (
        f"; stored {row['persons']:,} persons, {row['state_bytes'] or 0:,.0f} B of state JSON "
        f"each on average, {row['deadlines']:,} open obligations"
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
