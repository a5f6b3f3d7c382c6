"""Gateway ingest: single events and batches of 1,000 over HTTP, until the broker acknowledged them.

The gateway runs as the local stack runs it: one uvicorn process. Every request is built
(JSON body, headers) before the clock starts and sent over keep-alive HTTP/1.1 connections by a
minimal client in this process, so the figures are the gateway's (parse, ledger row, publish
with acks=all, 202), not a client library's. A request counts only when it answered 202.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import Final

from bench.harness import Bench, Goal, Row, end_offsets, percentiles, private_stack
from bench.replay import cpu_seconds
from bench.workload import Workload
from carebus.wire import topics
from carebus_dev.stack.devdata import ensure_dev_tokens

SECTION: Final = "gateway"
SINGLE_CONNECTIONS: Final = 32
BATCH_SIZE: Final = 1_000
BATCH_CONNECTIONS: Final = 4
PERSONS: Final = 10_000
WARMUP_REQUESTS: Final = 64
# One caller (the DPS's token) stands in for the many systems whose load the gateway takes, over
# SINGLE_CONNECTIONS connections; the gateway's share per caller (32 in flight by default,
# CAREBUS_GATEWAY_MAX_IN_FLIGHT_PER_CALLER) would shed the request each connection sends as its
# previous answer leaves (503), which is fairness between agencies, not what is measured here.
ONE_CALLER_FOR_MANY: Final = {
    "CAREBUS_GATEWAY_MAX_IN_FLIGHT_PER_CALLER": str(2 * SINGLE_CONNECTIONS)
}


class Connection:
    """One keep-alive HTTP/1.1 connection that sends ready-made requests and reads the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of the answer to `request` (carebus always sends Content-Length)."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("an answer without Content-Length")
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def post(host: str, path: str, token: str, body: object) -> bytes:
    """The bytes of one POST with a JSON body and a bearer token."""
    return post_bytes(host, path, token, json.dumps(body, separators=(",", ":")).encode())


def post_bytes(
    host: str, path: str, token: str, content: bytes, content_type: str = "application/json"
) -> bytes:
    """The bytes of one POST of `content` as `content_type` with a bearer token."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


async def drive(
    host: str, port: int, requests: Sequence[bytes], connections: int, expected: int = 202
) -> tuple[float, list[float]]:
    """Send `requests` over `connections` connections, each one request at a time.

    Returns the seconds from the first request to the last answer and each request's latency.
    Raises RuntimeError on any answer but `expected`.
    """
    pending = iter(requests)
    latencies: list[float] = []
    opened = [await Connection.open(host, port) for _ in range(connections)]

    async def client(connection: Connection) -> None:
        for request in pending:
            sent = time.perf_counter()
            status, body = await connection.send(request)
            latencies.append(time.perf_counter() - sent)
            if status != expected:
                raise RuntimeError(f"port {port} answered {status}: {body[:300]!r}")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(connection) for connection in opened))
    finally:
        elapsed = time.perf_counter() - started
        for connection in opened:
            await connection.close()
    return elapsed, latencies


def batches(workload: Workload, start: int, count: int) -> Iterator[tuple[str, list[object]]]:
    """`count` batches of BATCH_SIZE events: (agency, events); an agency's system posts its own."""
    waiting: dict[str, list[object]] = {}
    index = start
    made = 0
    while made < count:
        event = workload.event(index)
        index += 1
        source = event["source"]
        assert isinstance(source, dict)
        batch = waiting.setdefault(source["agency"], [])
        batch.append(event)
        if len(batch) == BATCH_SIZE:
            yield source["agency"], waiting.pop(source["agency"])
            made += 1


def run(bench: Bench) -> None:
    scale = bench.scale
    with private_stack() as stack:
        tokens = ensure_dev_tokens(stack.settings)
        gateway = stack.start_service("gateway", env=ONE_CALLER_FOR_MANY)
        settings = stack.settings
        host, port = settings.http_host, settings.gateway_port
        address = f"{host}:{port}"
        workload = Workload(settings.subject_key_secret.get_secret_value(), PERSONS)

        def single(index: int) -> bytes:
            event = workload.event(index)
            source = event["source"]
            assert isinstance(source, dict)
            return post(address, "/v1/events", tokens[source["agency"]], event)

        warmup = [single(i) for i in range(WARMUP_REQUESTS)]
        asyncio.run(drive(host, port, warmup, SINGLE_CONNECTIONS))

        start = WARMUP_REQUESTS
        requests = [single(start + i) for i in range(scale.gateway_single)]
        cpu_s = cpu_seconds(gateway.pid)
        elapsed, latencies = asyncio.run(drive(host, port, requests, SINGLE_CONNECTIONS))
        busy = (cpu_seconds(gateway.pid) - cpu_s) / elapsed
        cuts = percentiles([s * 1000 for s in latencies], (50, 99))
        how = f"{SINGLE_CONNECTIONS} connections, 1 uvicorn process (as `carebus up`)"
        bench.add(
            Row(
                SECTION,
                "single events (POST /v1/events)",
                len(requests) / elapsed,
                "events/s",
                baseline="kafka.produce",
                note=f"{len(requests):,} requests, {how}; gateway CPU {busy:.0%} of a core",
            )
        )
        bench.add(
            Row(
                SECTION,
                "single event latency p50",
                cuts[50],
                "ms",
                baseline="kafka.latency_p50_ms",
                note=f"request sent → 202 (after acks=all), {how}",
            )
        )
        bench.add(
            Row(
                SECTION,
                "single event latency p99",
                cuts[99],
                "ms",
                baseline="kafka.latency_p99_ms",
                note=f"request sent → 202 (after acks=all), {how}",
            )
        )

        start += len(requests)
        bodies = [
            post(address, "/v1/events:batch", tokens[agency], {"events": events})
            for agency, events in batches(workload, start, scale.gateway_batches)
        ]
        cpu_s = cpu_seconds(gateway.pid)
        elapsed, latencies = asyncio.run(drive(host, port, bodies, BATCH_CONNECTIONS))
        busy = (cpu_seconds(gateway.pid) - cpu_s) / elapsed
        events = len(bodies) * BATCH_SIZE
        bench.add(
            Row(
                SECTION,
                f"batches of {BATCH_SIZE:,} (POST /v1/events:batch)",
                events / elapsed,
                "events/s",
                baseline="kafka.produce",
                goal=Goal(">=", 20_000),
                note=(
                    f"{len(bodies)} batches, {BATCH_CONNECTIONS} connections, 1 uvicorn process; "
                    f"batch p50 {percentiles(latencies, (50,))[50] * 1000:,.0f} ms; "
                    f"gateway CPU {busy:.0%} of a core"
                ),
            )
        )
        published = end_offsets(stack, topics.EVENTS)
        expected = WARMUP_REQUESTS + len(requests) + events
        if published != expected:
            raise RuntimeError(f"{published} records on {topics.EVENTS}, expected {expected}")
