"""The registry through its HTTP contract: consents, care teams, the outbox and webhooks."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from carebus.adapters.auth import create_token
from carebus.adapters.kafka import consumer_config
from carebus.adapters.webhook_registrations import get_webhook
from carebus.domain.identity import random_nin, subject_key, validate_nin
from carebus.wire import topics
from carebus.wire.codec import Codec, DecodeError
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import EventFactory, TestStack, free_ports

pytestmark = pytest.mark.integration

CODEC = Codec.default()
DPS_ORG = "974705788"
NAV_ORG = "889640782"
MUNICIPALITY_ORG = "940493021"
FASTLEGE_ORG = "912345675"
HOUSING_ORG = "987654325"
CONSENT_CHANGE = "no.carebus.v1.ConsentChange"
CARE_TEAM_CHANGE = "no.carebus.v1.CareTeamChange"


@dataclass(frozen=True)
class StreamRecord:
    partition: int
    offset: int
    key: bytes
    headers: dict[str, bytes]
    schema_name: str
    record: dict[str, Any]


@pytest.fixture(scope="module")
def registry(stack: TestStack) -> Iterator[str]:
    service = stack.start_service("registry")
    yield stack.settings.service_url(stack.settings.registry_port)
    service.stop()


@pytest.fixture(scope="module")
def gateway(stack: TestStack) -> Iterator[str]:
    service = stack.start_service("gateway")
    yield stack.settings.service_url(stack.settings.gateway_port)
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Connection) -> dict[str, str]:
    async def token(agency: str, org_id: str, role: str) -> str:
        return await create_token(db, agency=agency, org_id=org_id, role=role)

    return {
        "dps": await token("dps", DPS_ORG, "system"),
        "nav": await token("nav", NAV_ORG, "system"),
        "fastlege": await token("fastlege", FASTLEGE_ORG, "system"),
        "coordinator": await token("municipality", MUNICIPALITY_ORG, "coordinator"),
        "privacy_officer": await token("municipality", MUNICIPALITY_ORG, "privacy_officer"),
        "admin": await token("municipality", MUNICIPALITY_ORG, "admin"),
        "operator": await token("operator", OPERATOR_ORG, "operator"),
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def relate(registry: str, tokens: dict[str, str], nin: str) -> None:
    """Make the demo municipality the person's home municipality (the operator's population
    register), so it has the relation that recording consents and care-team changes needs."""
    async with httpx.AsyncClient(base_url=registry) as client:
        response = await client.post(
            "/v1/population-register",
            json={"nin": nin, "home_municipality_org": MUNICIPALITY_ORG},
            headers=auth(tokens["operator"]),
        )
    assert response.status_code == 201, response.text


def new_nin() -> str:
    return random_nin(random.Random())


def key_of(stack: TestStack, nin: str) -> str:
    return subject_key(nin, stack.settings.subject_key_secret.get_secret_value())


def consent(nin: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nin": nin,
        "recipient": {"agency": "nav", "org_id": NAV_ORG},
        "categories": ["logistics", "social"],
        "status": "given",
        "valid_from": "2026-01-01T00:00:00+01:00",
        "valid_to": "2027-01-01T00:00:00+01:00",
        "recorded_by": "coordinator on duty",
    }
    body.update(changes)
    return body


def care_team_change(nin: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nin": nin,
        "agency": "fastlege",
        "org_id": FASTLEGE_ORG,
        "role": "gp",
        "status": "member",
    }
    body.update(changes)
    return body


def stream_records(stack: TestStack) -> list[StreamRecord]:
    """Every decodable record on care.events.v1, from the start to the current end."""
    consumer = Consumer(consumer_config(stack.settings, f"test-registry-{uuid.uuid4().hex}"))
    try:
        metadata = consumer.list_topics(topics.EVENTS, timeout=10)
        partitions = [
            TopicPartition(topics.EVENTS, p, 0) for p in metadata.topics[topics.EVENTS].partitions
        ]
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions
        }
        consumer.assign(partitions)
        found: list[StreamRecord] = []
        done: set[int] = {p for p, end in ends.items() if end == 0}
        while len(done) < len(partitions):
            message = consumer.poll(5)
            assert message is not None, "the events topic stopped before its end offsets"
            assert message.error() is None
            partition, offset = int(message.partition() or 0), int(message.offset() or 0)
            if offset + 1 >= ends[partition]:
                done.add(partition)
            try:
                decoded = CODEC.decode(message.value() or b"")
            except DecodeError:
                continue  # other suites put undecodable records here on purpose
            found.append(
                StreamRecord(
                    partition=partition,
                    offset=offset,
                    key=message.key() or b"",
                    headers=_headers(message),
                    schema_name=decoded.schema_name,
                    record=decoded.record,
                )
            )
        return found
    finally:
        consumer.close()


def changes_on_stream(stack: TestStack, change_ids: set[str]) -> list[StreamRecord]:
    """The registry records with these change ids, in stream order (one partition per person)."""
    return [
        r
        for r in stream_records(stack)
        if r.schema_name in (CONSENT_CHANGE, CARE_TEAM_CHANGE)
        and r.record["change_id"] in change_ids
    ]


async def until(condition: Any, timeout_s: float = 20.0) -> Any:
    """Poll the async `condition` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


