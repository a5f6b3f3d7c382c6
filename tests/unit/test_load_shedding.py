"""Load shedding and resource limits (issue 15, item 6): the pure bookkeeping, the gateway's
door, the 503 every HTTP service answers for an unavailable dependency, the bounded pool and
producer settings, and the SLA engine's per-person caps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from carebus.adapters.db import BoundedPool, DatabaseUnavailableError, create_pool, pool_limits
from carebus.adapters.http import create_app
from carebus.adapters.kafka import producer_config
from carebus.adapters.publisher import BrokerUnavailableError
from carebus.domain.obligations import SlaState
from carebus.domain.records import Obligation
from carebus.domain.sla_limits import PersonCaps, exceeded, forget_settled, sizes
from carebus.runtime import metrics
from carebus.runtime.config import Settings
from carebus_dev.testing import free_ports
from services.gateway.shedding import InFlight, ShedLoad
from services.inbox.live import HEARD_QUEUE, RESYNC_FRAME, AlertFeed
from tests.unit.test_sla_engine import KEY, Engine, encoded

# --- the in-flight bookkeeping -----------------------------------------------------------------


def test_requests_beyond_the_limit_are_refused_and_released_ones_make_room() -> None:
    """At the request limit the next one is refused naming `requests`; a release admits again."""
    in_flight = InFlight(max_requests=2, max_bytes=1000)
    assert in_flight.admit(10) is None
    assert in_flight.admit(10) is None
    assert in_flight.admit(10) == "requests"
    in_flight.release(10)
    assert in_flight.admit(10) is None
    assert (in_flight.requests, in_flight.bytes) == (2, 20)


def test_declared_bytes_beyond_the_budget_are_refused_but_a_lone_large_request_is_served() -> None:
    """The byte budget bounds the sum; one request larger than it alone is still admitted."""
    in_flight = InFlight(max_requests=10, max_bytes=100)
    assert in_flight.admit(500) is None  # alone: its route's body limit bounds it
    assert in_flight.admit(1) == "bytes"
    in_flight.release(500)
    assert in_flight.admit(60) is None
    assert in_flight.admit(60) == "bytes"
    assert in_flight.admit(40) is None


def test_one_credential_holds_at_most_its_share_and_others_still_get_in() -> None:
    """A caller at its share is refused naming `caller`; another credential is admitted; a
    release gives the caller its slot back, and nothing of a gone caller is kept."""
    in_flight = InFlight(max_requests=8, max_bytes=10**6, max_per_caller=2)
    assert [in_flight.admit(1, "a") for _ in range(3)] == [None, None, "caller"]
    assert in_flight.admit(1, "b") is None
    in_flight.release(1, "a")
    assert in_flight.admit(1, "a") is None
    for caller in ("a", "a", "b"):
        in_flight.release(1, caller)
    assert (in_flight.requests, in_flight.callers) == (0, {})


# --- the gateway's door ------------------------------------------------------------------------


class _Slow:
    """An app that holds each request until released, and records whether it read the body."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.two_entered = asyncio.Event()
        self.entered = 0
        self.bodies_read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        if self.entered == 2:
            self.two_entered.set()
        await receive()
        self.bodies_read += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_the_door_sheds_with_503_and_retry_after_before_reading_the_body() -> None:
    """Past the limit the gateway answers 503 + Retry-After at once, its body unread, counted."""
    inner = _Slow()
    door = ShedLoad(
        inner,
        paths={"/v1/events"},
        in_flight=InFlight(max_requests=2, max_bytes=10**6),
        unknown_length=1000,
        retry_after_s=7,
    )
    shed_before = metrics.GATEWAY_SHED.labels("requests")._value.get()
    transport = httpx.ASGITransport(app=door)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        held = [asyncio.create_task(client.post("/v1/events", content=b"{}")) for _ in range(2)]
        await asyncio.wait_for(inner.two_entered.wait(), 2.0)
        shed = await asyncio.wait_for(client.post("/v1/events", content=b"x" * 500), 2.0)
        other = asyncio.create_task(client.get("/healthz"))  # other paths pass untouched
        inner.release.set()
        answers = await asyncio.gather(*held)
        await other

    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "7"
    assert shed.json()["error"]["code"] == "unavailable"
    assert inner.bodies_read == 3  # the two held and the GET, never the shed one
    assert [a.status_code for a in answers] == [202, 202]
    assert metrics.GATEWAY_SHED.labels("requests")._value.get() == shed_before + 1


