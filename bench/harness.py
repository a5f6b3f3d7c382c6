"""What every benchmark shares: the rows of the result table, baselines, a private stack, results.

A benchmark measures on a private broker and database (`carebus_dev.testing.TestStack`: free ports,
a temporary directory), never on a developer's `carebus up` stack, and reports `Row`s. A row
names the baseline it is compared with (measured in the same run, on the same box) and the goal
from issue 6, if it has one; the table prints the value beside both.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import Consumer, Producer, TopicPartition

from carebus.adapters.kafka import client_security, producer_config
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire import topics
from carebus_dev.testing import TestStack

RESULTS_DIR: Final = PROJECT_ROOT / "bench" / "results"
KAFKA_LIBS: Final = PROJECT_ROOT / ".carebus" / "kafka" / "libs"


@dataclass(frozen=True)
class Goal:
    """A target from issue 6: `value <op> target`, e.g. Goal(">=", 10_000)."""

    op: str  # ">=" or "<="
    target: float

    def met(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {_number(self.target)}"


@dataclass
class Row:
    """One figure of the table."""

    section: str
    name: str
    value: float
    unit: str
    baseline: str | None = None  # key of a baseline row measured in the same run
    goal: Goal | None = None
    note: str = ""
    key: str | None = None  # set on baseline rows: what other rows name as their baseline

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.value)


@dataclass(frozen=True)
class Scale:
    """How much work each benchmark does: `full` for the record, `quick` for the smoke test."""

    name: str
    baseline_records: int
    gateway_single: int
    gateway_batches: int
    adapter_messages: int  # distinct messages per adapter over HTTP (and as carebus JSON)
    router_events: int
    router_workers: tuple[int, ...]
    latency_loads: tuple[int, ...]
    latency_seconds: float
    sla_obligations: int
    scan_obligations: int
    sink_records: int
    replay_events: int
    rss_persons: int
    tls_rounds: int  # alternating plaintext / SASL-over-TLS rounds of the baseline's TLS cost


FULL: Final = Scale(
    name="full",
    baseline_records=500_000,
    gateway_single=5_000,
    gateway_batches=100,
    adapter_messages=2_000,
    router_events=100_000,
    router_workers=(1, 2, 4),
    latency_loads=(100, 1_000, 5_000),
    latency_seconds=20.0,
    sla_obligations=1_000,
    scan_obligations=1_000_000,
    sink_records=200_000,
    replay_events=1_000_000,
    rss_persons=100_000,
    tls_rounds=3,
)
QUICK: Final = Scale(
    name="quick",
    baseline_records=5_000,
    gateway_single=100,
    gateway_batches=2,
    adapter_messages=50,
    router_events=1_000,
    router_workers=(1,),
    latency_loads=(100,),
    latency_seconds=2.0,
    sla_obligations=20,
    scan_obligations=10_000,
    sink_records=2_000,
    replay_events=2_000,
    rss_persons=500,
    tls_rounds=1,
)


@dataclass
class Bench:
    """The rows of one run, in the order measured."""

    scale: Scale
    rows: list[Row] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = self.ratio(row)
        extra = f" ({ratio})" if ratio else ""
        self.echo(f"  {row.section}: {row.name} = {_number(row.value)} {row.unit}{extra}")
        return row

    def baseline_value(self, key: str) -> float | None:
        return next((row.value for row in self.rows if row.key == key), None)

    def ratio(self, row: Row) -> str:
        if row.baseline is None:
            return ""
        base = self.baseline_value(row.baseline)
        if not base:
            return f"baseline {row.baseline} missing"
        return f"{row.value / base:.3g}× {row.baseline}"

    def table(self) -> str:
        """The result table as Markdown (printed, and saved with the results)."""
        lines = [
            "| section | figure | value | goal | vs baseline | note |",
            "|---|---|---:|---|---|---|",
        ]
        for row in self.rows:
            goal = ""
            if row.goal is not None:
                goal = f"{row.goal} {row.unit} {'✅' if row.met else '❌'}"
            value = f"{_number(row.value)} {row.unit}"
            lines.append(
                f"| {row.section} | {row.name} | {value} | {goal} | {self.ratio(row)} | "
                f"{row.note} |"
            )
        return "\n".join(lines)

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        """`<UTC time>-<scale>.json` and `.md` with the machine's description; the JSON path."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = directory / f"{stamp}-{self.scale.name}"
        machine = describe_machine()
        document = {
            "measured_at": stamp,
            "scale": asdict(self.scale),
            "machine": machine,
            "rows": [
                {
                    **asdict(row),
                    "goal": str(row.goal) if row.goal else None,
                    "met": row.met,
                    "ratio": self.ratio(row) or None,
                }
                for row in self.rows
            ],
        }
        base.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
        header = "\n".join(f"- {name}: {value}" for name, value in machine.items())
        base.with_suffix(".md").write_text(
            f"# carebus benchmark, {stamp} ({self.scale.name})\n\n{header}\n\n{self.table()}\n"
        )
        return base.with_suffix(".json")


def describe_machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "java": (java.stderr.splitlines() or ["unknown"])[0],
        "kafka": next(
            (
                p.name
                for p in (PROJECT_ROOT / ".carebus" / "kafka" / "libs").glob("kafka_2.13-*.jar")
            ),
            "unknown",
        ),
        "note": "broker, database, services and load generator share these cores",
    }


@contextlib.contextmanager
def private_stack(person_partitions: int = 4, *, kafka_secure: bool = True) -> Iterator[TestStack]:
    """A fresh broker and database (migrations and topics applied), stopped afterwards; with
    `kafka_secure=False` a plaintext broker, for the baseline TLS and SASL are measured against."""
    stack = TestStack(person_partitions=person_partitions, kafka_secure=kafka_secure)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[int, float]:
    """Percentiles of `samples` (inclusive method); empty samples give NaN."""
    if len(samples) < 2:
        value = samples[0] if samples else float("nan")
        return dict.fromkeys(points, value)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in points}


def produce_all(
    stack: TestStack, records: Sequence[tuple[bytes, bytes]], topic: str = topics.EVENTS
) -> float:
    """Produce (key, value) records with carebus's producer settings; seconds until all acked."""
    return produce_to(stack, ((topic, key, value) for key, value in records))


def produce_to(stack: TestStack, records: Iterable[tuple[str, bytes, bytes]]) -> float:
    """Produce (topic, key, value) records in order; seconds until the broker acked them all."""
    producer = Producer(producer_config(stack.settings, f"bench-{uuid.uuid4().hex[:8]}"))
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    started = time.perf_counter()
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining or failed:
        raise RuntimeError(f"{remaining} records unacknowledged, errors: {failed[:3]}")
    return elapsed


def end_offsets(stack: TestStack, topic: str) -> int:
    """The sum of `topic`'s partitions' end offsets: how many records it holds."""
    consumer = Consumer({**client_security(stack.settings), "group.id": "bench-offsets"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        total = 0
        for partition in metadata.topics[topic].partitions:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            total += high
        return total
    finally:
        consumer.close()


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1
) -> float:
    """Seconds until `condition()` holds; raises TimeoutError naming `what`."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.perf_counter() - started


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (faust workers fork none), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _number(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.3g}"
