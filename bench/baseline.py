"""Baselines: what Kafka alone does on this box with carebus's message size and producer settings.

Every other figure is shown as a ratio to one of these, measured in the same run:

- `kafka.produce`: Kafka's own ProducerPerformance (Java) with carebus's producer settings;
- `kafka.consume`: Kafka's own ConsumerPerformance (Java) reading those records back;
- `kafka.loop`: a plain confluent-kafka consume → produce loop, the most a Python router could do;
- `kafka.latency_p50_ms` / `kafka.latency_p99_ms`: produce → consume latency of confluent-kafka
  at 1,000 records/s with carebus's linger, the floor under carebus's end-to-end latency;
- `kafka.<figure>_plaintext`: the same four on a broker without TLS, SASL or ACLs, in rounds
  alternating with carebus's broker (`tls_and_sasl_cost`): what security costs on each path.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    NewTopic,
)

from bench.harness import KAFKA_LIBS, Bench, Row, percentiles, private_stack, wait_until
from bench.workload import Workload
from carebus.adapters.kafka import client_security, consumer_config, producer_config
from carebus.wire import topics
from carebus_dev.testing import TestStack

SECTION: Final = "baseline"
LATENCY_RATE: Final = 1_000  # records/s, the offered load of the e2e latency goal
JAVA_HEAP: Final = "-Xmx512m"
# carebus's producer settings (carebus/adapters/kafka.py) in the Java client's spelling.
JAVA_PRODUCER_PROPS: Final = (
    "acks=all",
    "linger.ms=5",
    "compression.type=lz4",
    "enable.idempotence=true",
)
# ProducerPerformance's last line: "N records sent, R records/sec (M MB/sec), A ms avg latency,
# X ms max latency, P50 ms 50th, P95 ms 95th, P99 ms 99th, P999 ms 99.9th."
_PRODUCER_SUMMARY: Final = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99.9th"
)


@dataclass(frozen=True)
class ProducerSummary:
    """ProducerPerformance's final summary."""

    records_per_s: float
    mb_per_s: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float


@dataclass(frozen=True)
class ConsumerSummary:
    """ConsumerPerformance's summary: rates over the whole run and over fetching only."""

    records_per_s: float  # nMsg.sec: includes joining the group
    mb_per_s: float
    rebalance_ms: float
    fetch_records_per_s: float  # fetch.nMsg.sec: from the first fetched record on


def run(bench: Bench) -> None:
    count = bench.scale.baseline_records
    with private_stack() as stack:
        size = Workload(stack.settings.subject_key_secret.get_secret_value()).message_size()
        partitions = partition_count(stack, topics.EVENTS)
        source = create_topic(stack, "bench.baseline.produced", partitions)

        produced = producer_performance(stack, source, count, size)
        settings = "acks=all, linger 5 ms, lz4, idempotent"
        bench.add(
            Row(
                SECTION,
                "Kafka ProducerPerformance",
                produced.records_per_s,
                "records/s",
                note=f"{count:,} × {size} B, {partitions} partitions, {settings}, "
                f"{produced.mb_per_s:.1f} MB/s",
                key="kafka.produce",
            )
        )
        bench.add(
            Row(
                SECTION,
                "Kafka ProducerPerformance p99 latency",
                produced.p99_ms,
                "ms",
                note=f"unthrottled, so mostly queueing: p50 {produced.p50_ms:.0f} ms, "
                f"p95 {produced.p95_ms:.0f} ms, p99.9 {produced.p999_ms:.0f} ms, "
                f"avg {produced.avg_ms:.0f} ms, max {produced.max_ms:.0f} ms",
                key="kafka.produce_p99_ms",
            )
        )

        consumed = consumer_performance(stack, source, count)
        bench.add(
            Row(
                SECTION,
                "Kafka ConsumerPerformance",
                consumed.fetch_records_per_s,
                "records/s",
                note=f"fetch.nMsg.sec; {consumed.records_per_s:,.0f}/s including "
                f"{consumed.rebalance_ms:,.0f} ms group join, {consumed.mb_per_s:.1f} MB/s",
                key="kafka.consume",
            )
        )

        target = create_topic(stack, "bench.baseline.looped", partitions)
        looped = consume_produce_loop(stack, source, target, count)
        bench.add(
            Row(
                SECTION,
                "confluent-kafka consume → produce loop",
                looped,
                "records/s",
                note="one Python process, consume(500) batches, carebus producer settings, "
                "first record to final flush",
                key="kafka.loop",
            )
        )

        latency_topic = create_topic(stack, "bench.baseline.latency", partitions)
        samples = produce_consume_latency(
            stack, latency_topic, size, LATENCY_RATE, bench.scale.latency_seconds
        )
        cuts = percentiles(samples)
        note = f"{len(samples):,} records at {LATENCY_RATE:,}/s, linger 5 ms, send → receive"
        for point in (50, 95, 99):
            bench.add(
                Row(
                    SECTION,
                    f"confluent-kafka latency p{point}",
                    cuts[point],
                    "ms",
                    note=note,
                    key=f"kafka.latency_p{point}_ms",
                )
            )

        tls_and_sasl_cost(bench, stack, size, partitions)


