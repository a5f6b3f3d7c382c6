"""The adapters (issue 16): what a PLO, FHIR or HL7 v2 message costs, beside the same event sent
as carebus JSON, measured in this run.

Two measures. CPU per message in-process: reading, validating and mapping a message to carebus
events and building its answer, beside the gateway's check of the same event (the HTTP hop and
the gateway's own work come on top). Messages per second over HTTP on a private stack: each
adapter's route on the running `adapters` service, which hands the events to the gateway's
`POST /v1/events:batch`, beside the same kind of events posted as carebus JSON straight to the
gateway's `POST /v1/events`, over the same connections. Every message is distinct (its own
patient, message id and stay), so the gateway's idempotency answers no cached repeat; the same
messages sent once more measure the repeat.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from bench.cpu import _cpu_per_item
from bench.gateway import drive, post, post_bytes
from bench.harness import Bench, Row, end_offsets, percentiles, private_stack
from bench.replay import cpu_seconds
from carebus.adapters.auth import create_token
from carebus.adapters.directory import add_organisation
from carebus.domain.events import parse_event
from carebus.domain.identity import random_nin
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire import fhir, hl7v2, plo, topics
from carebus.wire.translation import Party, StaticDirectory, Translation
from carebus_dev.testing import ServiceProcess, TestStack

SECTION: Final = "adapters"
DATA: Final = PROJECT_ROOT / "tests" / "data"
SECRET: Final = b"bench-adapter-id-secret-bench-adapter-id-secret"
HOSPITAL: Final = Party("974749025", "dps", "59")
DPS: Final = Party("974705788", "dps", "101")
DIRECTORY: Final = StaticDirectory(
    (
        HOSPITAL,
        Party("939865942", "municipality", "99387", "0301"),
        Party("964338531", "municipality", None, "4601"),
        DPS,
    )
)
NOW: Final = datetime(2026, 12, 7, tzinfo=UTC)
WARMUP_MESSAGES: Final = 64
# Every message of a route comes from one organisation, and the gateway takes at most 32
# requests of one caller at once (CAREBUS_GATEWAY_MAX_IN_FLIGHT_PER_CALLER): with 32 connections
# a request sent as the previous answer leaves is shed (503). 16 keep the 2 cores busy.
CONNECTIONS: Final = 16
# A throughput run must not be held back by the per-organisation limit (1,000/s by default):
# every message here comes from one of two organisations.
UNLIMITED: Final = {"CAREBUS_RATE_LIMIT_PER_S": "1000000", "CAREBUS_RATE_LIMIT_BURST": "1000000"}


def run(bench: Bench) -> None:
    _cpu(bench)
    _throughput(bench)


# --- CPU per message, in-process ------------------------------------------------------------


def _cpu(bench: Bench) -> None:
    messages = max(500, bench.scale.router_events // 20)
    plo_body = (DATA / "plo" / "1_6" / "Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").read_bytes()
    admission = _plo(plo_body)["events"][0]
    per_json, _ = _cpu_per_item([admission] * messages, lambda event: parse_event(dict(event)))
    bench.add(
        Row(
            SECTION,
            "carebus JSON: the gateway's check of one admission",
            per_json * 1e6,
            "µs CPU",
            key="adapters.json",
            note=f"parse_event of the admission the PLO message maps to, {messages:,} times",
        )
    )
    _cpu_row(bench, "PLO (MsgHead 1.2, innlagt pasient)", messages, plo_body, _plo)
    fhir_body = (DATA / "fhir" / "encounter-in-progress.json").read_bytes()
    _cpu_row(bench, "FHIR R4 Encounter", messages, fhir_body, _fhir)
    hl7_body = (DATA / "hl7v2" / "adt_a01_v25.hl7").read_bytes()
    _cpu_row(bench, "HL7 v2.5 ADT^A01", messages, hl7_body, _hl7)


def _cpu_row(
    bench: Bench, label: str, messages: int, body: bytes, work: Callable[[bytes], object]
) -> None:
    per_message, _ = _cpu_per_item([body] * messages, work)
    bench.add(
        Row(
            SECTION,
            f"{label}: read, validate, map, answer",
            per_message * 1e6,
            "µs CPU",
            baseline="adapters.json",
            note=(
                f"{len(body):,}-byte message, {messages:,} times; a ceiling of "
                f"{1 / per_message:,.0f} messages/s per core before the gateway"
            ),
        )
    )


def _plo(body: bytes) -> dict[str, Any]:
    message = plo.read(body)
    translation = plo.translate(message, plo.sender_of(message, DIRECTORY), DIRECTORY, SECRET)
    plo.apprec(message, plo.Receipt.ok(), now=NOW)
    return {"events": translation.events}


def _hl7(body: bytes) -> dict[str, Any]:
    message = hl7v2.read(hl7v2.decode(body))
    translation = hl7v2.translate(message, HOSPITAL, DIRECTORY, SECRET)
    hl7v2.encode(hl7v2.acknowledgement_of(message, None, now=NOW))
    return {"events": translation.events}


def _fhir(body: bytes) -> dict[str, Any]:
    translation = fhir.translate_encounter(json.loads(body), HOSPITAL, DIRECTORY, SECRET)
    json.dumps(fhir.operation_outcome(None, information="accepted"))
    return {"events": translation.events}


# --- messages per second over HTTP, on the real stack ---------------------------------------


@dataclass(frozen=True)
class Route:
    """One adapter's HTTP route, and how its example message becomes the n-th distinct one."""

    name: str
    path: str
    content_type: str
    accepted: int  # the status of a message whose events the gateway took
    sender: Party
    example: bytes
    # What to replace in the example with the message's own values: its nin, ids and stay.
    distinct: Callable[[int], Mapping[bytes, bytes]]
    translate: Callable[[bytes, bytes], Translation]  # (body, id secret): what it maps to


