"""SLA engine: how long after its deadline an alert is raised, and what the due scan costs.

Alert delay: the engine runs with `health_info.after_admission` shortened to a few seconds (a
rules override, as `carebus up --sla-rules FILE` passes it); admissions that need municipal
services and never get their health information are produced evenly over a few seconds, first
a light load (10 due per second), then `sla_obligations` of them, and every alert on
`care.alerts.v1` is compared with its deadline: the `breached_at` the engine stamped, and the
Kafka timestamp of the alert record (when it was handed to the producer).

Scan cost: the deadline index is filled with `scan_obligations` open obligations (deadlines
over the next 30 days, a few hundred due now) and the engine's due-scan statement is timed
as the engine sends it, with the index and without (the baseline: what a scan of the whole
table costs), beside the per-rule gauge query the engine runs every 10 s.
"""

from __future__ import annotations

import asyncio
import functools
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from confluent_kafka import Consumer, Producer

from bench.harness import Bench, Goal, Row, percentiles, private_stack, wait_until
from bench.replay import Worker
from carebus.adapters.kafka import client_security, producer_config
from carebus.domain.events import event_to_record, parse_event, rfc3339
from carebus.domain.identity import subject_key
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import EventFactory, TestStack

SECTION: Final = "sla"
RULE: Final = "health_info.after_admission"
DEADLINE_S: Final = 3
OVERRIDE: Final = f'version: "bench"\nrules:\n  - {{id: {RULE}, deadline: PT{DEADLINE_S}S}}\n'
SPREAD_S: Final = 5.0  # a pass's admissions are produced evenly over this long
LIGHT_RATE: Final = 10  # obligations due per second in the light pass
RECIPIENTS: Final = 2  # the rule alerts the source and the home municipality
SLICES: Final = 50
ALERT_TIMEOUT_S: Final = 120.0

# The engine's statements, as services/sla/store.py sends them (SlaEngine.scan, _refresh_gauges).
DUE_SCAN: Final = (
    "SELECT subject_key FROM sla_deadlines WHERE deadline <= $1 "
    "GROUP BY subject_key ORDER BY min(deadline) LIMIT $2"
)
SCAN_BATCH: Final = 500
GAUGES: Final = (
    "SELECT split_part(obligation_id, ':', 1) AS rule_id, count(*) AS open, "
    "count(*) FILTER (WHERE deadline <= now()) AS overdue "
    "FROM sla_deadlines GROUP BY 1"
)
DUE_NOW: Final = 500
OBLIGATIONS_PER_PERSON: Final = 2
HORIZON: Final = timedelta(days=30)
DEADLINE_RULES: Final = (
    "health_info.after_admission",
    "municipal_reply.discharge_ready",
    "epikrise.after_discharge",
    "followup.discharge_7d",
    "followup.discharge_48h",
    "application.preliminary_reply",
    "ip.review_due",
    "ip.coordinator_missing",
)
INDEXED_RUNS: Final = 200
SEQSCAN_RUNS: Final = 20
GAUGE_RUNS: Final = 5


def run(bench: Bench) -> None:
    with private_stack() as stack:
        alert_delay(bench, stack)
        asyncio.run(scan_cost(bench, stack))


# --- alert delay ----------------------------------------------------------------------------


class Admissions:
    """Admissions whose health information is never sent: each opens one obligation."""

    def __init__(self, stack: TestStack) -> None:
        self.secret = stack.settings.subject_key_secret.get_secret_value()
        self.factory = EventFactory()
        self.codec = Codec.default()
        self.producer = Producer(producer_config(stack.settings, "bench-sla-admissions"))

    def produce(self, count: int) -> list[str]:
        """Produce `count` admissions occurring now; their event ids."""
        event_ids = []
        for _ in range(count):
            event = self.factory.event(
                "admission",
                occurred_at=rfc3339(datetime.now(UTC)),
                housing_status="stable",  # homeless would open a second obligation
            )
            parsed, problems = parse_event(event)
            if parsed is None:
                raise ValueError(f"invalid admission: {problems}")
            key = subject_key(parsed.nin, self.secret)
            record = event_to_record(parsed, key, datetime.now(UTC))
            self.producer.produce(
                topics.EVENTS, key=key.encode(), value=self.codec.encode_event(record)
            )
            event_ids.append(parsed.event_id)
        self.producer.poll(0)
        return event_ids

    def flush(self) -> None:
        if self.producer.flush(30):
            raise RuntimeError("admissions not acknowledged")


