"""The gateway while a dependency is frozen or it is at its limit (issue 15, item 6): 503 with
Retry-After within seconds, never 500 and never a hang; after the dependency is back, 202 again,
every 202 in the event store and a retry of every 503 with the same event_id accepted once.

A private stack: freezing (SIGSTOP) the session's shared broker or database would stall every
other test. Each freeze is undone in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, ensure_dev_tokens
from carebus_dev.stack.process import running
from carebus_dev.testing import TestStack, free_ports

pytestmark = pytest.mark.integration

# What "within seconds" means here: the database's command time-out (5 s by default) or the
# broker's produce time-out (5 s in a TestStack) plus the request's own work, with room for a
# loaded 2-core machine; a hang would be the test's 300 s.
ANSWER_WITHIN_S = 15.0
BACK_WITHIN_S = 90.0
STORE_WITHIN_S = 90.0
DPS = DEV_ORGANISATIONS["dps"]
FLOOD = range(4, 304)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def private() -> Iterator[TestStack]:
    with TestStack() as stack:
        ensure_dev_tokens(stack.settings)  # the organisations the events name
        stack.start_service("gateway")
        stack.start_service("event_store")
        yield stack


@pytest.fixture(scope="module")
async def conn(private: TestStack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(private.settings.postgres_dsn)
    yield connection
    await connection.close()


@pytest.fixture(scope="module")
async def token(conn: asyncpg.Connection) -> str:
    return await create_token(conn, agency="dps", org_id=DPS, role="system")


@pytest.fixture
async def gateway(private: TestStack) -> AsyncIterator[httpx.AsyncClient]:
    settings = private.settings
    async with httpx.AsyncClient(
        base_url=settings.service_url(settings.gateway_port), timeout=60
    ) as client:
        yield client


def _event(index: int, tag: str) -> dict[str, Any]:
    return {
        # The clock in groups of three digits: a run of 11 or more can hold a valid nin, which
        # the gateway refuses in an id (422) — once in a while, in a fresh clone's make test.
        "event_id": f"dps-shed-{tag}-{index}-{time.monotonic_ns():_}".replace("_", "."),
        "event_type": "admission",
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "dps", "org_id": DPS, "system": "DIPS"},
        "subject": {"nin": random_nin(random.Random(index))},
        "payload": {
            "reason": "overdose",
            "admission_kind": "voluntary",
            "housing_status": "homeless",
            "needs_municipal_services": True,
            "home_municipality_org": DEV_ORGANISATIONS["municipality"],
        },
    }


def _postgres_pids(stack: TestStack) -> list[int]:
    """The postmaster and every process it started (the backends that hold the connections)."""
    postmaster = stack.local.postgres.postmaster_pid()
    assert postmaster is not None, "the private PostgreSQL is not running"
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


def _kafka_pids(stack: TestStack) -> list[int]:
    record = running(stack.local.kafka.pid_path)
    assert record is not None, "the private broker is not running"
    return [record.pid]


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP `pids` for the block; SIGCONT always, whatever the block raised."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def _post(
    client: httpx.AsyncClient, event: dict[str, Any], token: str
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.post(
        "/v1/events", json=event, headers={"Authorization": f"Bearer {token}"}
    )
    return response, time.monotonic() - started


def _assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "unavailable"
    assert elapsed < ANSWER_WITHIN_S, f"503 only after {elapsed:.1f} s"


async def _accepted_again(client: httpx.AsyncClient, token: str, tag: str) -> dict[str, Any]:
    """Post fresh events until one is answered 202 again; that event."""
    deadline = time.monotonic() + BACK_WITHIN_S
    index = 0
    while True:
        index += 1
        event = _event(index, f"{tag}-back")
        response, _ = await _post(client, event, token)
        assert response.status_code in (202, 503), response.text
        if response.status_code == 202:
            return event
        assert time.monotonic() < deadline, "the gateway did not accept events again"
        await asyncio.sleep(1.0)


async def _all_stored(conn: asyncpg.Connection, event_ids: set[str]) -> None:
    deadline = time.monotonic() + STORE_WITHIN_S
    while True:
        rows = await conn.fetch(
            "SELECT event_id, count(*) AS n FROM events WHERE event_id = ANY($1::text[])"
            " GROUP BY event_id",
            sorted(event_ids),
        )
        assert all(row["n"] == 1 for row in rows)
        missing = event_ids - {row["event_id"] for row in rows}
        if not missing:
            return
        assert time.monotonic() < deadline, f"answered 202, not in the event store: {missing}"
        await asyncio.sleep(0.5)


async def _ledger_count(conn: asyncpg.Connection, event_ids: set[str]) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM accepted_events WHERE source_org = $1"
            " AND event_id = ANY($2::text[])",
            DPS,
            sorted(event_ids),
        )
    )


async def _freeze_and_recover(
    stack: TestStack,
    gateway: httpx.AsyncClient,
    conn: asyncpg.Connection,
    token: str,
    pids: list[int],
    tag: str,
    *,
    fresh_token: str | None = None,
) -> list[float]:
    """Freeze `pids` and post events; every answer a 503 in time. Then thaw: 202 again, the
    503s retried with the same ids are accepted, and every 202 is in the event store once."""
    warm = _event(0, f"{tag}-warm")
    response, _ = await _post(gateway, warm, token)
    assert response.status_code == 202, response.text
    accepted = {warm["event_id"]}
    refused: list[dict[str, Any]] = []
    timings: list[float] = []
    with frozen(pids):
        # Several at once, as clients would: none may wait past the bound.
        events = [_event(index, tag) for index in range(1, 5)]
        answers = await asyncio.gather(*(_post(gateway, e, token) for e in events))
        for event, (response, elapsed) in zip(events, answers, strict=True):
            _assert_unavailable(response, elapsed)
            refused.append(event)
            timings.append(elapsed)
        if fresh_token is not None:  # never looked up before: the look-up meets the freeze
            response, elapsed = await _post(gateway, _event(9, tag), fresh_token)
            _assert_unavailable(response, elapsed)
            timings.append(elapsed)
    accepted.add((await _accepted_again(gateway, token, tag))["event_id"])
    assert await _ledger_count(conn, {e["event_id"] for e in refused}) == 0  # no half-accepted
    for event in refused:  # the client's retry, same event_id, same content
        response, _ = await _post(gateway, event, token)
        assert response.status_code == 202, response.text
        accepted.add(event["event_id"])
        again, _ = await _post(gateway, event, token)  # and once more: still one event
        assert again.status_code == 202, again.text
    await _all_stored(conn, accepted)
    return timings


async def test_a_frozen_database_is_a_503_within_seconds_and_then_202_again(
    private: TestStack, gateway: httpx.AsyncClient, conn: asyncpg.Connection, token: str
) -> None:
    """PostgreSQL stopped (SIGSTOP): ingest and a token look-up answer 503 + Retry-After within
    seconds; after SIGCONT events are accepted again and every 202 is in the event store."""
    fresh = await create_token(conn, agency="dps", org_id=DPS, role="system")
    timings = await _freeze_and_recover(
        private, gateway, conn, token, _postgres_pids(private), "pg", fresh_token=fresh
    )
    print(f"frozen database: 503 after {min(timings):.2f}-{max(timings):.2f} s")


async def test_a_frozen_broker_is_a_503_within_seconds_and_then_202_again(
    private: TestStack, gateway: httpx.AsyncClient, conn: asyncpg.Connection, token: str
) -> None:
    """The broker stopped (SIGSTOP the Kafka JVM): 503 + Retry-After within seconds, nothing of
    it recorded as accepted; after SIGCONT 202 again and every 202 in the event store."""
    timings = await _freeze_and_recover(
        private, gateway, conn, token, _kafka_pids(private), "kafka"
    )
    print(f"frozen broker: 503 after {min(timings):.2f}-{max(timings):.2f} s")


async def test_requests_beyond_the_in_flight_limit_are_shed_at_once(
    private: TestStack, conn: asyncpg.Connection, token: str
) -> None:
    """A gateway with room for 2 requests: while 2 bodies are still arriving, a third request is
    answered 503 + Retry-After at once, and the 2 are then accepted."""
    port = free_ports(1)[0]
    second = private.start_service(
        "gateway", name="gateway_small", port=port, env={"CAREBUS_GATEWAY_MAX_IN_FLIGHT": "2"}
    )
    release = asyncio.Event()
    try:
        async with httpx.AsyncClient(
            base_url=private.settings.service_url(port), timeout=60
        ) as client:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            slow = [_event(index, "slow") for index in range(2)]

            async def trickle(event: dict[str, Any]) -> AsyncIterator[bytes]:
                body = httpx.Request("POST", "/", json=event).content
                yield body[:10]
                await release.wait()
                yield body[10:]

            held = [
                asyncio.create_task(client.post("/v1/events", content=trickle(e), headers=headers))
                for e in slow
            ]
            await asyncio.sleep(1.0)  # both are in: their first bytes are sent
            shed, elapsed = await _post(client, _event(3, "shed"), token)
            # A flood meanwhile: each shed at the door, so the process does not grow with it.
            rss_before = _rss_kib(second.pid)
            flood = await asyncio.gather(*(_post(client, _event(n, "flood"), token) for n in FLOOD))
            rss_after = _rss_kib(second.pid)
            release.set()
            answers = await asyncio.gather(*held)
            metrics_text = (await client.get("/metrics")).text
    finally:
        release.set()
        second.stop()
    _assert_unavailable(shed, elapsed)
    assert elapsed < 2.0, f"shedding took {elapsed:.2f} s"
    assert {response.status_code for response, _ in flood} == {503}
    slowest = max(took for _, took in flood)
    print(
        f"in-flight limit: shed in {elapsed * 1000:.0f} ms; {len(FLOOD)} concurrent requests shed,"
        f" slowest {slowest * 1000:.0f} ms; RSS {rss_before} -> {rss_after} KiB"
    )
    assert rss_after - rss_before < 64 * 1024, "the gateway grew by more than 64 MiB"
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert f'carebus_gateway_shed_total{{limit="requests"}} {1.0 + len(FLOOD)}' in metrics_text
    await _all_stored(conn, {e["event_id"] for e in slow})