EXAMPLE_NIN: Final = b"15076500565"


def _plo_distinct(index: int) -> Mapping[bytes, bytes]:
    # MsgId names the message (and its AppRec); the admission's id is the nin and the time.
    msg_id = f"{index:08x}-be0c-4000-8000-0000b0c0a001"
    return {b"b088a160-0698-11e8-b566-0800200c9a66": msg_id.encode()}


def _hl7_distinct(index: int) -> Mapping[bytes, bytes]:
    # MSH-10 (the control id the ACK answers) and PV1-19 (the visit: the admission's id).
    return {
        b"HB20261201-000001": f"BENCH{index:07d}".encode(),
        b"V2026-000451": f"VB{index:07d}".encode(),
    }


def _fhir_distinct(index: int) -> Mapping[bytes, bytes]:
    # Encounter.identifier and Encounter.id (the episode: the admission's id).
    return {b"2026-0417": f"bench-{index:07d}".encode()}


def _plo_translate(body: bytes, secret: bytes) -> Translation:
    message = plo.read(body)
    return plo.translate(message, plo.sender_of(message, DIRECTORY), DIRECTORY, secret)


def _hl7_translate(body: bytes, secret: bytes) -> Translation:
    return hl7v2.translate(hl7v2.read(hl7v2.decode(body)), DPS, DIRECTORY, secret)


def _fhir_translate(body: bytes, secret: bytes) -> Translation:
    return fhir.translate_encounter(json.loads(body), DPS, DIRECTORY, secret)


ROUTES: Final = (
    Route(
        "PLO",
        "/v1/adapters/plo",
        "application/xml",
        200,
        HOSPITAL,
        (DATA / "plo" / "1_6" / "Pasientlogistikk_Innlagt_pasient_v1-6_Ny.xml").read_bytes(),
        _plo_distinct,
        _plo_translate,
    ),
    Route(
        "HL7 v2",
        "/v1/adapters/hl7v2",
        "application/hl7-v2",
        200,
        DPS,
        (DATA / "hl7v2" / "adt_a01_v25.hl7").read_bytes(),
        _hl7_distinct,
        _hl7_translate,
    ),
    Route(
        "FHIR",
        "/fhir/Encounter",
        "application/fhir+json",
        201,
        DPS,
        (DATA / "fhir" / "encounter-in-progress.json").read_bytes(),
        _fhir_distinct,
        _fhir_translate,
    ),
)


class Messages:
    """Distinct messages: each has the next index and a patient no other message has."""

    def __init__(self, seed: int = 16) -> None:
        self._rng = random.Random(seed)
        self._nins: set[str] = set()
        self._index = 0

    def next(self, route: Route) -> bytes:
        nin = random_nin(self._rng)
        while nin in self._nins:
            nin = random_nin(self._rng)
        self._nins.add(nin)
        self._index += 1
        body = route.example
        for old, new in {EXAMPLE_NIN: nin.encode(), **route.distinct(self._index)}.items():
            if old not in body:
                raise RuntimeError(f"the {route.name} example no longer holds {old!r}")
            body = body.replace(old, new)
        return body

    def take(self, route: Route, count: int) -> list[bytes]:
        return [self.next(route) for _ in range(count)]


@dataclass(frozen=True)
class Run:
    """One timed pass of requests: how fast, how long each took, and the services' CPU."""

    requests: int
    elapsed_s: float
    latencies_s: list[float]
    cpu: Mapping[str, float]  # the share of a core each service used

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s

    def note(self, what: str) -> str:
        cuts = percentiles([s * 1000 for s in self.latencies_s], (50, 99))
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in self.cpu.items())
        return (
            f"{self.requests:,} {what}, {CONNECTIONS} connections; p50 {cuts[50]:,.1f} ms, "
            f"p99 {cuts[99]:,.1f} ms; CPU of a core: {cpu}"
        )


