"""The gateway through its HTTP contract, against the real broker and database."""

from __future__ import annotations

import asyncio
import copy
import random
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from carebus.adapters.auth import create_token
from carebus.adapters.kafka import consumer_config
from carebus.domain.events import rfc3339
from carebus.domain.identity import random_nin, subject_key, validate_nin
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import TestStack, free_ports, unsealed

pytestmark = pytest.mark.integration

DPS_ORG = "974705788"
NAV_ORG = "889640782"
MUNICIPALITY_ORG = "940493021"


@pytest.fixture(scope="module")
def gateway(stack: TestStack) -> Iterator[str]:
    service = stack.start_service("gateway")
    yield stack.settings.service_url(stack.settings.gateway_port)
    service.stop()


@pytest.fixture(scope="module")
async def tokens(stack: TestStack) -> dict[str, str]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        return {
            "dps": await create_token(conn, agency="dps", org_id=DPS_ORG, role="system"),
            "nav": await create_token(conn, agency="nav", org_id=NAV_ORG, role="system"),
            "coordinator": await create_token(
                conn, agency="municipality", org_id=MUNICIPALITY_ORG, role="coordinator"
            ),
        }
    finally:
        await conn.close()


def admission(nin: str | None = None, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"dps-{DPS_ORG}-{uuid.uuid4().hex[:12]}",
        "event_type": "admission",
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": "dps", "org_id": DPS_ORG, "system": "DIPS"},
        "subject": {"nin": nin or random_nin(random.Random())},
        "payload": {
            "reason": "overdose",
            "admission_kind": "voluntary",
            "housing_status": "homeless",
            "needs_municipal_services": True,
            "home_municipality_org": MUNICIPALITY_ORG,
        },
    }
    event.update(changes)
    return event


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def records_on_events_topic(stack: TestStack, event_id: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record on care.events.v1 carrying `event_id`, read from the start to the end."""
    consumer = Consumer(consumer_config(stack.settings, f"test-{uuid.uuid4().hex}"))
    try:
        metadata = consumer.list_topics(topics.EVENTS, timeout=10)
        partitions = [
            TopicPartition(topics.EVENTS, p, 0) for p in metadata.topics[topics.EVENTS].partitions
        ]
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions
        }
        consumer.assign(partitions)
        found: list[tuple[bytes, dict[str, Any]]] = []
        done: set[int] = {p for p, end in ends.items() if end == 0}
        codec = Codec.default()
        while len(done) < len(partitions):
            message = consumer.poll(5)
            assert message is not None, "the events topic stopped before its end offsets"
            assert message.error() is None
            partition, offset = int(message.partition() or 0), int(message.offset() or 0)
            if offset + 1 >= ends[partition]:
                done.add(partition)
            headers = dict(message.headers() or [])
            if headers.get("carebus-event-id") == event_id.encode():
                found.append((message.key() or b"", codec.decode(message.value() or b"").record))
        return found
    finally:
        consumer.close()


async def test_valid_event_is_accepted_keyed_and_published(
    stack: TestStack, gateway: str, tokens: dict[str, str]
) -> None:
    """A valid event gets 202 with its subject key only after the broker has it, keyed by it."""
    event = admission()
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
    assert response.status_code == 202, response.text
    body = response.json()
    secret = stack.settings.subject_key_secret.get_secret_value()
    assert body == {
        "event_id": event["event_id"],
        "subject_key": subject_key(event["subject"]["nin"], secret),
    }
    [(key, record)] = records_on_events_topic(stack, event["event_id"])
    assert key == body["subject_key"].encode()
    # Sealed under the person's data key (docs/retention.md, "Erasure"), never in clear.
    sealed = record["subject"]["nin"]
    assert sealed.startswith("sealed:v1:")
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        opened = await unsealed(conn, stack.settings, body["subject_key"], "subject.nin", sealed)
    finally:
        await conn.close()
    assert opened == event["subject"]["nin"]
    assert record["occurred_at"] == datetime(2026, 11, 23, 7, 15, tzinfo=UTC)
    assert record["payload"]["reason"] == "overdose"


async def test_wrong_check_digit_is_422_naming_subject_nin(
    gateway: str, tokens: dict[str, str]
) -> None:
    """A nin with a wrong check digit is refused, the error names the field and not the number."""
    nin = random_nin(random.Random(7))
    wrong = nin[:-1] + str((int(nin[-1]) + 1) % 10)
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/v1/events", json=admission(wrong), headers=auth(tokens["dps"])
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"]
    assert error["message"]
    assert [d["field"] for d in error["details"]] == ["subject.nin"]
    assert wrong not in response.text


async def test_invalid_payload_names_every_problem(gateway: str, tokens: dict[str, str]) -> None:
    """Every problem of an event is reported at once, each with its field path."""
    event = admission()
    event["event_type"] = "admission"
    event["payload"] = {**event["payload"], "reason": "bored", "needs_municipal_services": "yes"}
    del event["payload"]["housing_status"]
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert {
        "payload.reason",
        "payload.needs_municipal_services",
        "payload.housing_status",
    } <= fields


async def test_an_event_from_the_future_is_422_naming_occurred_at(
    gateway: str, tokens: dict[str, str]
) -> None:
    """More than a day ahead of the gateway's clock is refused (year 9999 once overflowed the
    SLA engine's deadlines); an hour ahead, a wrong clock, is accepted."""
    soon = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    async with httpx.AsyncClient(base_url=gateway) as client:
        far = await client.post(
            "/v1/events",
            json=admission(occurred_at="9999-12-31T23:59:59Z"),
            headers=auth(tokens["dps"]),
        )
        near = await client.post(
            "/v1/events", json=admission(occurred_at=soon), headers=auth(tokens["dps"])
        )
        batch = await client.post(
            "/v1/events:batch",
            json={"events": [admission(), admission(occurred_at="2999-01-01T00:00:00Z")]},
            headers=auth(tokens["dps"]),
        )
    assert far.status_code == 422
    assert far.json()["error"]["details"] == [
        {"field": "occurred_at", "problem": "is more than a day in the future"}
    ]
    assert near.status_code == 202, near.text
    assert batch.status_code == 422
    assert [d["field"] for d in batch.json()["error"]["details"]] == ["events[1].occurred_at"]


async def test_unknown_event_type_is_422(gateway: str, tokens: dict[str, str]) -> None:
    """An event type outside the contract is refused naming event_type."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/v1/events", json=admission(event_type="teleportation"), headers=auth(tokens["dps"])
        )
    assert response.status_code == 422
    assert "event_type" in {d["field"] for d in response.json()["error"]["details"]}


async def test_authentication_and_authorisation(gateway: str, tokens: dict[str, str]) -> None:
    """No or a bad token is 401; another organisation's source or a non-system role is 403."""
    event = admission()
    async with httpx.AsyncClient(base_url=gateway) as client:
        missing = await client.post("/v1/events", json=event)
        bogus = await client.post("/v1/events", json=event, headers=auth("cbt_not-a-token"))
        nav = await client.post("/v1/events", json=event, headers=auth(tokens["nav"]))
        coordinator = await client.post(
            "/v1/events", json=event, headers=auth(tokens["coordinator"])
        )
    assert (missing.status_code, bogus.status_code) == (401, 401)
    assert (nav.status_code, coordinator.status_code) == (403, 403)
    for response in (missing, bogus, nav, coordinator):
        assert set(response.json()["error"]) == {"code", "message", "details"}


async def test_same_event_twice_is_published_once(
    stack: TestStack, gateway: str, tokens: dict[str, str]
) -> None:
    """Re-posting an accepted event (times in another offset) is 202 and publishes nothing new."""
    event = admission()
    same_in_utc = copy.deepcopy(event)
    same_in_utc["occurred_at"] = "2026-11-23T07:15:00Z"
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
        second = await client.post("/v1/events", json=same_in_utc, headers=auth(tokens["dps"]))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json() == second.json()
    assert len(records_on_events_topic(stack, event["event_id"])) == 1


async def test_same_event_id_with_other_content_is_409(
    gateway: str, tokens: dict[str, str]
) -> None:
    """An event_id reused for different content is a conflict."""
    event = admission()
    other = copy.deepcopy(event)
    other["payload"]["reason"] = "psychosis"
    async with httpx.AsyncClient(base_url=gateway) as client:
        first = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
        second = await client.post("/v1/events", json=other, headers=auth(tokens["dps"]))
    assert (first.status_code, second.status_code) == (202, 409)
    assert second.json()["error"]["details"][0]["field"] == "event_id"


async def test_malformed_json_is_400(gateway: str, tokens: dict[str, str]) -> None:
    """A body that is not JSON is a 400 with the error body."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/v1/events",
            content=b'{"event_id": ',
            headers={**auth(tokens["dps"]), "Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"


async def test_batch_with_one_invalid_event_stores_nothing(
    stack: TestStack, gateway: str, tokens: dict[str, str]
) -> None:
    """A batch is all or nothing: one bad nin refuses it whole, naming the event's index."""
    good, bad = admission(), admission()
    bad["subject"]["nin"] = "12345678901"
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/v1/events:batch", json={"events": [good, bad]}, headers=auth(tokens["dps"])
        )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["events[1].subject.nin"]
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM accepted_events WHERE event_id = $1", good["event_id"]
        )
    finally:
        await conn.close()
    assert stored == 0
    assert records_on_events_topic(stack, good["event_id"]) == []


