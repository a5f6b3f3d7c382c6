"""The audit sink and the audit service against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer

from carebus.adapters.auth import create_token
from carebus.adapters.kafka import producer_config
from carebus.domain.deliveries import delivery_id, delivery_to_json, no_candidate_audit_id
from carebus.domain.identity import random_nin, subject_key
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.testing import ServiceProcess, TestStack, dead_letters

pytestmark = pytest.mark.integration

CODEC = Codec.default()
DISCLOSURE = "no.carebus.v1.Disclosure"
DELIVERY = "no.carebus.v1.Delivery"
DELIVERY_KEYS = {
    "delivery_id",
    "event_id",
    "event_type",
    "occurred_at",
    "subject",
    "basis",
    "categories",
    "payload",
}
RNG = random.Random()


def new_org() -> str:
    """A fresh 9-digit organisation number, so tests never share an organisation's data."""
    return f"9{RNG.randrange(10**8):08d}"


@pytest.fixture(scope="module")
def audit_store(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit_store")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def audit(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit")
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def client(audit: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=audit.url or "", timeout=10) as http:
        yield http


async def token(db: asyncpg.Connection, agency: str, org_id: str, role: str = "system") -> str:
    return await create_token(db, agency=agency, org_id=org_id, role=role)


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


class Person:
    """One person's nin and subject key under the test stack's secret."""

    def __init__(self, stack: TestStack) -> None:
        self.nin = random_nin(RNG)
        self.key = subject_key(self.nin, stack.settings.subject_key_secret.get_secret_value())


def delivery(
    person: Person,
    recipient: tuple[str, str],
    *,
    source_org: str = "974705788",
    event_id: str | None = None,
    decided_at: datetime | None = None,
    emergency: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Delivery record as the router writes it (delivery.avsc)."""
    event_id = event_id or f"dps-{source_org}-{uuid.uuid4().hex[:12]}"
    agency, org_id = recipient
    return {
        "delivery_id": delivery_id(source_org, event_id, org_id),
        "event_id": event_id,
        "event_type": "discharge",
        "occurred_at": datetime(2026, 11, 23, 7, 15, tzinfo=UTC),
        "decided_at": decided_at or datetime.now(UTC),
        "source": {"agency": "dps", "org_id": source_org, "system": "DIPS"},
        "recipient": {"agency": agency, "org_id": org_id},
        "subject": {"nin": person.nin},
        "subject_key": person.key,
        "basis": "emergency" if emergency else "presumed",
        "categories": ["logistics"],
        "fields": ["destination"],
        "payload_json": '{"destination":"home"}',
        "emergency": emergency,
        "rule_id": "discharge-fastlege",
        "policy_version": "test-1",
    }


def disclosure(
    person: Person,
    recipient: tuple[str, str] | None,
    decision: str,
    *,
    source_org: str = "974705788",
    event_id: str | None = None,
    decided_at: datetime | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A Disclosure record as the router writes it (disclosure.avsc)."""
    event_id = event_id or f"dps-{source_org}-{uuid.uuid4().hex[:12]}"
    delivered = decision == "delivered"
    audit_id = (
        delivery_id(source_org, event_id, recipient[1])
        if recipient
        else no_candidate_audit_id(source_org, event_id)
    )
    return {
        "audit_id": audit_id,
        "event_id": event_id,
        "event_type": "admission",
        "source_org": source_org,
        "subject_key": person.key,
        "recipient": {"agency": recipient[0], "org_id": recipient[1]} if recipient else None,
        "decision": decision,
        "reason": reason,
        "basis": "presumed" if delivered else None,
        "categories": ["logistics", "health"] if delivered else [],
        "fields": ["reason", "ward"] if delivered else [],
        "rule_id": None if reason == "not_permitted" or not recipient else "admission-rule",
        "policy_version": "test-1",
        "decided_at": decided_at or datetime.now(UTC),
        "delivery_id": audit_id if delivered else None,
        "emergency": False,
    }


def produce(stack: TestStack, messages: Sequence[tuple[str, bytes, bytes]]) -> None:
    """Produce (topic, key, value) triples and wait for the broker's acknowledgement."""
    producer = Producer(producer_config(stack.settings, f"test-audit-{uuid.uuid4().hex}"))
    failures: list[Any] = []
    for topic, key, value in messages:
        producer.produce(topic, value=value, key=key, on_delivery=lambda e, _m: failures.append(e))
    assert producer.flush(30) == 0
    assert [e for e in failures if e is not None] == []


def produce_deliveries(stack: TestStack, records: Sequence[dict[str, Any]]) -> None:
    produce(
        stack,
        [
            (
                topics.deliveries(r["recipient"]["agency"]),
                r["subject_key"].encode(),
                CODEC.encode(DELIVERY, r),
            )
            for r in records
        ],
    )


def produce_disclosures(stack: TestStack, records: Sequence[dict[str, Any]]) -> None:
    produce(
        stack,
        [(topics.AUDIT, r["subject_key"].encode(), CODEC.encode(DISCLOSURE, r)) for r in records],
    )


async def wait_for(
    db: asyncpg.Connection, table: str, column: str, ids: Sequence[str], timeout_s: float = 30.0
) -> int:
    """How many of `ids` are in `table` once all are, or at the timeout."""
    query = f"SELECT count(*) FROM {table} WHERE {column} = ANY($1::text[])"  # noqa: S608
    deadline = time.monotonic() + timeout_s
    while True:
        count = int(await db.fetchval(query, list(ids)))
        if count >= len(ids) or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.1)