def _timed(
    host: str,
    port: int,
    requests: Sequence[bytes],
    expected: int,
    services: Mapping[str, ServiceProcess],
) -> Run:
    before = {name: cpu_seconds(process.pid) for name, process in services.items()}
    elapsed, latencies = asyncio.run(drive(host, port, requests, CONNECTIONS, expected=expected))
    cpu = {
        name: (cpu_seconds(process.pid) - before[name]) / elapsed
        for name, process in services.items()
    }
    return Run(len(requests), elapsed, latencies, cpu)


async def _register(dsn: str) -> dict[str, str]:
    """The directory's organisations registered, and a system token of each sender by org."""
    conn = await asyncpg.connect(dsn)
    try:
        for party in DIRECTORY.parties:
            await add_organisation(
                conn,
                agency=party.agency,
                org_id=party.org_id,
                name=f"bench {party.agency} {party.org_id}",
                her_id=party.her_id,
                municipality_number=party.municipality_number,
            )
        senders = {route.sender.org_id: route.sender for route in ROUTES}
        return {
            org_id: await create_token(conn, agency=sender.agency, org_id=org_id, role="system")
            for org_id, sender in senders.items()
        }
    finally:
        await conn.close()


def _throughput(bench: Bench) -> None:
    count = bench.scale.adapter_messages
    with private_stack() as stack:
        tokens = asyncio.run(_register(stack.settings.postgres_dsn))
        services = {
            "gateway": stack.start_service("gateway", env=UNLIMITED),
            "adapters": stack.start_service("adapters", env=UNLIMITED),
        }
        messages = Messages()
        published = sum(
            _measure_route(bench, stack, route, tokens, services, messages, count)
            for route in ROUTES
        )
        on_topic = end_offsets(stack, topics.EVENTS)
        if on_topic != published:
            raise RuntimeError(f"{on_topic} records on {topics.EVENTS}, expected {published}")


def _measure_route(
    bench: Bench,
    stack: TestStack,
    route: Route,
    tokens: Mapping[str, str],
    services: Mapping[str, ServiceProcess],
    messages: Messages,
    count: int,
) -> int:
    """The route's three rows (as JSON, over the adapter, again); the events it published."""
    settings = stack.settings
    host, token = settings.http_host, tokens[route.sender.org_id]
    gateway = f"{host}:{settings.gateway_port}"
    adapters = f"{host}:{settings.adapters_port}"
    secret = settings.adapter_id_secret.get_secret_value().encode()

    def as_json(bodies: Sequence[bytes]) -> Iterator[bytes]:
        for body in bodies:
            [event] = route.translate(body, secret).events
            yield post(gateway, "/v1/events", token, event)

    def over_adapter(bodies: Sequence[bytes]) -> list[bytes]:
        return [post_bytes(adapters, route.path, token, b, route.content_type) for b in bodies]

    warmup = list(as_json(messages.take(route, WARMUP_MESSAGES)))
    asyncio.run(drive(host, settings.gateway_port, warmup, CONNECTIONS))
    requests = list(as_json(messages.take(route, count)))
    json_run = _timed(host, settings.gateway_port, requests, 202, services)
    key = f"adapters.http.{route.name.lower().replace(' ', '')}"
    bench.add(
        Row(
            SECTION,
            f"{route.name} events as carebus JSON (POST /v1/events)",
            json_run.rate,
            "events/s",
            key=f"{key}.json",
            note=json_run.note(f"admissions mapped from {route.name} messages, one per request"),
        )
    )

    warmup = over_adapter(messages.take(route, WARMUP_MESSAGES))
    asyncio.run(drive(host, settings.adapters_port, warmup, CONNECTIONS, route.accepted))
    requests = over_adapter(messages.take(route, count))
    first = _timed(host, settings.adapters_port, requests, route.accepted, services)
    bench.add(
        Row(
            SECTION,
            f"{route.name} over HTTP (POST {route.path})",
            first.rate,
            "messages/s",
            baseline=f"{key}.json",
            key=key,
            note=first.note("distinct messages, each one admission to the gateway's batch route"),
        )
    )
    again = _timed(host, settings.adapters_port, requests, route.accepted, services)
    bench.add(
        Row(
            SECTION,
            f"{route.name} over HTTP, the same messages again",
            again.rate,
            "messages/s",
            baseline=key,
            note=again.note("repeats: the gateway answers each as before and publishes nothing"),
        )
    )
    return 2 * (WARMUP_MESSAGES + count)