@dataclass(frozen=True)
class PathFigures:
    """One round of the figures TLS and SASL are compared on, on one broker."""

    produce: float  # ProducerPerformance, records/s
    consume: float  # ConsumerPerformance, fetch records/s
    loop: float  # the confluent-kafka consume → produce loop, records/s
    latency_p99_ms: float  # confluent-kafka produce → consume at LATENCY_RATE


def path_figures(stack: TestStack, bench: Bench, size: int, partitions: int) -> PathFigures:
    """ProducerPerformance, ConsumerPerformance, the Python loop and the latency on `stack`,
    each on fresh topics."""
    count = bench.scale.baseline_records
    source = create_topic(stack, "bench.tls.source", partitions)
    produced = producer_performance(stack, source, count, size)
    consumed = consumer_performance(stack, source, count)
    looped = consume_produce_loop(
        stack, source, create_topic(stack, "bench.tls.loop", partitions), count
    )
    latency = produce_consume_latency(
        stack,
        create_topic(stack, "bench.tls.latency", partitions),
        size,
        LATENCY_RATE,
        bench.scale.latency_seconds,
    )
    return PathFigures(
        produced.records_per_s, consumed.fetch_records_per_s, looped, percentiles(latency)[99]
    )


def tls_and_sasl_cost(bench: Bench, secured: TestStack, size: int, partitions: int) -> None:
    """The same producer, consumer, Python loop and latency runs on carebus's broker (SASL/SCRAM
    over TLS, ACLs) and on a plaintext broker (none of them: never carebus's), both running,
    in alternating rounds (plaintext first in odd rounds, secured first in even ones, so the
    order and the box's drift fall on both sides); each figure is the median of its rounds.
    The Java tools show the protocol's cost; the confluent-kafka loop and latency the cost on
    the client path carebus's services take."""
    rounds: dict[str, list[PathFigures]] = {"plaintext": [], "secured": []}
    with private_stack(kafka_secure=False) as plaintext:
        brokers = {"plaintext": plaintext, "secured": secured}
        for round_no in range(bench.scale.tls_rounds):
            order = ("plaintext", "secured") if round_no % 2 == 0 else ("secured", "plaintext")
            for name in order:
                rounds[name].append(path_figures(brokers[name], bench, size, partitions))
    count = bench.scale.tls_rounds
    for label, field, unit, key in (
        ("Kafka ProducerPerformance", "produce", "records/s", "produce"),
        ("Kafka ConsumerPerformance", "consume", "records/s", "consume"),
        ("confluent-kafka consume → produce loop", "loop", "records/s", "loop"),
        (
            f"confluent-kafka latency p99 at {LATENCY_RATE:,}/s",
            "latency_p99_ms",
            "ms",
            "latency_p99_ms",
        ),
    ):
        plain = [getattr(figures, field) for figures in rounds["plaintext"]]
        sasl = [getattr(figures, field) for figures in rounds["secured"]]
        bench.add(
            Row(
                SECTION,
                f"{label}, plaintext broker",
                statistics.median(plain),
                unit,
                note=f"median of {count} rounds ({_spread(plain)}); no TLS, SASL or ACLs "
                "(a throwaway broker beside carebus's)",
                key=f"kafka.{key}_plaintext",
            )
        )
        bench.add(
            Row(
                SECTION,
                f"{label}, SASL/SCRAM over TLS (carebus's broker)",
                statistics.median(sasl),
                unit,
                baseline=f"kafka.{key}_plaintext",
                note=f"median of {count} rounds ({_spread(sasl)}), alternating with the "
                "plaintext broker's: what TLS and SASL cost on this path",
            )
        )