# --- consents ------------------------------------------------------------------------------


async def test_consent_is_recorded_without_nin_and_on_the_persons_partition_before_201(
    stack: TestStack,
    registry: str,
    gateway: str,
    db: asyncpg.Connection,
    tokens: dict[str, str],
) -> None:
    """201 comes after the broker has the ConsentChange, keyed and partitioned like the person's
    events, and the next event of that person lands after it."""
    nin = new_nin()
    key = key_of(stack, nin)
    event = EventFactory().event("admission", nin=nin)
    await relate(registry, tokens, nin)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{registry}/v1/consents", json=consent(nin), headers=auth(tokens["coordinator"])
        )
        assert response.status_code == 201, response.text
        posted = await client.post(f"{gateway}/v1/events", json=event, headers=auth(tokens["dps"]))
    assert posted.status_code == 202, posted.text
    consent_id = response.json()["consent_id"]
    assert response.json() == {
        "consent_id": consent_id,
        "state": "effective",
        "pending_reason": None,
    }

    row = await db.fetchrow("SELECT * FROM consents WHERE consent_id = $1", uuid.UUID(consent_id))
    assert row is not None
    assert row["subject_key"] == key
    assert (row["recipient_agency"], row["recipient_org"]) == ("nav", NAV_ORG)
    assert row["categories"] == ["logistics", "social"]
    assert row["recorded_by_org"] == MUNICIPALITY_ORG
    assert nin not in repr(dict(row))
    assert (
        await db.fetchval(
            "SELECT count(*) FROM outbox WHERE key = $1 AND published_at IS NULL", key.encode()
        )
        == 0
    )

    records = stream_records(stack)
    [change] = [
        r
        for r in records
        if r.schema_name == CONSENT_CHANGE and r.record["change_id"] == consent_id
    ]
    [admission] = [
        r for r in records if r.headers.get("carebus-event-id") == event["event_id"].encode()
    ]
    assert change.key == key.encode()
    assert change.record["subject_key"] == key
    assert change.record["recipient"] == {"agency": "nav", "org_id": NAV_ORG}
    assert change.record["status"] == "given"
    assert change.record["valid_from"] == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    assert change.record["recorded_by_org"] == MUNICIPALITY_ORG
    assert nin not in repr(change.record)
    assert admission.partition == change.partition
    assert admission.offset > change.offset