# --- 503 for an unavailable dependency, in every HTTP service ----------------------------------


def _failing_service(error: Exception) -> FastAPI:
    app = create_app("unavailable-test", title="t", settings=Settings(unavailable_retry_after_s=3))

    @app.get("/v1/thing")
    async def thing() -> JSONResponse:
        raise error

    return app


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnavailableError("no database connection within 3.0 s"),
        BrokerUnavailableError("the broker did not acknowledge in time"),
        TimeoutError(),
        asyncpg.PostgresConnectionError("connection lost"),
        asyncpg.InterfaceError("connection closed"),
        ConnectionRefusedError(),
        asyncpg.exceptions.AdminShutdownError("terminating connection (57P01)"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up (57P03)"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection closed mid-operation"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients already"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_a_dependency_that_does_not_answer_is_a_503_with_retry_after(
    error: Exception,
) -> None:
    """Any service: a pool not acquired, a statement unanswered, a broker away → 503, not 500."""
    transport = httpx.ASGITransport(app=_failing_service(error), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/v1/thing")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "unavailable"


async def test_a_bug_is_still_a_500() -> None:
    """Only outages are 503: a programming error stays a 500."""
    transport = httpx.ASGITransport(app=_failing_service(KeyError("x")), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/v1/thing")
    assert response.status_code == 500


# --- the pool and producer limits --------------------------------------------------------------


def test_every_pool_gets_the_settings_limits() -> None:
    """The size is capped and every time-out comes from the settings."""
    settings = Settings(
        postgres_pool_max_size=8,
        postgres_connect_timeout_s=1.5,
        postgres_acquire_timeout_s=2.5,
        postgres_command_timeout_s=4.0,
        postgres_statement_timeout_s=20.0,
    )
    limits = pool_limits(settings, max_size=20)
    assert limits["max_size"] == 8
    assert limits["timeout"] == 1.5
    assert limits["acquire_timeout_s"] == 2.5
    assert limits["command_timeout"] == 4.0
    assert limits["server_settings"]["statement_timeout"] == "20000"
    assert limits["server_settings"]["idle_in_transaction_session_timeout"] == "40000"
    assert pool_limits(settings, max_size=2)["max_size"] == 2


async def test_a_database_that_does_not_answer_is_unavailable_within_the_time_out() -> None:
    """A server that accepts TCP but never speaks: the pool gives up, typed, within seconds."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # never answers the startup message

    port = free_ports(1)[0]
    server = await asyncio.start_server(accept, "127.0.0.1", port)
    settings = Settings(
        postgres_dsn=f"postgresql://carebus@127.0.0.1:{port}/carebus",
        postgres_connect_timeout_s=0.3,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(DatabaseUnavailableError):
            await create_pool(settings, min_size=1, max_size=2)
    finally:
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
    assert loop.time() - started < 3.0


async def test_the_pool_waits_its_acquisition_time_out_by_default() -> None:
    """`acquire()` without a time-out uses the settings' one (the acquisition context keeps it)."""
    # async: asyncpg's pool takes the running loop (a sync test has none once an earlier test
    # has closed the default one, as in the whole suite's order).
    pool = BoundedPool(
        "postgresql://x@127.0.0.1:1/x",
        min_size=0,
        max_size=1,
        max_queries=1,
        max_inactive_connection_lifetime=0.0,
        loop=None,
        connection_class=asyncpg.connection.Connection,
        record_class=asyncpg.Record,
        acquire_timeout_s=1.25,
    )
    assert pool.acquire().timeout == 1.25
    assert pool.acquire(timeout=0.5).timeout == 0.5


def test_the_producer_queue_is_bounded() -> None:
    """librdkafka's local queue has a bound in messages and bytes, and records a deadline."""
    settings = Settings(
        kafka_security_protocol="PLAINTEXT",
        producer_queue_max_messages=1234,
        producer_queue_max_kbytes=4096,
        produce_timeout_s=3.0,
    )
    config = producer_config(settings, "test")
    assert config["queue.buffering.max.messages"] == 1234
    assert config["queue.buffering.max.kbytes"] == 4096
    assert config["message.timeout.ms"] == 3000


# --- the SLA engine's per-person caps ----------------------------------------------------------


def _obligation(status: str, at: str | None = None) -> Obligation:
    obligation: Obligation = {
        "rule_id": "r",
        "identity": "i",
        "trigger": {},
        "deadline": None,
        "status": status,
        "breached_at": at if status == "breached" else None,
        "alerts": [],
    }
    if status == "closed" and at is not None:
        obligation["closed_at"] = at
    return obligation


def test_a_record_that_grows_a_list_past_its_cap_is_named() -> None:
    """Growth past a cap names the cap; a state already past it may stay or shrink."""
    caps = PersonCaps(early=2)
    state = SlaState(early=[{"event_id": "a"}, {"event_id": "b"}])
    before = sizes(state)
    state.early.append({"event_id": "c"})
    assert exceeded(before, sizes(state), caps) == "early"
    assert exceeded(sizes(state), sizes(state), caps) is None  # no growth, no refusal


def test_open_obligations_count_against_their_cap_and_settled_ones_do_not() -> None:
    """Open obligations are capped; closed and breached ones are not counted there."""
    caps = PersonCaps(open_obligations=1)
    state = SlaState(obligations={"x": _obligation("closed", "2026-01-01T00:00:00Z")})
    before = sizes(state)
    state.obligations["y"] = _obligation("open")
    assert exceeded(before, sizes(state), caps) is None
    state.obligations["z"] = _obligation("open")
    assert exceeded(before, sizes(state), caps) == "open_obligations"


def test_the_oldest_settled_obligations_beyond_the_cap_are_forgotten() -> None:
    """Settled obligations past the cap go oldest first; open ones are never touched."""
    state = SlaState(
        obligations={
            "old": _obligation("closed", "2026-01-01T00:00:00Z"),
            "mid": _obligation("breached", "2026-02-01T00:00:00Z"),
            "new": _obligation("closed", "2026-03-01T00:00:00Z"),
            "open": _obligation("open"),
        }
    )
    assert forget_settled(state, PersonCaps(settled_obligations=1)) == 2
    assert set(state.obligations) == {"new", "open"}
    assert forget_settled(state, PersonCaps(settled_obligations=1)) == 0


async def test_the_sla_engine_dead_letters_a_record_past_a_cap_and_keeps_the_rest() -> None:
    """Beyond the open-obligation cap the record is dead-lettered naming the cap, nothing else
    is lost: the records within the cap are applied and the offsets move past all of them."""
    world = Engine()
    world.engine._caps = PersonCaps(open_obligations=2)
    triggers = [encoded("discharge_ready") for _ in range(3)]
    await world.feed(*(world.message(value, KEY.encode()) for value in triggers))

    [letter] = world.broker.letters()
    assert letter["detail"] == "sla person cap exceeded: open_obligations"
    assert letter["source_offset"] == 3
    assert len(world.store.committed.deadlines[KEY]) == 2
    assert world.store.committed.offsets == {("care.events.v1", 0): 3}


# --- the inbox's live feed ---------------------------------------------------------------------


def test_the_live_feed_resyncs_every_stream_instead_of_growing_without_end() -> None:
    """Alert ids heard past the queue's bound are dropped and every stream told to resync."""

    async def load(_ids: Sequence[str]) -> list[dict[str, Any]]:
        return []

    feed = AlertFeed("postgresql://unused/x", load)
    stream = feed.subscribe(caller=None)  # type: ignore[arg-type]
    for index in range(HEARD_QUEUE + 1):
        feed._heard_change(None, 0, "alerts", f"alert-{index}")
    assert feed._heard.qsize() == 0
    assert stream.frames.get_nowait() == RESYNC_FRAME
