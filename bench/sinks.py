"""Sinks: rows/s the event store and the audit store write to PostgreSQL from a backlog.

Each sink starts against topics that already hold its whole backlog, so the figure is the
sink's own pace, not the producer's. The rate runs from the first committed batch to the last
(the sink's start-up — connecting, joining the group — is left out of it and given in the note).
The audit store's backlog is the router's output for the same events, decided by the router's
own routing functions while the events are produced.

Progress is read from the sink's own `carebus_sink_rows_total` on its /metrics endpoint, which
counts a batch's rows once its transaction has committed: polling `SELECT count(*)` over a
growing table would compete with the sink for the same two cores. The stored rows are counted
with SQL once at the end.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

import psycopg

from bench.harness import Bench, Goal, Row, end_offsets, private_stack, produce_to
from bench.workload import Workload
from carebus.domain import records
from carebus.domain.routing import PersonState, apply, route
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.policy_files import load_policy
from carebus_dev.testing import ServiceProcess, TestStack
from consumers import audit_store, event_store

SECTION: Final = "sinks"
GOAL: Final = Goal(">=", 50_000)
PERSONS: Final = 10_000
POLL_S: Final = 0.2  # each scrape costs the sink ~1 ms of CPU; 0.05 s cost it ~3 %
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class SinkRun:
    """How one sink worked through its backlog."""

    rows: int  # rows in its tables at the end
    rows_per_s: float  # from the first committed batch to the last
    includes_startup: bool  # the backlog fit one poll, so the rate is from the process's launch
    total_s: float  # from starting the process to the last batch
    first_batch_s: float  # from starting the process to its first committed batch
    sink_cpu: float  # the sink process's CPU while writing, in cores (1.0 = one core busy)
    postgres_cpu: float  # the PostgreSQL server's CPU while the sink wrote, in cores


def run(bench: Bench) -> None:
    count = bench.scale.sink_records
    with private_stack() as stack:
        produce_backlog(stack, count)

        events = drain(stack, "event_store", event_store.NAME, (topics.EVENTS,), ("events",))
        if events.rows != count:
            raise RuntimeError(f"the event store holds {events.rows} of {count} events")
        bench.add(
            Row(
                SECTION,
                "event store",
                events.rows_per_s,
                "rows/s",
                baseline="kafka.consume",
                goal=GOAL,
                note=_note(events, event_store.BATCH_SIZE),
            )
        )

        audit = drain(
            stack,
            "audit_store",
            audit_store.NAME,
            audit_store.TOPICS,
            ("disclosures", "deliveries"),
        )
        disclosures, deliveries = (_count(stack, table) for table in ("disclosures", "deliveries"))
        bench.add(
            Row(
                SECTION,
                "audit store",
                audit.rows_per_s,
                "rows/s",
                baseline="kafka.consume",
                goal=GOAL,
                note=f"{disclosures:,} disclosures + {deliveries:,} deliveries, the router's "
                f"decisions on the {count:,} events; " + _note(audit, audit_store.BATCH_SIZE),
            )
        )


def produce_backlog(stack: TestStack, count: int) -> None:
    """`count` realistic events on care.events.v1 and the router's output for them.

    The output comes from the router's own pure decisions (`routing.apply` and `route`
    over each person's stream, encoded as the router encodes them), so the audit store gets
    exactly the records a router would have published, without running one.
    """
    settings = stack.settings
    workload = Workload(settings.subject_key_secret.get_secret_value(), persons=PERSONS)
    codec = Codec.default()
    policy = load_policy(settings.routing_policy)
    persons: dict[bytes, PersonState] = {}

    def backlog() -> Iterator[tuple[str, bytes, bytes]]:
        for key, value in workload.records(count):
            yield topics.EVENTS, key, value
            decoded = codec.decode(value)
            state = persons[key] = apply(
                persons.get(key, PersonState()), decoded.schema_name, decoded.record
            )
            routing = route(decoded.record, state, policy, datetime.now(UTC))
            for delivery in routing.deliveries:
                yield (
                    topics.deliveries(delivery["recipient"]["agency"]),
                    key,
                    codec.encode(records.DELIVERY, delivery),
                )
            for disclosure in routing.disclosures:
                yield topics.AUDIT, key, codec.encode(records.DISCLOSURE, disclosure)

    produce_to(stack, backlog())


class _Sample(NamedTuple):
    at: float  # perf_counter
    rows: int  # rows of committed batches so far
    sink_cpu: float  # CPU seconds of the sink process so far
    postgres_cpu: float  # CPU seconds of the PostgreSQL server so far


def drain(
    stack: TestStack, service: str, sink: str, sources: Sequence[str], tables: Sequence[str]
) -> SinkRun:
    """Start `service` on its backlog in `sources`, wait until it has written every record."""
    expected = sum(end_offsets(stack, topic) for topic in sources)
    if not expected:
        raise RuntimeError(f"{service} has nothing to store: {', '.join(sources)} are empty")
    postmaster = stack.local.postgres.postmaster_pid()
    if postmaster is None:
        raise RuntimeError("the private PostgreSQL is not running")
    server = _with_children(postmaster)
    launch = _Sample(time.perf_counter(), 0, 0.0, _cpu_seconds(server))
    process = stack.start_service(service)
    first: _Sample | None = None
    last = launch
    try:
        deadline = launch.at + 120 + expected / 1_000
        while last.rows < expected:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{service} wrote {last.rows:,} of {expected:,} rows in time")
            if not process.alive:
                raise RuntimeError(f"{service} exited:\n{process.log_tail(20)}")
            rows = _rows_written(process, sink)
            if rows > last.rows:
                server = _with_children(postmaster)  # backends started since
                last = _Sample(
                    time.perf_counter(), rows, _cpu_seconds([process.pid]), _cpu_seconds(server)
                )
                first = first or last
            time.sleep(POLL_S)
    finally:
        process.stop()
    assert first is not None
    # All rows within one poll (a tiny backlog): measure from launch, start-up included.
    since = first if last.at > first.at else launch
    wall = last.at - since.at
    return SinkRun(
        rows=sum(_count(stack, table) for table in tables),
        rows_per_s=(last.rows - since.rows) / wall,
        includes_startup=since is launch,
        total_s=last.at - launch.at,
        first_batch_s=first.at - launch.at,
        sink_cpu=(last.sink_cpu - since.sink_cpu) / wall,
        postgres_cpu=(last.postgres_cpu - since.postgres_cpu) / wall,
    )


def _rows_written(process: ServiceProcess, sink: str) -> int:
    """The sink's `carebus_sink_rows_total` (rows of committed batches) from its /metrics."""
    with urllib.request.urlopen(f"{process.url}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    pattern = rf'^carebus_sink_rows_total\{{sink="{re.escape(sink)}"\}} ([0-9.e+]+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def _count(stack: TestStack, table: str) -> int:
    with psycopg.connect(stack.settings.postgres_dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - fixed names
    return int(row[0]) if row else 0


def _with_children(pid: int) -> list[int]:
    """`pid` and its direct children (the PostgreSQL server: postmaster and its backends)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of `pids` so far (processes gone since are left out)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


def _note(run: SinkRun, batch_size: int) -> str:
    rate = "rate includes start-up (backlog too small); " if run.includes_startup else ""
    return (
        f"{run.rows:,} rows; {rate}{run.total_s:.1f} s including start-up (first batch after "
        f"{run.first_batch_s:.1f} s); batch {batch_size:,} (BATCH_SIZE constant, no CAREBUS_ "
        f"setting); CPU while writing: sink {run.sink_cpu:.2f} cores, PostgreSQL "
        f"{run.postgres_cpu:.2f} cores; database non-durable (fsync off)"
    )