async def test_history_is_appended_and_streamed_in_answer_order(
    stack: TestStack, registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """A consent then its withdrawal (by its recipient, restricting its own access) are two
    history rows and two records, in that order."""
    nin = new_nin()
    await relate(registry, tokens, nin)
    async with httpx.AsyncClient(base_url=registry) as client:
        given = await client.post(
            "/v1/consents", json=consent(nin), headers=auth(tokens["coordinator"])
        )
        withdrawn = await client.post(
            "/v1/consents",
            json=consent(nin, status="withdrawn", categories=[], valid_to=None),
            headers=auth(tokens["nav"]),
        )
    assert (given.status_code, withdrawn.status_code) == (201, 201)
    ids = [given.json()["consent_id"], withdrawn.json()["consent_id"]]
    rows = await db.fetch(
        "SELECT consent_id::text, status FROM consents WHERE subject_key = $1 ORDER BY recorded_at",
        key_of(stack, nin),
    )
    assert [(r["consent_id"], r["status"]) for r in rows] == list(
        zip(ids, ["given", "withdrawn"], strict=True)
    )
    streamed = changes_on_stream(stack, set(ids))
    assert [r.record["change_id"] for r in streamed] == ids
    assert streamed[1].record["valid_to"] is None


async def test_invalid_consents_name_the_field_and_change_nothing(
    stack: TestStack, registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """Each invalid consent is 422 naming its field (never echoing the nin); nothing is stored."""
    nin = new_nin()
    wrong = nin[:-1] + str((int(nin[-1]) + 1) % 10)
    cases = [
        (consent(wrong), ["nin"]),
        (consent(nin, recipient={"agency": "nav", "org_id": "12"}), ["recipient.org_id"]),
        (consent(nin, categories=["logistics", "gossip"]), ["categories[1]"]),
        (consent(nin, categories=[]), ["categories"]),
        (consent(nin, status="perhaps"), ["status"]),
        (consent(nin, valid_from="2026-01-01T00:00:00"), ["valid_from"]),
        (consent(nin, valid_to="2025-01-01T00:00:00Z"), ["valid_to"]),
        (consent(nin, recorded_by=""), ["recorded_by"]),
        (consent(nin, purpose="research"), ["purpose"]),
        # An organisation number registered under another agency.
        (consent(nin, recipient={"agency": "nav", "org_id": DPS_ORG}), ["recipient.org_id"]),
    ]
    async with httpx.AsyncClient(base_url=registry) as client:
        for body, expected in cases:
            response = await client.post(
                "/v1/consents", json=body, headers=auth(tokens["coordinator"])
            )
            assert response.status_code == 422, (expected, response.text)
            error = response.json()["error"]
            assert [d["field"] for d in error["details"]] == expected
            assert error["code"] == "invalid"
            assert wrong not in response.text
            assert nin not in response.text
        malformed = await client.post(
            "/v1/consents",
            content=b'{"nin": ',
            headers={**auth(tokens["coordinator"]), "Content-Type": "application/json"},
        )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_request"
    for candidate in (nin, wrong):
        assert (
            await db.fetchval(
                "SELECT count(*) FROM consents WHERE subject_key = $1", key_of(stack, candidate)
            )
            == 0
        )


async def test_authentication_and_roles(registry: str, tokens: dict[str, str]) -> None:
    """No or an unknown token is 401; the privacy officer may not record changes (403)."""
    nin = new_nin()
    async with httpx.AsyncClient(base_url=registry) as client:
        missing = await client.post("/v1/consents", json=consent(nin))
        bogus = await client.post(
            "/v1/consents", json=consent(nin), headers=auth("cbt_not-a-token")
        )
        officer_consent = await client.post(
            "/v1/consents", json=consent(nin), headers=auth(tokens["privacy_officer"])
        )
        officer_team = await client.post(
            "/v1/care-teams",
            json=care_team_change(nin),
            headers=auth(tokens["privacy_officer"]),
        )
        coordinator_webhook = await client.put(
            "/v1/webhooks",
            json={"url": "https://example.org/hook"},
            headers=auth(tokens["coordinator"]),
        )
        system_token = await client.post(
            "/v1/tokens",
            json={"agency": "nav", "org_id": NAV_ORG, "role": "admin"},
            headers=auth(tokens["nav"]),
        )
    assert (missing.status_code, bogus.status_code) == (401, 401)
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for response in (officer_consent, officer_team, coordinator_webhook, system_token):
        assert response.status_code == 403, response.text
    for response in (missing, bogus, officer_consent, officer_team, coordinator_webhook):
        assert set(response.json()["error"]) == {"code", "message", "details"}


async def test_tokens_are_issued_by_the_operator_or_an_organisations_own_admin(
    registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """POST /v1/tokens: an agency's admin issues working tokens for its own organisation only;
    the operator for any organisation, which is recorded as an operator action."""
    async with httpx.AsyncClient(base_url=registry) as client:
        own = await client.post(
            "/v1/tokens",
            json={"agency": "municipality", "org_id": MUNICIPALITY_ORG, "role": "system"},
            headers=auth(tokens["admin"]),
        )
        other = await client.post(
            "/v1/tokens",
            json={"agency": "nav", "org_id": NAV_ORG, "role": "system", "label": "test"},
            headers=auth(tokens["admin"]),
        )
        issued = await client.post(
            "/v1/tokens",
            json={"agency": "nav", "org_id": NAV_ORG, "role": "system", "label": "test"},
            headers=auth(tokens["operator"]),
        )
        assert issued.status_code == 201, issued.text
        used = await client.get("/v1/webhooks", headers=auth(issued.json()["token"]))
    assert own.status_code == 201, own.text
    assert other.status_code == 403, other.text
    assert other.json()["error"]["details"][0]["field"] == "org_id"
    assert used.status_code in (200, 404)
    actions = await db.fetch(
        "SELECT action, operator_org FROM operator_actions WHERE target_org = $1", NAV_ORG
    )
    assert ("token_issued", OPERATOR_ORG) in [(a["action"], a["operator_org"]) for a in actions]


async def test_the_directory_lists_organisations_that_joined_by_a_token(
    registry: str, tokens: dict[str, str]
) -> None:
    """An organisation created by its first token has no name yet: it is listed with "" (this
    answered 500 while the listing reused the registration request's model)."""
    async with httpx.AsyncClient(base_url=registry) as client:
        listed = await client.get("/v1/organisations", headers=auth(tokens["dps"]))
        only_nav = await client.get(
            "/v1/organisations", params={"agency": "nav"}, headers=auth(tokens["dps"])
        )
    assert listed.status_code == 200, listed.text
    entries = {entry["org_id"]: entry for entry in listed.json()["items"]}
    assert entries[DPS_ORG]["agency"] == "dps"
    assert isinstance(entries[DPS_ORG]["name"], str)
    assert only_nav.status_code == 200, only_nav.text
    assert {entry["agency"] for entry in only_nav.json()["items"]} == {"nav"}


# --- care teams ----------------------------------------------------------------------------


async def test_care_team_change_is_recorded_and_streamed(
    stack: TestStack, registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """A care-team change is 201 with its change_id, a history row and a keyed record."""
    nin = new_nin()
    key = key_of(stack, nin)
    await relate(registry, tokens, nin)
    async with httpx.AsyncClient(base_url=registry) as client:
        joined = await client.post(
            "/v1/care-teams", json=care_team_change(nin), headers=auth(tokens["coordinator"])
        )
        left = await client.post(
            "/v1/care-teams",
            json=care_team_change(nin, status="removed"),
            headers=auth(tokens["fastlege"]),
        )
        invalid = await client.post(
            "/v1/care-teams",
            json=care_team_change(nin, role="friend", org_id="1"),
            headers=auth(tokens["coordinator"]),
        )
        mismatched = await client.post(
            "/v1/care-teams",
            json=care_team_change(nin, agency="police", org_id=NAV_ORG),
            headers=auth(tokens["coordinator"]),
        )
    assert (joined.status_code, left.status_code) == (201, 201), (joined.text, left.text)
    assert set(joined.json()) == {"change_id"}
    assert invalid.status_code == 422
    assert {d["field"] for d in invalid.json()["error"]["details"]} == {"role", "org_id"}
    assert mismatched.status_code == 422
    assert [d["field"] for d in mismatched.json()["error"]["details"]] == ["org_id"]

    ids = [joined.json()["change_id"], left.json()["change_id"]]
    rows = await db.fetch(
        "SELECT change_id::text, status, recorded_by_org FROM care_team_changes"
        " WHERE subject_key = $1 ORDER BY recorded_at",
        key,
    )
    assert [(r["change_id"], r["status"], r["recorded_by_org"]) for r in rows] == [
        (ids[0], "member", MUNICIPALITY_ORG),
        (ids[1], "removed", FASTLEGE_ORG),
    ]
    streamed = changes_on_stream(stack, set(ids))
    assert [r.record["change_id"] for r in streamed] == ids
    assert all(r.schema_name == CARE_TEAM_CHANGE and r.key == key.encode() for r in streamed)
    assert streamed[0].record["member"] == {"agency": "fastlege", "org_id": FASTLEGE_ORG}
    assert (streamed[0].record["role"], streamed[0].record["status"]) == ("gp", "member")


# --- the outbox ----------------------------------------------------------------------------


async def test_relay_publishes_what_a_crash_left_unpublished(
    stack: TestStack, registry: str, db: asyncpg.Connection
) -> None:
    """A change committed with its outbox record but never published (a crash) is relayed."""
    nin = new_nin()
    key = key_of(stack, nin)
    change_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    record = {
        "change_id": change_id,
        "subject_key": key,
        "recipient": {"agency": "housing", "org_id": None},
        "categories": ["social"],
        "status": "objection",
        "valid_from": now,
        "valid_to": None,
        "recorded_by": "test",
        "recorded_by_org": MUNICIPALITY_ORG,
        "recorded_at": now,
    }
    async with db.transaction():
        await db.execute(
            """
            INSERT INTO consents (consent_id, subject_key, recipient_agency, categories, status,
                valid_from, recorded_by, recorded_by_org, recorded_at)
            VALUES ($1, $2, 'housing', '{social}', 'objection', $3, 'test', $4, $3)
            """,
            uuid.UUID(change_id),
            key,
            now,
            MUNICIPALITY_ORG,
        )
        outbox_id = await db.fetchval(
            "INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3) RETURNING id",
            topics.EVENTS,
            key.encode(),
            CODEC.encode(CONSENT_CHANGE, record),
        )

    async def published() -> Any:
        return await db.fetchval("SELECT published_at FROM outbox WHERE id = $1", outbox_id)

    assert await until(published), "the relay did not publish the outbox record"
    [relayed] = changes_on_stream(stack, {change_id})
    assert relayed.key == key.encode()
    assert relayed.record["status"] == "objection"


async def test_concurrent_changes_through_two_registries_stream_in_commit_order(
    stack: TestStack, registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """Changes for one person posted at once to two registry instances reach the stream once
    each, in the order their history rows were committed."""
    second = stack.start_service("registry", name="registry-second", port=free_ports(1)[0])
    nin = new_nin()
    key = key_of(stack, nin)
    await relate(registry, tokens, nin)
    urls = [registry, second.url or ""]
    statuses = ["given", "withdrawn", "objection"]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{urls[i % 2]}/v1/consents",
                        json=consent(nin, status=statuses[i % 3], recorded_by=f"clerk {i}"),
                        headers=auth(tokens["coordinator"]),
                    )
                    for i in range(24)
                )
            )
    finally:
        second.stop()
    assert [r.status_code for r in responses] == [201] * 24
    committed = await db.fetch("SELECT value FROM outbox WHERE key = $1 ORDER BY id", key.encode())
    decoded = [CODEC.decode(row["value"]) for row in committed]
    # The population-register entry that gave the municipality its relation comes first.
    in_commit_order = [d.record["change_id"] for d in decoded if d.schema_name == CONSENT_CHANGE]
    assert sorted(in_commit_order) == sorted(r.json()["consent_id"] for r in responses)
    streamed = changes_on_stream(stack, set(in_commit_order))
    assert [r.record["change_id"] for r in streamed] == in_commit_order


async def test_broker_unavailable_is_503_and_the_relay_publishes_later(
    stack: TestStack, registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """Without the broker's acknowledgement the answer is 503 with Retry-After; the change is
    committed, and a registry that can reach the broker publishes it."""
    port = free_ports(1)[0]
    unreachable = stack.start_service(
        "registry",
        name="registry-no-broker",
        port=port,
        env={
            "CAREBUS_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_ports(1)[0]}",
            "CAREBUS_PRODUCE_TIMEOUT_S": "1",
        },
        ready=False,  # it serves, but cannot be ready without its broker
    )
    nin = new_nin()
    key = key_of(stack, nin)
    await relate(registry, tokens, nin)
    try:
        async with httpx.AsyncClient(
            base_url=stack.settings.service_url(port), timeout=30
        ) as client:
            response = await client.post(
                "/v1/consents", json=consent(nin), headers=auth(tokens["coordinator"])
            )
    finally:
        unreachable.stop()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "unavailable"
    [row] = await db.fetch("SELECT consent_id::text FROM consents WHERE subject_key = $1", key)

    async def relayed() -> Any:
        return await db.fetchval(
            "SELECT bool_and(published_at IS NOT NULL) FROM outbox WHERE key = $1", key.encode()
        )

    assert await until(relayed), "the running registry's relay did not publish the change"
    [record] = changes_on_stream(stack, {row["consent_id"]})
    assert record.key == key.encode()


# --- webhooks ------------------------------------------------------------------------------


async def test_webhook_registration(
    registry: str, db: asyncpg.Connection, tokens: dict[str, str]
) -> None:
    """A system registers its own webhook (a new secret each time), reads it without the secret
    and deletes it; the operator may manage another organisation's; a system or an agency's
    admin may not."""
    url = "https://nav.example/carebus"
    async with httpx.AsyncClient(base_url=registry) as client:
        first = await client.put("/v1/webhooks", json={"url": url}, headers=auth(tokens["nav"]))
        second = await client.put("/v1/webhooks", json={"url": url}, headers=auth(tokens["nav"]))
        shown = await client.get("/v1/webhooks", headers=auth(tokens["nav"]))
        bad_url = await client.put(
            "/v1/webhooks", json={"url": "ftp://nav.example"}, headers=auth(tokens["nav"])
        )
        not_own = await client.put(
            "/v1/webhooks",
            json={"url": url, "org_id": DPS_ORG},
            headers=auth(tokens["nav"]),
        )
        not_own_admin = await client.put(
            "/v1/webhooks",
            json={"url": url, "org_id": DPS_ORG},
            headers=auth(tokens["admin"]),
        )
        by_admin = await client.put(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/dps", "org_id": DPS_ORG},
            headers=auth(tokens["operator"]),
        )
        unknown_org = await client.put(
            "/v1/webhooks",
            json={"url": url, "org_id": "123456785"},
            headers=auth(tokens["operator"]),
        )
        admin_reads = await client.get(
            "/v1/webhooks", params={"org_id": DPS_ORG}, headers=auth(tokens["operator"])
        )
        deleted = await client.delete("/v1/webhooks", headers=auth(tokens["nav"]))
        gone = await client.get("/v1/webhooks", headers=auth(tokens["nav"]))
        deleted_again = await client.delete("/v1/webhooks", headers=auth(tokens["nav"]))

    assert first.status_code == 200, first.text
    assert set(first.json()) == {"org_id", "url", "format", "secret"}
    assert first.json()["format"] == "carebus"
    assert (first.json()["org_id"], first.json()["url"]) == (NAV_ORG, url)
    assert first.json()["secret"] != second.json()["secret"]
    assert len(second.json()["secret"]) >= 43
    assert shown.status_code == 200
    assert shown.json()["url"] == url
    assert "secret" not in shown.json()
    assert second.json()["secret"] not in shown.text
    assert bad_url.status_code == 422
    assert [d["field"] for d in bad_url.json()["error"]["details"]] == ["url"]
    assert not_own.status_code == 403
    assert not_own_admin.status_code == 403
    assert by_admin.status_code == 200
    assert by_admin.json()["org_id"] == DPS_ORG
    assert unknown_org.status_code == 422
    assert admin_reads.json()["url"] == "http://127.0.0.1:9/dps"
    assert (deleted.status_code, gone.status_code, deleted_again.status_code) == (204, 404, 204)
    stored = await get_webhook(db, DPS_ORG)
    assert stored is not None
    assert stored.secret == by_admin.json()["secret"]


async def test_cli_webhook_set_prints_a_new_secret(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    """`carebus webhook set` registers the URL and prints the secret; bad input exits 1."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "carebus.ops.cli", "webhook", "set", *args],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    unknown = run("--org", "123456785", "--url", "https://x.example/hook")
    assert unknown.returncode == 1
    assert "not registered" in unknown.stderr
    await create_token(db, agency="housing", org_id=HOUSING_ORG, role="system")
    bad_url = run("--org", HOUSING_ORG, "--url", "mailto:someone@example.org")
    assert bad_url.returncode == 1
    assert "http" in bad_url.stderr
    created = run("--org", HOUSING_ORG, "--url", "https://housing.example/hook")
    assert created.returncode == 0, created.stderr
    stored = await get_webhook(db, HOUSING_ORG)
    assert stored is not None
    assert stored.url == "https://housing.example/hook"
    assert created.stdout.strip() == stored.secret
    assert len(stored.secret) >= 43


# --- the service as a whole ----------------------------------------------------------------


async def test_service_routes_and_metrics(registry: str, tokens: dict[str, str]) -> None:
    """/healthz, /openapi.json (every registry path) and /metrics with the registry's metrics."""
    nin = new_nin()
    await relate(registry, tokens, nin)
    async with httpx.AsyncClient(base_url=registry) as client:
        await client.post(
            "/v1/care-teams", json=care_team_change(nin), headers=auth(tokens["coordinator"])
        )
        health = await client.get("/healthz")
        openapi = await client.get("/openapi.json")
        await asyncio.sleep(1.5)  # one relay pass sets the pending gauge
        scraped = await client.get("/metrics")
    assert health.status_code == 200
    assert {"/v1/consents", "/v1/care-teams", "/v1/tokens", "/v1/webhooks"} <= set(
        openapi.json()["paths"]
    )
    assert 'carebus_registry_changes_total{kind="care_team"}' in scraped.text
    assert "carebus_registry_outbox_pending 0.0" in scraped.text
    assert 'carebus_registry_outbox_published_total{by="request"}' in scraped.text


def test_no_nin_in_registry_logs(stack: TestStack, registry: str) -> None:
    """The registries' logs never contain a national identity number."""
    for name in ("registry", "registry-second", "registry-no-broker"):
        log_text = stack.service_log(name).read_text()
        candidates = re.findall(r"(?<![0-9A-Za-z])\d{11}(?![0-9A-Za-z])", log_text)
        assert [c for c in candidates if validate_nin(c) is None] == []
    assert "consent_recorded" in stack.service_log("registry").read_text()


def _headers(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {name: value for name, value in pairs if isinstance(value, bytes)}