def _spread(values: Sequence[float]) -> str:
    """`low–high` of the rounds, as the table prints figures (whole numbers from 100 up)."""
    digits = ",.0f" if max(values) >= 100 else ".3g"
    return "–".join(format(value, digits) for value in (min(values), max(values)))


def partition_count(stack: TestStack, topic: str) -> int:
    admin = AdminClient(client_security(stack.settings))
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def create_topic(stack: TestStack, prefix: str, partitions: int) -> str:
    """A fresh topic named `<prefix>.<random>` with `partitions` partitions; its name."""
    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_security(stack.settings))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], operation_timeout=30
    )
    futures[name].result(timeout=60)
    wait_until(
        lambda: _has_leaders(admin, name, partitions), timeout_s=30, what=f"leaders for {name}"
    )
    return name


def _has_leaders(admin: AdminClient, topic: str, partitions: int) -> bool:
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return False
    found = metadata.partitions.values()
    return len(found) == partitions and all(p.leader >= 0 for p in found)


def kafka_tool(tool: str, args: Sequence[str], timeout_s: float) -> str:
    """Run `org.apache.kafka.tools.<tool>` from the project's Kafka jars; its stdout."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH; the Kafka baselines need a JDK 17+")
    if not list(KAFKA_LIBS.glob("kafka-tools-*.jar")):
        raise RuntimeError(
            f"no kafka-tools-*.jar in {KAFKA_LIBS}: the jars of infra/kafka/pom.xml are "
            "fetched there when a stack first starts; did that fetch fail?"
        )
    argv = [
        java,
        JAVA_HEAP,
        "-Dlog4j2.level=ERROR",  # the tools' INFO chatter goes to stdout otherwise
        "-Dlog4j2.statusLoggerLevel=OFF",  # "no log4j2 configuration file found"
        "-cp",
        f"{KAFKA_LIBS}/*",
        f"org.apache.kafka.tools.{tool}",
        *args,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{tool} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-20:])
        raise RuntimeError(f"{tool} exited with {done.returncode}:\n{tail}")
    return done.stdout


def java_client_config(stack: TestStack) -> Path:
    """A Java client properties file with the same principal and CA as the Python clients."""
    settings = stack.settings
    lines = []
    if settings.kafka_security_protocol == "SASL_SSL":
        assert settings.kafka_password is not None
        password = settings.kafka_password.get_secret_value()
        lines = [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{settings.kafka_username}" password="{password}";',
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={settings.kafka_ca_file}",
        ]
    path = settings.state_dir / "kafka" / "bench-client.properties"
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def producer_performance(stack: TestStack, topic: str, count: int, size: int) -> ProducerSummary:
    output = kafka_tool(
        "ProducerPerformance",
        [
            "--topic",
            topic,
            "--num-records",
            str(count),
            "--record-size",
            str(size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={stack.settings.kafka_bootstrap}",
            *JAVA_PRODUCER_PROPS,
            "--producer.config",
            str(java_client_config(stack)),
        ],
        timeout_s=120 + count / 2_000,
    )
    summaries = [m for line in output.splitlines() if (m := _PRODUCER_SUMMARY.search(line))]
    if not summaries:
        raise RuntimeError(f"no summary line in ProducerPerformance's output:\n{output[-2000:]}")
    last = summaries[-1]
    if int(last["records"]) != count:
        raise RuntimeError(f"ProducerPerformance sent {last['records']} records, not {count}")
    return ProducerSummary(
        records_per_s=float(last["rate"]),
        mb_per_s=float(last["mb"]),
        avg_ms=float(last["avg"]),
        max_ms=float(last["max"]),
        p50_ms=float(last["p50"]),
        p95_ms=float(last["p95"]),
        p99_ms=float(last["p99"]),
        p999_ms=float(last["p999"]),
    )


def consumer_performance(stack: TestStack, topic: str, count: int) -> ConsumerSummary:
    output = kafka_tool(
        "ConsumerPerformance",
        [
            "--bootstrap-server",
            stack.settings.kafka_bootstrap,
            "--topic",
            topic,
            "--messages",
            str(count),
            "--group",
            f"bench-perf-{uuid.uuid4().hex[:8]}",
            "--timeout",
            "30000",
            "--consumer.config",
            str(java_client_config(stack)),
        ],
        timeout_s=120 + count / 2_000,
    )
    # A header of comma-separated names, then one line of values (dates contain no commas).
    lines = [line for line in output.splitlines() if line.count(",") >= 9]
    header = next((i for i, line in enumerate(lines) if line.startswith("start.time")), None)
    if header is None or header + 1 >= len(lines):
        raise RuntimeError(f"no summary in ConsumerPerformance's output:\n{output[-2000:]}")
    names = [name.strip() for name in lines[header].split(",")]
    values = dict(zip(names, (v.strip() for v in lines[header + 1].split(",")), strict=True))
    records = int(values["data.consumed.in.nMsg"])
    if records < count:
        raise RuntimeError(f"ConsumerPerformance read {records} records, not {count}")
    return ConsumerSummary(
        records_per_s=float(values["nMsg.sec"]),
        mb_per_s=float(values["MB.sec"]),
        rebalance_ms=float(values["rebalance.time.ms"]),
        fetch_records_per_s=float(values["fetch.nMsg.sec"]),
    )


def consume_produce_loop(stack: TestStack, source: str, target: str, count: int) -> float:
    """Records/s of consume(500) → produce each value → flush, from first record to last ack."""
    settings = stack.settings
    consumer = Consumer(consumer_config(settings, f"bench-loop-{uuid.uuid4().hex[:8]}"))
    producer = Producer(producer_config(settings, "bench-loop"))
    partitions = partition_count(stack, source)
    consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in range(partitions)])
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    seen = 0
    started: float | None = None
    deadline = time.monotonic() + 120 + count / 1_000
    try:
        while seen < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the loop read {seen} of {count} records in time")
            batch = consumer.consume(num_messages=500, timeout=1.0)
            if batch and started is None:
                started = time.perf_counter()
            for message in batch:
                if message.error() is not None:
                    raise KafkaException(message.error())
                while True:
                    try:
                        producer.produce(target, value=message.value(), on_delivery=report)
                        break
                    except BufferError:
                        producer.poll(0.05)
                seen += 1
            producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("the loop's producer did not flush within 60 s")
        assert started is not None
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if failed:
        raise RuntimeError(f"the loop's producer failed: {failed[:3]}")
    return seen / elapsed


def produce_consume_latency(
    stack: TestStack, topic: str, size: int, rate: int, seconds: float
) -> list[float]:
    """Milliseconds from produce() to the consumer's receipt, records paced at `rate`/s.

    The send time (ns) is the value's first 8 bytes; the first second (a quarter of a short run)
    is warm-up and not sampled. The consumer is assigned the partitions directly, so there is
    no group join to wait for.
    """
    settings = stack.settings
    consumer = Consumer(consumer_config(settings, f"bench-latency-{uuid.uuid4().hex[:8]}"))
    partitions = partition_count(stack, topic)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    producer = Producer(producer_config(settings, "bench-latency"))
    total = int(rate * seconds)
    warmup = int(rate * min(1.0, seconds / 4))
    samples: list[float] = []
    received = 0
    done = threading.Event()

    def receive() -> None:
        nonlocal received
        while not done.is_set():
            # poll(), not consume(n): consume waits for n records or its timeout, whichever first.
            message = consumer.poll(0.1)
            now = time.time_ns()
            if message is not None and message.error() is None:
                sent = int.from_bytes((message.value() or b"")[:8], "big")
                received += 1
                if int.from_bytes(message.key() or b"", "big") >= warmup:
                    samples.append((now - sent) / 1e6)

    receiver = threading.Thread(target=receive, name="bench-latency-consumer", daemon=True)
    receiver.start()
    padding = b"x" * max(0, size - 8)
    try:
        started = time.perf_counter()
        for index in range(total):
            pause = started + index / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            producer.produce(
                topic,
                value=time.time_ns().to_bytes(8, "big") + padding,
                key=index.to_bytes(4, "big"),
            )
            producer.poll(0)
        if producer.flush(30):
            raise RuntimeError("the latency producer did not flush within 30 s")
        wait_until(lambda: received >= total, 30, f"the consumer receiving {total} records")
    finally:
        done.set()
        receiver.join(timeout=10)
        consumer.close()
    return samples
