"""The fault tests' harness: a pipeline on a fresh test stack, a steady load through the gateway,
and the checks that every accepted event was stored, routed, audited and delivered exactly once
in each person's order, with the time the pipeline took to catch up after the fault.

A scenario is `await run_scenario(stack, name, fault)`: the load runs for `FaultConfig.seconds`,
`fault(pipeline)` starts after a fifth of it and returns when the fault has ended (the component
is back); the figures are written to a JSON file (`tests/faults/report.py` tabulates them) and
the scenario fails on any wrong figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from carebus.adapters.auth import create_token
from carebus.adapters.webhook_registrations import set_webhook
from carebus.domain.events import rfc3339
from carebus.domain.identity import random_nin
from carebus.runtime.config import PROJECT_ROOT
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import ServiceProcess, TestStack
from tests.faults.receiver import WebhookReceiver

DPS = "974705788"
COORDINATOR = "921234562"
# An answer slower than this is a hang: the gateway must answer 503 within seconds instead.
ANSWER_LIMIT_S = 10.0
CLIENT_TIMEOUT_S = 15.0
# Webhook retries for the scenarios that do not simulate a long outage: quick, so a delivery
# refused while a dependency was down is retried within the recovery window.
QUICK_WEBHOOKS = {
    "CAREBUS_WEBHOOK_BACKOFF_INITIAL_S": "0.1",
    "CAREBUS_WEBHOOK_BACKOFF_MAX_S": "1",
    "CAREBUS_WEBHOOK_TIMEOUT_S": "5",
}
RESULTS_DIR = Path(os.environ.get("CAREBUS_FAULT_RESULTS", PROJECT_ROOT / "build" / "faults"))


@dataclass(frozen=True)
class FaultConfig:
    """How long and how hard: environment variables, defaults sized to a 2-core box."""

    seconds: float  # of steady load, fault included
    rate: float  # events per second through the gateway
    persons: int  # people the events are about, each with its own ordered stream
    outage_s: float  # how long a dependency stays down (PostgreSQL, the broker, the receiver)
    settle_s: float  # how long the pipeline may take to catch up once the load stops

    @classmethod
    def from_env(cls) -> FaultConfig:
        env = os.environ
        return cls(
            seconds=float(env.get("CAREBUS_FAULT_SECONDS", "180")),
            rate=float(env.get("CAREBUS_FAULT_RATE", "100")),
            persons=int(env.get("CAREBUS_FAULT_PERSONS", "20")),
            outage_s=float(env.get("CAREBUS_FAULT_OUTAGE_SECONDS", "60")),
            settle_s=float(env.get("CAREBUS_FAULT_SETTLE_SECONDS", "240")),
        )


@dataclass
class Figures:
    """What one scenario sent, what came back, and what the pipeline made of it."""

    scenario: str
    fault: str
    seconds: float
    rate: float
    persons: int
    requests: int = 0  # POSTs sent, retries included
    events: int = 0  # distinct events sent
    accepted: int = 0  # distinct events answered 202
    answers_503: int = 0
    answers_503_without_retry_after: int = 0
    answers_500: int = 0  # any 5xx other than 503
    answers_other: dict[str, int] = field(default_factory=dict)  # any other non-202 status
    transport_errors: int = 0  # connection refused or reset (a killed gateway)
    slow_answers: int = 0  # answered after ANSWER_LIMIT_S, or not at all (timeouts)
    max_answer_s: float = 0.0
    stored: int = 0
    audited: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    webhook_refusals: int = 0  # requests the receiver answered 503 (scenario d)
    recovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Only where the fault is the gateway itself: a killed gateway breaks connections.
    transport_errors_allowed: bool = False
    finished_at: str = ""

    def problems(self) -> list[str]:
        """Every figure that is wrong, in words; empty when the scenario passed."""
        wrong = {
            "no event was accepted": self.accepted == 0,
            f"{self.answers_500} answers were a 5xx other than 503": self.answers_500 > 0,
            f"{self.answers_503_without_retry_after} 503s had no Retry-After": (
                self.answers_503_without_retry_after > 0
            ),
            f"unexpected answers {self.answers_other}": bool(self.answers_other),
            f"{self.slow_answers} answers took over {ANSWER_LIMIT_S:.0f} s or never came": (
                self.slow_answers > 0
            ),
            f"{self.transport_errors} requests failed in transport": (
                self.transport_errors > 0 and not self.transport_errors_allowed
            ),
            f"{self.lost} accepted events lost": self.lost > 0,
            f"{self.duplicated} deliveries duplicated at the receiver": self.duplicated > 0,
            f"{self.reordered} deliveries out of their person's order": self.reordered > 0,
            "the pipeline never caught up after the fault": self.recovery_s is None,
            f"{self.extra.get('sla_untracked')} events never reached an SLA engine": (
                self.extra.get("sla_untracked", 0) > 0
            ),
        }
        return [text for text, is_wrong in wrong.items() if is_wrong]

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        path = directory / f"{self.scenario}.json"
        record = asdict(self) | {"problems": self.problems()}
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path


@dataclass(frozen=True)
class Sent:
    person: int
    seq: int


class Load:
    """Each person's events posted one after the other (the next only after the previous one's
    202, so each person's order is defined), all persons together at `rate` events/s. A 503 is
    retried after its Retry-After (at most 1 s), a broken connection after 0.2 s, always with the
    same event_id and body, until the 202 or the end of the load."""

    def __init__(self, gateway_url: str, token: str, run: str, config: FaultConfig) -> None:
        self.client = httpx.AsyncClient(
            base_url=gateway_url,
            timeout=CLIENT_TIMEOUT_S,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=config.persons + 4),
        )
        self.run = run
        self.config = config
        rng = random.Random(run)
        self.nins = [random_nin(rng) for _ in range(config.persons)]
        self.accepted: dict[str, Sent] = {}
        self.sent: set[str] = set()
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.no_retry_after = 0
        self.transport_errors = 0
        self.slow = 0
        self.max_answer_s = 0.0
        self.in_flight = 0

    def event_id(self, person: int, seq: int) -> str:
        return f"dps-{self.run}-l-{person:03d}-{seq:06d}"

    def event(self, person: int, seq: int) -> dict[str, Any]:
        return {
            "event_id": self.event_id(person, seq),
            "event_type": "discharge_ready",
            "occurred_at": rfc3339(datetime.now(UTC).replace(microsecond=0)),
            "source": {"agency": "dps", "org_id": DPS},
            "subject": {"nin": self.nins[person]},
            "payload": {
                "admission_event_id": f"dps-{self.run}-admission-{person}",
                "needs_municipal_services": True,
                "housing_status": "unstable",
            },
        }

    async def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(self._person(p, deadline) for p in range(self.config.persons)))

    async def _person(self, person: int, deadline: float) -> None:
        interval = self.config.persons / self.config.rate
        # Spread the persons' first events over one interval, so the load is steady.
        slot = time.monotonic() + interval * person / self.config.persons
        seq = 0
        while slot < deadline:
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            await self._until_accepted(person, seq, deadline)
            seq += 1
            # After an outage the person goes on at its rate; it does not burst to catch up.
            slot = max(slot + interval, time.monotonic())

    async def _until_accepted(self, person: int, seq: int, deadline: float) -> None:
        body = self.event(person, seq)
        self.sent.add(body["event_id"])
        while time.monotonic() < deadline:
            pause = await self._post(body)
            if pause is None:
                self.accepted[body["event_id"]] = Sent(person, seq)
                return
            await asyncio.sleep(pause)

    async def _post(self, body: dict[str, Any]) -> float | None:
        """One attempt; None on 202, else how long to wait before the next attempt."""
        self.requests += 1
        started = time.monotonic()
        self.in_flight += 1
        try:
            response = await self.client.post("/v1/events", json=body)
        except httpx.TimeoutException:
            self.slow += 1
            return 0.2
        except httpx.TransportError:
            self.transport_errors += 1
            return 0.2
        finally:
            self.in_flight -= 1
        took = time.monotonic() - started
        self.max_answer_s = max(self.max_answer_s, took)
        if took > ANSWER_LIMIT_S:
            self.slow += 1
        self.statuses[response.status_code] += 1
        if response.status_code == 202:
            return None
        if response.status_code == 503:
            retry_after = response.headers.get("Retry-After")
            if retry_after is None:
                self.no_retry_after += 1
                return 1.0
            try:
                return min(1.0, max(0.05, float(retry_after)))
            except ValueError:
                self.no_retry_after += 1
                return 1.0
        return 0.5  # recorded as a wrong answer; retried so the person's order still holds

    def figures_into(self, figures: Figures) -> None:
        figures.requests = self.requests
        figures.events = len(self.sent)
        figures.accepted = len(self.accepted)
        figures.answers_503 = self.statuses[503]
        figures.answers_503_without_retry_after = self.no_retry_after
        figures.answers_500 = sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)
        figures.answers_other = {
            str(s): n for s, n in self.statuses.items() if s < 500 and s != 202
        }
        figures.transport_errors = self.transport_errors
        figures.slow_answers = self.slow
        figures.max_answer_s = round(self.max_answer_s, 3)

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Progress:
    """How far the pipeline has got with the accepted events."""

    stored: set[str]
    audited: dict[str, str]  # event_id -> delivery_id of its delivered disclosure
    received: set[str]  # delivery ids the receiver accepted

    def done(self, event_ids: Sequence[str] | set[str]) -> set[str]:
        return {
            e
            for e in event_ids
            if e in self.stored and e in self.audited and self.audited[e] in self.received
        }


class Pipeline:
    """The services on a test stack, set up so that every load event is delivered to one
    webhook receiver: the coordinator of each person is the municipality with the webhook."""

    def __init__(
        self,
        stack: TestStack,
        receiver: WebhookReceiver,
        conn: asyncpg.Connection,
        load: Load,
        services: dict[str, ServiceProcess],
    ) -> None:
        self.stack = stack
        self.receiver = receiver
        self.conn = conn
        self.load = load
        self.services = services

    @classmethod
    async def start(
        cls,
        stack: TestStack,
        config: FaultConfig,
        *,
        workers: Sequence[str] = ("router",),
        webhook_env: dict[str, str] | None = None,
    ) -> Pipeline:
        """Start the services (each of `workers` as a named instance: `router`, `router_2`,
        ...), register the webhook and the persons' care teams, and wait until a probe event
        per person is delivered."""
        settings = stack.settings
        receiver = WebhookReceiver().start()
        conn = await asyncpg.connect(settings.postgres_dsn)
        dps = await create_token(conn, agency="dps", org_id=DPS, role="system")
        registrar = await create_token(
            conn, agency="municipality", org_id=COORDINATOR, role="system"
        )
        operator = await create_token(conn, agency="operator", org_id=OPERATOR_ORG, role="operator")
        await set_webhook(conn, COORDINATOR, receiver.url, settings)
        services: dict[str, ServiceProcess] = {}
        for name in ("gateway", "registry", "event_store", "audit_store"):
            services[name] = stack.start_service(name)
        services["webhooks"] = stack.start_service(
            "webhooks", env=webhook_env if webhook_env is not None else QUICK_WEBHOOKS
        )
        for instance in workers:
            kind = instance.split("_", 1)[0]
            services[instance] = stack.start_service(kind, name=instance)
        run = uuid.uuid4().hex[:8]
        load = Load(settings.service_url(settings.gateway_port), dps, run, config)
        pipeline = cls(stack, receiver, conn, load, services)
        await pipeline._register(registrar, operator)
        await pipeline._probe()
        return pipeline

    async def _register(self, registrar: str, operator: str) -> None:
        settings = self.stack.settings
        registry = settings.service_url(settings.registry_port)
        async with httpx.AsyncClient(base_url=registry, timeout=30) as client:
            for nin in self.load.nins:
                home = await client.post(
                    "/v1/population-register",
                    json={"nin": nin, "home_municipality_org": COORDINATOR},
                    headers={"Authorization": f"Bearer {operator}"},
                )
                assert home.status_code == 201, home.text
                member = await client.post(
                    "/v1/care-teams",
                    json={
                        "nin": nin,
                        "agency": "municipality",
                        "org_id": COORDINATOR,
                        "role": "coordinator",
                        "status": "member",
                    },
                    headers={"Authorization": f"Bearer {registrar}"},
                )
                assert member.status_code == 201, member.text

    async def _probe(self, timeout_s: float = 90.0) -> None:
        """Until one event about each person has reached the receiver: the router then knows
        every care team (the registry publishes them asynchronously)."""
        load = self.load
        waiting = set(range(len(load.nins)))
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while waiting:
            assert time.monotonic() < deadline, f"{len(waiting)} persons' probes never delivered"
            probes = {}
            for person in waiting:
                body = load.event(person, 0)
                body["event_id"] = f"dps-{load.run}-w-{person:03d}-{attempt:03d}"
                response = await load.client.post("/v1/events", json=body)
                assert response.status_code == 202, response.text
                probes[body["event_id"]] = person
            attempt += 1
            await asyncio.sleep(3.0)
            rows = await self.conn.fetch(
                "SELECT event_id, delivery_id FROM disclosures WHERE event_id = ANY($1) "
                "AND decision = 'delivered' AND recipient_org = $2",
                list(probes),
                COORDINATOR,
            )
            received = self.receiver.delivered_ids()
            waiting -= {probes[r["event_id"]] for r in rows if r["delivery_id"] in received}

    async def progress(self) -> Progress:
        prefix = f"dps-{self.load.run}-l-%"
        stored = await self.conn.fetch("SELECT event_id FROM events WHERE event_id LIKE $1", prefix)
        audited = await self.conn.fetch(
            "SELECT event_id, delivery_id FROM disclosures WHERE event_id LIKE $1 "
            "AND decision = 'delivered' AND recipient_org = $2",
            prefix,
            COORDINATOR,
        )
        return Progress(
            {r["event_id"] for r in stored},
            {r["event_id"]: r["delivery_id"] for r in audited},
            self.receiver.delivered_ids(),
        )

    async def caught_up(self, event_ids: set[str], timeout_s: float) -> float | None:
        """Seconds until every one of `event_ids` is stored, audited and delivered; None if not
        within `timeout_s`. A database that is down counts as not caught up yet."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                if len((await self.progress()).done(event_ids)) == len(event_ids):
                    return time.monotonic() - started
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._reconnect()
            await asyncio.sleep(0.5)
        return None

    async def _reconnect(self) -> None:
        try:
            if not self.conn.is_closed():
                await self.conn.close(timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.conn.terminate()
        try:
            self.conn = await asyncpg.connect(self.stack.settings.postgres_dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.5)

    def reordered(self) -> int:
        """Deliveries that reached the receiver (first time) after a later event of the same
        person had already arrived."""
        newest: dict[int, int] = {}
        seen: set[str] = set()
        late = 0
        for arrival in self.receiver.delivered():
            sent = self.load.accepted.get(arrival.event_id)
            if sent is None or arrival.delivery_id in seen:
                continue
            seen.add(arrival.delivery_id)
            if sent.seq < newest.get(sent.person, -1):
                late += 1
            newest[sent.person] = max(sent.seq, newest.get(sent.person, -1))
        return late

    async def close(self) -> None:
        await self.load.close()
        for service in self.services.values():
            service.stop()
        self.receiver.close()
        if not self.conn.is_closed():
            await self.conn.close()


Fault = Callable[[Pipeline], Awaitable[dict[str, Any] | None]]
# A scenario's own check once the pipeline has settled: (pipeline, accepted ids) -> figures.
After = Callable[[Pipeline, set[str]], Awaitable[dict[str, Any]]]


async def run_scenario(
    stack: TestStack,
    scenario: str,
    description: str,
    fault: Fault,
    *,
    config: FaultConfig | None = None,
    workers: Sequence[str] = ("router",),
    webhook_env: dict[str, str] | None = None,
    after: After | None = None,
    transport_errors_allowed: bool = False,
    results: Path = RESULTS_DIR,
) -> Figures:
    """Load, fault, recovery and the checks; writes the figures and returns them (the caller
    asserts `figures.problems()` is empty)."""
    config = config or FaultConfig.from_env()
    figures = Figures(scenario, description, config.seconds, config.rate, config.persons)
    figures.transport_errors_allowed = transport_errors_allowed
    pipeline = await Pipeline.start(stack, config, workers=workers, webhook_env=webhook_env)
    try:
        load = asyncio.create_task(pipeline.load.run_for(config.seconds))
        await asyncio.sleep(config.seconds / 5)
        figures.extra.update(await fault(pipeline) or {})
        fault_ended = time.monotonic()
        # Recovery: from the fault's end until everything accepted by then has gone through.
        before = set(pipeline.load.accepted)
        recovery = await pipeline.caught_up(before, config.settle_s + config.seconds)
        figures.recovery_s = None if recovery is None else round(recovery, 1)
        await load
        figures.extra["load_after_fault_s"] = round(time.monotonic() - fault_ended, 1)
        await _settle(pipeline, figures, config)
        if after is not None:
            figures.extra.update(await after(pipeline, set(pipeline.load.accepted)))
    finally:
        await pipeline.close()
    figures.write(results)
    return figures


async def _settle(pipeline: Pipeline, figures: Figures, config: FaultConfig) -> None:
    """Wait for the rest of the accepted events, then count what is missing or doubled."""
    pipeline.load.figures_into(figures)
    accepted = set(pipeline.load.accepted)
    await pipeline.caught_up(accepted, config.settle_s)
    await asyncio.sleep(2.0)  # a delivery sent twice arrives by now
    progress = await pipeline.progress()
    figures.stored = len(accepted & progress.stored)
    figures.audited = len(accepted & set(progress.audited))
    figures.received = len(
        {progress.audited[e] for e in accepted if e in progress.audited} & progress.received
    )
    figures.lost = len(accepted) - len(progress.done(accepted))
    figures.duplicated = pipeline.receiver.duplicated()
    figures.reordered = pipeline.reordered()
    figures.webhook_refusals = pipeline.receiver.refused()


async def blocking(call: Callable[[], Any]) -> Any:
    """A blocking stack operation (kill, restart, pg_ctl) off the event loop: the load goes on."""
    return await asyncio.to_thread(call)