async def test_batch_is_accepted_in_order(gateway: str, tokens: dict[str, str]) -> None:
    """A valid batch answers 202 with one accepted entry per event, in request order."""
    events = [admission() for _ in range(50)]
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/v1/events:batch", json={"events": events}, headers=auth(tokens["dps"])
        )
    assert response.status_code == 202, response.text
    assert [a["event_id"] for a in response.json()["accepted"]] == [e["event_id"] for e in events]


async def test_batch_over_1000_is_413(gateway: str, tokens: dict[str, str]) -> None:
    """More than 1000 events in one batch is refused as too large."""
    event = admission()
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        response = await client.post(
            "/v1/events:batch", json={"events": [event] * 1001}, headers=auth(tokens["dps"])
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_contract_errors_and_service_routes(gateway: str) -> None:
    """404 and 405 use the error body; /healthz, /metrics and /openapi.json are served."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        missing = await client.get("/v1/nothing-here")
        wrong_method = await client.get("/v1/events")
        health = await client.get("/healthz")
        scraped = await client.get("/metrics")
        openapi = await client.get("/openapi.json")
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()
    assert health.status_code == 200
    assert "carebus_http_requests_total" in scraped.text
    assert {"/v1/events", "/v1/events:batch"} <= set(openapi.json()["paths"])


async def test_idempotency_survives_a_restart(
    stack: TestStack, gateway: str, tokens: dict[str, str]
) -> None:
    """After the gateway restarts, a repeated event is still recognised and not republished."""
    event = admission()
    async with httpx.AsyncClient(base_url=gateway) as client:
        assert (
            await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
        ).status_code == 202
    service = stack.start_service("gateway", port=free_ports(1)[0])
    url = stack.settings.service_url(service.port)
    async with httpx.AsyncClient(base_url=url) as client:
        again = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
    service.stop()
    assert again.status_code == 202
    assert len(records_on_events_topic(stack, event["event_id"])) == 1


async def test_broker_unavailable_is_503_with_retry_after(
    stack: TestStack, tokens: dict[str, str]
) -> None:
    """Without the broker's acknowledgement the answer is 503 with Retry-After; nothing recorded."""
    port = free_ports(1)[0]
    service = stack.start_service(
        "gateway",
        port=port,
        env={
            "CAREBUS_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_ports(1)[0]}",
            "CAREBUS_PRODUCE_TIMEOUT_S": "1",
        },
        ready=False,  # it serves, but cannot be ready without its broker
    )
    event = admission()
    try:
        async with httpx.AsyncClient(
            base_url=stack.settings.service_url(port), timeout=30
        ) as client:
            response = await client.post("/v1/events", json=event, headers=auth(tokens["dps"]))
            deadline = time.monotonic() + 20
            while True:  # the checks run in the background: until the database has answered
                health = await client.get("/healthz")
                if health.json()["checks"]["database"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        service.stop()
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    # Readiness says why: the database answers, the broker does not.
    assert health.status_code == 503
    assert health.json() == {
        "status": "unready",
        "service": "gateway",
        "checks": {"database": True, "broker": False},
    }
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM accepted_events WHERE event_id = $1", event["event_id"]
            )
            == 0
        )
    finally:
        await conn.close()


def test_no_nin_in_gateway_logs(stack: TestStack, gateway: str) -> None:
    """The gateway's log never contains a national identity number."""
    log_text = stack.service_log("gateway").read_text()
    assert "events_accepted" in log_text
    candidates = re.findall(r"(?<![0-9A-Za-z])\d{11}(?![0-9A-Za-z])", log_text)
    assert [c for c in candidates if validate_nin(c) is None] == []