async def all_pages(
    client: httpx.AsyncClient, bearer: str, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Every item by following `next`, and the number of pages read."""
    items: list[dict[str, Any]] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/deliveries", params=query, headers=auth(bearer))
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next"}
        items.extend(body["items"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return items, pages


# --- the sink -------------------------------------------------------------------------------


async def test_records_are_stored_once_each(
    stack: TestStack, audit_store: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Disclosures and deliveries published twice are one row each, with DESIGN's body."""
    person = Person(stack)
    gp = ("fastlege", new_org())
    nav = ("nav", new_org())
    deliveries = [delivery(person, gp) for _ in range(3)]
    disclosures = [
        disclosure(person, gp, "delivered", event_id=d["event_id"]) for d in deliveries
    ] + [
        disclosure(person, nav, "withheld", reason="no_consent"),
        disclosure(person, None, "no_candidate"),
    ]
    produce_deliveries(stack, deliveries + deliveries[:2])
    produce_disclosures(stack, disclosures + disclosures[::2])

    delivery_ids = [d["delivery_id"] for d in deliveries]
    audit_ids = [d["audit_id"] for d in disclosures]
    assert await wait_for(db, "deliveries", "delivery_id", delivery_ids) == 3
    assert await wait_for(db, "disclosures", "audit_id", audit_ids) == 5
    await asyncio.sleep(1.0)  # time for the duplicates to be (not) stored too
    assert await wait_for(db, "deliveries", "delivery_id", delivery_ids, 0) == 3
    assert await wait_for(db, "disclosures", "audit_id", audit_ids, 0) == 5

    rows = await db.fetch(
        "SELECT delivery_id, recipient_org, recipient_agency, subject_key, body::text AS body"
        " FROM deliveries WHERE delivery_id = ANY($1::text[])",
        delivery_ids,
    )
    by_id = {row["delivery_id"]: row for row in rows}
    for record in deliveries:
        row = by_id[record["delivery_id"]]
        assert (row["recipient_agency"], row["recipient_org"]) == gp
        assert row["subject_key"] == person.key
        assert json.loads(row["body"]) == delivery_to_json(record)

    stored = await db.fetch("SELECT * FROM disclosures WHERE audit_id = ANY($1::text[])", audit_ids)
    decisions = sorted((row["decision"], row["recipient_org"], row["reason"]) for row in stored)
    assert decisions == sorted(
        [("delivered", gp[1], None)] * 3
        + [("withheld", nav[1], "no_consent"), ("no_candidate", None, None)]
    )


async def test_bad_records_are_dead_lettered_and_the_sink_goes_on(
    stack: TestStack, audit_store: ServiceProcess, db: asyncpg.Connection
) -> None:
    """Garbage and self-contradicting records go to the dead-letter topic; later ones are stored."""
    person = Person(stack)
    nav = ("nav", new_org())
    bad = disclosure(person, None, "delivered")  # delivered to nobody
    misrouted = delivery(person, nav)
    good = disclosure(person, nav, "withheld", reason="objection")
    key = person.key.encode()
    produce(
        stack,
        [
            (topics.AUDIT, key, b"not avro at all"),
            (topics.AUDIT, key, CODEC.encode(DISCLOSURE, bad)),
            (topics.deliveries("dps"), key, CODEC.encode(DELIVERY, misrouted)),
            (topics.AUDIT, key, CODEC.encode(DISCLOSURE, good)),
        ],
    )
    assert await wait_for(db, "disclosures", "audit_id", [good["audit_id"]]) == 1
    assert await wait_for(db, "disclosures", "audit_id", [bad["audit_id"]], 0) == 0
    assert await wait_for(db, "deliveries", "delivery_id", [misrouted["delivery_id"]], 0) == 0

    letters = dead_letters(stack.settings, key, "audit-store", expected=3)
    reasons = sorted((letter["source_topic"], letter["reason"]) for letter in letters)
    assert reasons == sorted(
        [
            (topics.AUDIT, "not_single_object"),
            (topics.AUDIT, "invalid_record"),
            (topics.deliveries("dps"), "invalid_record"),
        ]
    )
    assert all(letter["consumer"] == "audit-store" for letter in letters)
    assert all(person.nin not in letter["detail"] for letter in letters)


# --- GET /v1/deliveries -----------------------------------------------------------------------


async def test_deliveries_are_the_callers_own_oldest_first_and_page_without_gaps(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """Only the caller's deliveries, in stored order; following `next` repeats and skips none."""
    mine = ("fastlege", new_org())
    other = ("fastlege", new_org())
    people = [Person(stack) for _ in range(3)]
    records = [delivery(people[n % 3], mine) for n in range(7)]
    others = [delivery(people[0], other) for _ in range(2)]
    produce_deliveries(stack, records + others)
    ids = [r["delivery_id"] for r in records + others]
    assert await wait_for(db, "deliveries", "delivery_id", ids) == 9

    bearer = await token(db, *mine)
    expected = [
        row["delivery_id"]
        for row in await db.fetch(
            "SELECT delivery_id FROM deliveries WHERE recipient_org = $1"
            " ORDER BY delivered_at, delivery_id",
            mine[1],
        )
    ]
    assert sorted(expected) == sorted(r["delivery_id"] for r in records)

    items, pages = await all_pages(client, bearer, {"limit": 3})
    assert [item["delivery_id"] for item in items] == expected
    assert pages == 3
    assert all(set(item) == DELIVERY_KEYS for item in items)
    by_id = {r["delivery_id"]: r for r in records}
    assert all(item == delivery_to_json(by_id[item["delivery_id"]]) for item in items)

    everything, pages = await all_pages(client, bearer, {})
    assert ([i["delivery_id"] for i in everything], pages) == (expected, 1)

    # `next` passed back in place of `since` continues just the same.
    first = (await client.get("/v1/deliveries?limit=2", headers=auth(bearer))).json()
    second = await client.get(
        "/v1/deliveries", params={"since": first["next"], "limit": 2}, headers=auth(bearer)
    )
    assert [i["delivery_id"] for i in second.json()["items"]] == expected[2:4]


async def test_paging_is_exact_when_deliveries_share_a_time(
    stack: TestStack, audit: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Ten deliveries stored at the same microsecond page out once each, by delivery_id."""
    org = ("nav", new_org())
    person = Person(stack)
    moment = datetime.now(UTC) - timedelta(days=1)
    rows = [delivery(person, org) for _ in range(10)]
    await db.executemany(
        "INSERT INTO deliveries (delivery_id, recipient_org, recipient_agency, event_id,"
        " event_type, subject_key, occurred_at, delivered_at, body)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
        [
            (
                r["delivery_id"],
                org[1],
                org[0],
                r["event_id"],
                r["event_type"],
                person.key,
                r["occurred_at"],
                moment,
                json.dumps(delivery_to_json(r)),
            )
            for r in rows
        ],
    )
    bearer = await token(db, *org)
    for limit in (1, 3, 4, 10):
        items, _pages = await all_pages(client, bearer, {"limit": limit})
        assert [i["delivery_id"] for i in items] == sorted(r["delivery_id"] for r in rows)

    since = moment.isoformat()
    at, _ = await all_pages(client, bearer, {"since": since, "limit": 4})
    assert len(at) == 10
    after, _ = await all_pages(
        client, bearer, {"since": (moment + timedelta(microseconds=1)).isoformat()}
    )
    assert after == []
    # The same instant written with another offset.
    oslo = moment.astimezone(timezone(timedelta(hours=1))).isoformat()
    again, _ = await all_pages(client, bearer, {"since": oslo})
    assert len(again) == 10


async def test_since_filters_by_stored_time(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """`since` is inclusive and counts from when the bus stored the delivery."""
    org = ("police", new_org())
    person = Person(stack)
    early = [delivery(person, org) for _ in range(2)]
    produce_deliveries(stack, early)
    assert await wait_for(db, "deliveries", "delivery_id", [r["delivery_id"] for r in early]) == 2
    await asyncio.sleep(0.05)
    late = [delivery(person, org) for _ in range(2)]
    produce_deliveries(stack, late)
    assert await wait_for(db, "deliveries", "delivery_id", [r["delivery_id"] for r in late]) == 2

    boundary = await db.fetchval(
        "SELECT min(delivered_at) FROM deliveries WHERE delivery_id = ANY($1::text[])",
        [r["delivery_id"] for r in late],
    )
    bearer = await token(db, *org)
    items, _ = await all_pages(client, bearer, {"since": boundary.isoformat()})
    assert sorted(i["delivery_id"] for i in items) == sorted(r["delivery_id"] for r in late)


async def test_deliveries_refuse_bad_parameters_and_other_roles(
    stack: TestStack, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """401 without a token, 403 for non-system roles, 422 naming the bad parameter."""
    org = ("dps", new_org())
    bearer = await token(db, *org)

    response = await client.get("/v1/deliveries")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert (await client.get("/v1/deliveries", headers=auth("cbt_nope"))).status_code == 401
    for role in ("coordinator", "privacy_officer", "admin"):
        other_role = await token(db, *org, role=role)
        response = await client.get("/v1/deliveries", headers=auth(other_role))
        assert response.status_code == 403, role
        assert set(response.json()["error"]) == {"code", "message", "details"}

    cases: list[tuple[dict[str, str | int], str]] = [
        ({"since": "2026-11-23"}, "since"),
        ({"since": "2026-11-23T08:15:00"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
    ]
    for params, field in cases:
        response = await client.get("/v1/deliveries", params=params, headers=auth(bearer))
        assert response.status_code == 422, params
        assert [d["field"] for d in response.json()["error"]["details"]] == [field], params

    response = await client.get("/v1/deliveries", params={"limit": 1000}, headers=auth(bearer))
    assert response.json() == {"items": [], "next": None}

    openapi = (await client.get("/openapi.json")).json()
    assert "cursor" in openapi["paths"]["/v1/deliveries"]["get"]["description"]
    assert "/v1/disclosures/query" in openapi["paths"]


# --- POST /v1/disclosures/query -----------------------------------------------------------


async def test_the_disclosure_query_lists_every_decision_about_the_person(
    stack: TestStack,
    audit_store: ServiceProcess,
    audit: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """Delivered and withheld decisions, by time, with reasons; no_candidate is not listed."""
    person = Person(stack)
    bystander = Person(stack)
    source = ("dps", "974705788")  # every record's source: it sees every decision
    municipality = ("municipality", new_org())
    gp = ("fastlege", new_org())
    nav = ("nav", new_org())
    start = datetime.now(UTC) - timedelta(hours=1)
    event_id = f"dps-974705788-{uuid.uuid4().hex[:8]}"
    records = [
        disclosure(person, gp, "delivered", event_id=event_id, decided_at=start),
        disclosure(
            person,
            nav,
            "withheld",
            event_id=event_id,
            reason="no_consent",
            decided_at=start + timedelta(seconds=1),
        ),
        disclosure(
            person,
            municipality,
            "withheld",
            reason="not_permitted",
            decided_at=start + timedelta(seconds=3),
        ),
        disclosure(person, None, "no_candidate", decided_at=start + timedelta(seconds=2)),
        disclosure(bystander, municipality, "delivered", decided_at=start),
    ]
    # Out of time order on purpose: the answer is ordered by decided_at, not by arrival.
    produce_disclosures(stack, records[::-1])
    assert await wait_for(db, "disclosures", "audit_id", [r["audit_id"] for r in records]) == 5

    officer = await token(db, *source, role="privacy_officer")
    response = await client.post(
        "/v1/disclosures/query", json={"nin": person.nin}, headers=auth(officer)
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"items", "lookups", "refusals"}
    items = response.json()["items"]
    assert [(i["recipient"]["org_id"], i["decision"]) for i in items] == [
        (gp[1], "delivered"),
        (nav[1], "withheld"),
        (municipality[1], "withheld"),
    ]
    delivered, no_consent, not_permitted = items
    assert delivered == {
        "event_id": event_id,
        "event_type": "admission",
        "recipient": {"agency": "fastlege", "org_id": gp[1]},
        "decision": "delivered",
        "basis": "presumed",
        "fields": ["reason", "ward"],
        "rule_id": "admission-rule",
        "policy_version": "test-1",
        "decided_at": start.isoformat().replace("+00:00", "Z"),
    }
    assert no_consent["reason"] == "no_consent"
    assert "basis" not in no_consent
    assert "fields" not in no_consent
    assert (not_permitted["reason"], not_permitted["rule_id"]) == ("not_permitted", None)

    # The nin was in a request body only: never in the service's log.
    assert person.nin not in audit.log_text()


async def test_the_disclosure_query_is_for_related_privacy_officers_only(
    stack: TestStack,
    audit_store: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> None:
    """403 (the same for an unknown person) outside the organisation's persons; 401; 422."""
    person = Person(stack)
    source = ("dps", new_org())
    nav = ("nav", new_org())
    record = disclosure(person, nav, "withheld", reason="objection", source_org=source[1])
    produce_disclosures(stack, [record])
    assert await wait_for(db, "disclosures", "audit_id", [record["audit_id"]]) == 1

    for related in (source, nav):  # the publisher and the (withheld) candidate
        officer = await token(db, *related, role="privacy_officer")
        response = await client.post(
            "/v1/disclosures/query", json={"nin": person.nin}, headers=auth(officer)
        )
        assert response.status_code == 200, related
        assert len(response.json()["items"]) == 1

    stranger = await token(db, "municipality", new_org(), role="privacy_officer")
    refused = await client.post(
        "/v1/disclosures/query", json={"nin": person.nin}, headers=auth(stranger)
    )
    unknown = await client.post(
        "/v1/disclosures/query", json={"nin": Person(stack).nin}, headers=auth(stranger)
    )
    assert (refused.status_code, unknown.status_code) == (403, 403)
    assert refused.json() == unknown.json()  # nothing tells an unknown person from another's

    system = await token(db, *nav)
    response = await client.post(
        "/v1/disclosures/query", json={"nin": person.nin}, headers=auth(system)
    )
    assert response.status_code == 403
    response = await client.post("/v1/disclosures/query", json={"nin": person.nin})
    assert response.status_code == 401

    officer = await token(db, *nav, role="privacy_officer")
    bad_nin = person.nin[:-1] + str((int(person.nin[-1]) + 1) % 10)
    for body in ({"nin": bad_nin}, {"nin": "123"}, {"nin": 12345678901}, {}):
        response = await client.post("/v1/disclosures/query", json=body, headers=auth(officer))
        assert response.status_code == 422, body
        details = response.json()["error"]["details"]
        assert [d["field"] for d in details] == ["nin"], body
        assert bad_nin not in response.text
    response = await client.post(
        "/v1/disclosures/query", content=b"{not json", headers=auth(officer)
    )
    assert response.status_code == 400