class Alerts:
    """Raised alerts on care.alerts.v1 by trigger event id: (deadline, breached_at, Kafka time)."""

    def __init__(self, stack: TestStack) -> None:
        self.codec = Codec.default()
        self.consumer = Consumer(
            {
                **client_security(stack.settings),
                "group.id": f"bench-sla-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topics.ALERTS])
        self.seen: dict[str, list[tuple[datetime, datetime, datetime]]] = {}

    def read(self) -> None:
        for message in self.consumer.consume(500, timeout=0.2):
            if message.error() is not None:
                continue
            alert = self.codec.decode(message.value() or b"").record
            if alert["status"] != "open" or alert["rule_id"] != RULE:
                continue
            published = datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)
            for event_id in alert["event_ids"]:
                self.seen.setdefault(event_id, []).append(
                    (alert["deadline"], alert["breached_at"], published)
                )

    def have(self, event_ids: list[str], engine: Worker) -> bool:
        """Whether every one of `event_ids` has its alert; raises if the engine died."""
        engine.check()
        self.read()
        return all(event_id in self.seen for event_id in event_ids)

    def close(self) -> None:
        self.consumer.close()


def alert_delay(bench: Bench, stack: TestStack) -> None:
    """A light pass (LIGHT_RATE due per second), then `sla_obligations` due within SPREAD_S."""
    rules = stack.state_dir / "sla-bench-rules.yaml"
    rules.write_text(OVERRIDE)
    engine = Worker(stack, "sla", {"CAREBUS_SLA_RULES_OVERRIDE": str(rules)})
    admissions = Admissions(stack)
    alerts = Alerts(stack)
    try:
        # One alert end to end first: the engine has joined its group and is scanning.
        warmup = admissions.produce(1)
        admissions.flush()
        wait_until(lambda: alerts.have(warmup, engine), ALERT_TIMEOUT_S, "the first alert", 0.0)
        heavy = bench.scale.sla_obligations
        for count in sorted({min(heavy, round(LIGHT_RATE * SPREAD_S)), heavy}):
            measured: list[str] = []
            for index in range(SLICES):
                size = count * (index + 1) // SLICES - len(measured)
                measured += admissions.produce(size)
                time.sleep(SPREAD_S / SLICES)
            admissions.flush()
            wait_until(
                functools.partial(alerts.have, measured, engine),
                ALERT_TIMEOUT_S + DEADLINE_S + SPREAD_S,
                f"alerts for {count} obligations",
                0.0,
            )
            raised = [alert for event_id in measured for alert in alerts.seen[event_id]]
            report_delays(bench, raised, stack.settings.sla_scan_interval_s)
    finally:
        alerts.close()
        engine.stop()
    if engine.crashes:
        bench.echo(f"   the SLA engine{engine.note()[1:]}")


def report_delays(
    bench: Bench, raised: list[tuple[datetime, datetime, datetime]], scan_interval_s: float
) -> None:
    """Rows for one pass from its alerts' (deadline, breached_at, Kafka timestamp)."""
    stamped = [(breached - deadline).total_seconds() * 1000 for deadline, breached, _ in raised]
    published = [(kafka - deadline).total_seconds() * 1000 for deadline, _, kafka in raised]
    obligations = len(raised) // RECIPIENTS
    breaches = sorted(breached for _, breached, _ in raised)
    span_s = (breaches[-1] - breaches[0]).total_seconds()
    rate = f"{obligations / SPREAD_S:,.0f} due/s"
    how = (
        f"{obligations:,} obligations due within {SPREAD_S:.0f} s, {len(raised):,} alerts "
        f"(one per recipient); scan every {scan_interval_s:g} s; breached_at − deadline"
    )
    cuts = percentiles(stamped, (50, 99))
    kafka = percentiles(published, (50, 99))
    bench.add(
        Row(
            SECTION,
            f"alert delay after deadline p50, {rate}",
            cuts[50],
            "ms",
            baseline="kafka.latency_p50_ms",
            note=how,
        )
    )
    bench.add(
        Row(
            SECTION,
            f"alert delay after deadline p99, {rate}",
            cuts[99],
            "ms",
            baseline="kafka.latency_p99_ms",
            goal=Goal("<=", 1000),
            note=(
                f"max {max(stamped):,.0f} ms; Kafka timestamp − deadline p50 {kafka[50]:,.0f}, "
                f"p99 {kafka[99]:,.0f}, max {max(published):,.0f} ms; first to last breach "
                f"{span_s:.1f} s ({obligations / max(span_s, 1e-3):,.0f} obligations/s)"
            ),
        )
    )


# --- scan cost ------------------------------------------------------------------------------


async def scan_cost(bench: Bench, stack: TestStack) -> None:
    count = bench.scale.scan_obligations
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        await conn.execute("TRUNCATE sla_deadlines")
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "sla_deadlines",
            records=obligations(count, datetime.now(UTC)),
            columns=["subject_key", "obligation_id", "deadline"],
        )
        await conn.execute("ANALYZE sla_deadlines")
        filled_s = time.perf_counter() - started
        plan = await explain(conn)
        bench.echo("   due scan plan:\n" + "\n".join(f"     {line}" for line in plan))
        uses_index = any("sla_deadlines_due_idx" in line for line in plan)
        await conn.execute("SET enable_indexscan = off")
        await conn.execute("SET enable_bitmapscan = off")
        seqscan_plan = await explain(conn)
        seqscan = await timed(conn, DUE_SCAN, SEQSCAN_RUNS, due=True)
        await conn.execute("RESET enable_indexscan")
        await conn.execute("RESET enable_bitmapscan")
        indexed = await timed(conn, DUE_SCAN, INDEXED_RUNS, due=True)
        gauges = await timed(conn, GAUGES, GAUGE_RUNS, due=False)
    finally:
        await conn.close()
    table = f"{count:,} open obligations ({DUE_NOW} due), filled by COPY in {filled_s:.0f} s"
    bench.add(
        Row(
            SECTION,
            "due scan without the index (mean)",
            statistics.fmean(seqscan),
            "ms",
            key="sla.scan_seqscan_ms",
            note=f"{table}; enable_indexscan/bitmapscan off: {scan_nodes(seqscan_plan)}",
        )
    )
    found = scan_nodes(plan) if uses_index else "does NOT use sla_deadlines_due_idx"
    bench.add(
        Row(
            SECTION,
            "due scan (mean)",
            statistics.fmean(indexed),
            "ms",
            baseline="sla.scan_seqscan_ms",
            note=f"{table}; EXPLAIN: {found}; {INDEXED_RUNS} runs",
        )
    )
    bench.add(
        Row(
            SECTION,
            "due scan p99",
            percentiles(indexed, (99,))[99],
            "ms",
            baseline="sla.scan_seqscan_ms",
            note=f"the engine's statement with LIMIT {SCAN_BATCH}, prepared as asyncpg sends it",
        )
    )
    bench.add(
        Row(
            SECTION,
            "per-rule gauge refresh (mean)",
            statistics.fmean(gauges),
            "ms",
            baseline="sla.scan_seqscan_ms",
            note=(
                f"counts the whole index; the engine runs it every 10 s at the end of a scan, "
                f"delaying that scan's successor by as much; max {max(gauges):,.0f} ms"
            ),
        )
    )


def obligations(count: int, now: datetime) -> list[tuple[str, str, datetime]]:
    """Deadline-index rows: OBLIGATIONS_PER_PERSON per person, DUE_NOW of them overdue."""
    rng = random.Random(6)
    rows = []
    person = ""
    for index in range(count):
        if index % OBLIGATIONS_PER_PERSON == 0:
            person = f"{rng.getrandbits(256):064x}"
        rule = DEADLINE_RULES[index % len(DEADLINE_RULES)]
        if index < DUE_NOW:
            deadline = now - timedelta(seconds=rng.uniform(0, 60))
        else:
            deadline = now + HORIZON * rng.random()
        rows.append((person, f"{rule}:{rng.getrandbits(96):024x}", deadline))
    return rows


async def explain(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {DUE_SCAN}", datetime.now(UTC), SCAN_BATCH)
    return [str(row[0]) for row in rows]


def scan_nodes(plan: list[str]) -> str:
    """The plan's scan nodes without their costs, e.g. `Index Scan using … on sla_deadlines`."""
    nodes = [line.split("(cost")[0].replace("->", "").strip() for line in plan if "Scan" in line]
    return ", ".join(nodes)


async def timed(conn: asyncpg.Connection, statement: str, runs: int, *, due: bool) -> list[float]:
    """Milliseconds of each of `runs` executions (after one untimed run)."""
    arguments: tuple[Any, ...] = ()
    samples = []
    for run_index in range(runs + 1):
        if due:
            arguments = (datetime.now(UTC), SCAN_BATCH)
        started = time.perf_counter()
        await conn.fetch(statement, *arguments)
        if run_index:
            samples.append((time.perf_counter() - started) * 1000)
    return samples
