"""The alert store sink and the inbox service against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import Producer

from carebus.adapters.auth import create_token, hash_token
from carebus.adapters.kafka import producer_config
from carebus.domain.alerts import OPERATOR_ACTION, operator_action_alert
from carebus.domain.identity import subject_key
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import EventFactory, ServiceProcess, TestStack
from services.inbox.live import LISTENER_NAME

pytestmark = pytest.mark.integration

CODEC = Codec.default()
ALERT = "no.carebus.v1.Alert"
ALERT_KEYS = {
    "alert_id",
    "rule_id",
    "title",
    "kind",
    "status",
    "resolution",
    "escalated",
    "deadline",
    "breached_at",
    "escalate_at",
    "recipient",
    "recipient_role",
    "subject",
    "contact",
    "summary",
    "event_ids",
    "acknowledged_at",
    "resolved_at",
    "acknowledged_by",
    "resolved_by",
}
# An alert that names the person also leads to the person view and names whom it is for.
NAMED_ALERT_KEYS = ALERT_KEYS | {"subject_key", "person_url", "accountable", "deputy"}
FACTORY = EventFactory()


def new_org() -> str:
    """A fresh 9-digit organisation number, so tests never share an organisation's alerts."""
    return f"8{uuid.uuid4().int % 10**8:08d}"


@pytest.fixture(scope="module")
def alert_store(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("alert_store")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def inbox(stack: TestStack, alert_store: ServiceProcess) -> Iterator[ServiceProcess]:
    service = stack.start_service("inbox", env={"CAREBUS_INBOX_ESCALATION_INTERVAL_S": "0.2"})
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def client(inbox: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=inbox.url or "", timeout=10) as http:
        yield http


async def token(db: asyncpg.Connection, agency: str, org_id: str, role: str) -> str:
    return await create_token(db, agency=agency, org_id=org_id, role=role)


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


def alert(
    stack: TestStack,
    recipient: str | None,
    *,
    audience: str = "coordinator",
    status: str = "open",
    resolution: str | None = None,
    nin: str | None = "generate",
    rule_id: str = "discharge-ready-reply",
    breached_at: datetime | None = None,
    escalate_at: datetime | None = None,
    event_ids: Sequence[str] = ("dps-974705788-1",),
    alert_id: str | None = None,
) -> dict[str, Any]:
    """An Alert record as the SLA engine writes it (alert.avsc)."""
    person = FACTORY.nin() if nin == "generate" else nin
    now = datetime.now(UTC).replace(microsecond=0)
    key_source = person or FACTORY.nin()
    return {
        "alert_id": alert_id or f"alert-{uuid.uuid4().hex}",
        "rule_id": rule_id,
        "title": "Reply to a discharge-ready notice",
        "kind": "deadline_missed",
        "status": status,
        "resolution": resolution,
        "subject_key": subject_key(
            key_source, stack.settings.subject_key_secret.get_secret_value()
        ),
        "subject": {"nin": person} if person else None,
        "recipient": {"agency": "municipality", "org_id": recipient} if recipient else None,
        "audience": audience,
        "contact": {"agency": "dps", "org_id": "974705788"},
        "deadline": now - timedelta(hours=3),
        "breached_at": breached_at or now - timedelta(hours=1),
        "escalate_at": escalate_at or now + timedelta(days=1),
        "summary": "No reply to the discharge-ready notice.",
        "event_ids": list(event_ids),
        "rules_version": "test-1",
        "changed_at": now,
    }


def resolved(record: dict[str, Any], resolution: str, *event_ids: str) -> dict[str, Any]:
    """The engine's later record of the same alert, resolved by a fulfilment."""
    return {
        **record,
        "status": "resolved",
        "resolution": resolution,
        "event_ids": [*record["event_ids"], *event_ids],
        "changed_at": record["changed_at"] + timedelta(minutes=5),
    }


def produce(
    stack: TestStack, records: Sequence[dict[str, Any] | bytes], raw_key: bytes = b"0" * 64
) -> None:
    """Produce alert records (or raw bytes, keyed `raw_key`) on their writer's topic, as the
    services do (operator-action alerts on care.alerts.operator.v1, the rest on care.alerts.v1),
    and wait."""
    producer = Producer(producer_config(stack.settings, f"test-inbox-{uuid.uuid4().hex}"))
    failures: list[Any] = []
    for record in records:
        topic = topics.ALERTS
        if isinstance(record, bytes):
            key, value = raw_key, record
        else:
            key, value = record["subject_key"].encode(), CODEC.encode(ALERT, record)
            if record["kind"] == OPERATOR_ACTION:
                topic = topics.OPERATOR_ALERTS
        producer.produce(topic, value=value, key=key, on_delivery=lambda e, _m: failures.append(e))
    assert producer.flush(30) == 0
    assert [e for e in failures if e is not None] == []


async def stored(
    db: asyncpg.Connection, alert_ids: Sequence[str], timeout_s: float = 30.0
) -> dict[str, asyncpg.Record]:
    """The rows of `alert_ids` once all are stored (or what is there at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await db.fetch("SELECT * FROM alerts WHERE alert_id = ANY($1::text[])", alert_ids)
        if len(rows) >= len(alert_ids) or time.monotonic() > deadline:
            return {row["alert_id"]: row for row in rows}
        await asyncio.sleep(0.1)


async def eventually(
    db: asyncpg.Connection, alert_id: str, column: str, value: Any, timeout_s: float = 20.0
) -> asyncpg.Record:
    """The row once `column` has `value` (or as it is at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", alert_id)
        if (row is not None and row[column] == value) or time.monotonic() > deadline:
            assert row is not None
            return row
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
        response = await client.get("/v1/alerts", params=query, headers=auth(bearer))
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next"}
        items.extend(body["items"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return items, pages


# --- the sink -------------------------------------------------------------------------------


async def test_an_alert_is_stored_as_the_engine_wrote_it(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """An open alert is served with DESIGN's fields; a resolved one arrives resolved."""
    org = new_org()
    opened = alert(stack, org)
    closed = alert(stack, org, status="resolved", resolution="cancelled", nin=None)
    produce(stack, [opened, closed])
    rows = await stored(db, [opened["alert_id"], closed["alert_id"]])
    assert rows[closed["alert_id"]]["resolved_at"] == closed["changed_at"]

    bearer = await token(db, "municipality", org, "coordinator")
    response = await client.get(f"/v1/alerts/{opened['alert_id']}", headers=auth(bearer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == NAMED_ALERT_KEYS
    assert body["subject"] == {"nin": opened["subject"]["nin"]}
    assert body["person_url"] == f"/persons/{opened['subject_key']}"
    assert body["status"] == "open"
    assert body["escalated"] is False
    assert body["recipient"] == {"agency": "municipality", "org_id": org}
    assert body["contact"] == {"agency": "dps", "org_id": "974705788"}
    assert body["deadline"] == opened["deadline"].isoformat().replace("+00:00", "Z")
    assert body["event_ids"] == opened["event_ids"]
    assert body["acknowledged_at"] is None
    assert body["resolved_at"] is None

    response = await client.get(f"/v1/alerts/{closed['alert_id']}", headers=auth(bearer))
    body = response.json()
    assert "subject" not in body  # the recipient may not know the person
    assert (body["status"], body["resolution"]) == ("resolved", "cancelled")
    assert body["resolved_at"] == closed["changed_at"].isoformat().replace("+00:00", "Z")


async def test_a_replayed_record_changes_nothing(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Published again after an acknowledgement, the open record leaves the alert as it is."""
    org = new_org()
    record = alert(stack, org)
    produce(stack, [record, record])
    await stored(db, [record["alert_id"]])
    bearer = await token(db, "municipality", org, "coordinator")
    acked = await client.post(f"/v1/alerts/{record['alert_id']}/ack", headers=auth(bearer))
    assert acked.json()["status"] == "acknowledged"
    before = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert before is not None

    # Same subject key, so the same partition: once the marker is stored, the replay was read.
    marker = alert(stack, org)
    marker["subject_key"] = record["subject_key"]
    produce(stack, [record, marker])
    await stored(db, [marker["alert_id"]])  # the replay, earlier on its partition, is done
    after = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert after is not None
    assert dict(after) == dict(before)
    count = await db.fetchval("SELECT count(*) FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert count == 1


async def test_engine_resolution_overrides_acknowledgement(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A fulfilment resolves an acknowledged alert; a later resolve by the recipient keeps it."""
    org = new_org()
    record = alert(stack, org)
    produce(stack, [record])
    await stored(db, [record["alert_id"]])
    bearer = await token(db, "municipality", org, "coordinator")
    url = f"/v1/alerts/{record['alert_id']}"
    assert (await client.post(f"{url}/ack", headers=auth(bearer))).status_code == 200

    fulfilled = resolved(record, "fulfilled_late", "municipality-1-reply")
    produce(stack, [fulfilled])
    row = await eventually(db, record["alert_id"], "status", "resolved")
    assert row["resolution"] == "fulfilled_late"
    assert row["resolved_at"] == fulfilled["changed_at"]
    assert list(row["event_ids"]) == fulfilled["event_ids"]
    assert row["acknowledged_at"] is not None

    again = await client.post(f"{url}/resolve", headers=auth(bearer))
    assert again.status_code == 200
    assert again.json()["resolution"] == "fulfilled_late"
    assert again.json()["resolved_at"] == fulfilled["changed_at"].isoformat().replace("+00:00", "Z")

    # A second resolved record (a replay) changes nothing either.
    produce(stack, [resolved(record, "fulfilled_late_report", "other")])
    await asyncio.sleep(1.0)
    again_row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert again_row is not None
    assert again_row["resolution"] == "fulfilled_late"


async def test_self_contradicting_records_are_not_stored(
    stack: TestStack, inbox: ServiceProcess, db: asyncpg.Connection
) -> None:
    """A privacy-officer alert to nobody, an unknown status and garbage are dead-lettered."""
    nobody = alert(stack, None, audience="privacy_officer")
    unknown = alert(stack, new_org(), status="unknown")
    good = alert(stack, new_org())
    # One subject key, so one partition: once `good` is stored, the others were read.
    nobody["subject_key"] = unknown["subject_key"] = good["subject_key"]
    produce(stack, [b"not avro", nobody, unknown, good], raw_key=good["subject_key"].encode())
    rows = await stored(db, [good["alert_id"]])
    assert good["alert_id"] in rows
    assert await stored(db, [nobody["alert_id"], unknown["alert_id"]], 0) == {}


# --- who sees what --------------------------------------------------------------------------


async def test_each_caller_sees_only_alerts_addressed_to_its_role(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Coordinators see their org's coordinator alerts, privacy officers their org's officer
    alerts; anything else is 404 like an unknown id, and a refused call changes nothing."""
    org_a, org_b = new_org(), new_org()
    mine = alert(stack, org_a)
    theirs = alert(stack, org_b)
    for_officer = alert(stack, org_a, audience="privacy_officer", rule_id="emergency")
    queue = alert(stack, None, rule_id=f"queue-{uuid.uuid4().hex}")
    produce(stack, [mine, theirs, for_officer, queue])
    await stored(db, [r["alert_id"] for r in (mine, theirs, for_officer, queue)])

    coordinator = await token(db, "municipality", org_a, "coordinator")
    officer = await token(db, "municipality", org_a, "privacy_officer")
    system = await token(db, "municipality", org_a, "system")

    items, _ = await all_pages(client, coordinator, {})
    assert [i["alert_id"] for i in items] == [mine["alert_id"]]
    items, _ = await all_pages(client, officer, {})
    assert [i["alert_id"] for i in items] == [for_officer["alert_id"]]

    for bearer, alert_id in (
        (coordinator, theirs["alert_id"]),
        (coordinator, for_officer["alert_id"]),
        (coordinator, queue["alert_id"]),
        (officer, mine["alert_id"]),
        (officer, queue["alert_id"]),
    ):
        response = await client.get(f"/v1/alerts/{alert_id}", headers=auth(bearer))
        assert response.status_code == 404, alert_id
        assert response.json()["error"]["code"] == "not_found"
        for action in ("ack", "resolve"):
            refused = await client.post(f"/v1/alerts/{alert_id}/{action}", headers=auth(bearer))
            assert refused.status_code == 404, (alert_id, action)
    for action in ("ack", "resolve"):
        unknown = await client.post(f"/v1/alerts/no-such-alert/{action}", headers=auth(officer))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
    assert (await client.get("/v1/alerts/nope", headers=auth(coordinator))).status_code == 404
    rows = await db.fetch(
        "SELECT status FROM alerts WHERE alert_id = ANY($1::text[])",
        [r["alert_id"] for r in (mine, theirs, for_officer, queue)],
    )
    assert [row["status"] for row in rows] == ["open"] * 4  # the refused calls changed nothing

    ok = await client.get(f"/v1/alerts/{for_officer['alert_id']}", headers=auth(officer))
    assert ok.status_code == 200
    assert (await client.get("/v1/alerts", headers=auth(system))).status_code == 403
    assert (await client.get("/v1/alerts/stream", headers=auth(system))).status_code == 403
    unauthenticated = await client.get("/v1/alerts")
    assert unauthenticated.status_code == 401
    assert set(unauthenticated.json()["error"]) == {"code", "message", "details"}
    bogus = await client.post(f"/v1/alerts/{mine['alert_id']}/ack", headers=auth("cbt_nope"))
    assert bogus.status_code == 401


async def test_the_unassigned_queue_is_the_operators(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Only the operator realm's operator and privacy officer list, read, ack and resolve the
    queue; an agency's privacy officer does not even see that it exists."""
    rule_id = f"queue-{uuid.uuid4().hex}"
    # As the engine raises them: no organisation found, so nobody may learn the person.
    acked, done = (alert(stack, None, rule_id=rule_id, nin=None) for _ in range(2))
    produce(stack, [acked, done])
    await stored(db, [acked["alert_id"], done["alert_id"]])
    operator = await token(db, "operator", OPERATOR_ORG, "operator")
    operator_officer = await token(db, "operator", OPERATOR_ORG, "privacy_officer")
    agency_officer = await token(db, "municipality", new_org(), "privacy_officer")
    expected = sorted([acked["alert_id"], done["alert_id"]])

    for bearer in (operator, operator_officer):
        items, _ = await all_pages(client, bearer, {"rule_id": rule_id})
        assert sorted(i["alert_id"] for i in items) == expected
        assert all(i["recipient"] is None and "subject" not in i for i in items)
    items, _ = await all_pages(client, agency_officer, {"rule_id": rule_id})
    assert items == []

    ack = await client.post(f"/v1/alerts/{acked['alert_id']}/ack", headers=auth(operator))
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"
    url = f"/v1/alerts/{done['alert_id']}/resolve"
    resolved_ = await client.post(url, headers=auth(operator_officer))
    assert resolved_.status_code == 200, resolved_.text
    assert resolved_.json()["status"] == "resolved"
    by_operator = await db.fetchval(
        "SELECT token_id FROM api_tokens WHERE token_hash = $1", hash_token(operator)
    )
    row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", acked["alert_id"])
    assert row is not None
    assert row is not None
    assert row["acknowledged_by"] == by_operator


async def test_only_the_operator_streams_the_unassigned_queue(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A queue alert reaches the operator's live stream and never an agency privacy officer's."""
    org = new_org()
    operator = await token(db, "operator", OPERATOR_ORG, "operator")
    officer = await token(db, "municipality", org, "privacy_officer")
    queue = alert(stack, None)
    mine = alert(stack, org, audience="privacy_officer")
    mine["subject_key"] = queue["subject_key"]  # one partition: the queue alert is stored first

    async with (
        client.stream("GET", "/v1/alerts/stream", headers=auth(operator)) as to_operator,
        client.stream("GET", "/v1/alerts/stream", headers=auth(officer)) as to_officer,
    ):
        assert (to_operator.status_code, to_officer.status_code) == (200, 200)
        operator_lines, officer_lines = to_operator.aiter_lines(), to_officer.aiter_lines()
        assert await asyncio.wait_for(anext(operator_lines), 10) == ": connected"
        assert await asyncio.wait_for(anext(officer_lines), 10) == ": connected"
        await asyncio.to_thread(produce, stack, [queue, mine])
        first_for_officer = await asyncio.wait_for(next_alert(officer_lines), 30)
        for_operator = await asyncio.wait_for(next_alert(operator_lines, queue["alert_id"]), 30)
    assert first_for_officer["alert_id"] == mine["alert_id"]
    assert for_operator["recipient"] is None


async def next_alert(lines: AsyncIterator[str], alert_id: str | None = None) -> dict[str, Any]:
    """The next `event: alert` of a stream (with `alert_id`, the next one of that alert)."""
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "alert":
            found = dict(json.loads(line.removeprefix("data: ")))
            if alert_id is None or found["alert_id"] == alert_id:
                return found
    raise AssertionError("the stream ended")


# --- operator actions -----------------------------------------------------------------------


async def test_an_operator_action_reaches_the_target_privacy_officer_only(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The operator's alert about an organisation is in its privacy officer's inbox, naming no
    person, and in nobody else's: not its coordinator's, another officer's or the operator's."""
    target, other = new_org(), new_org()
    record = operator_action_alert(
        "token_issued",
        OPERATOR_ORG,
        target,
        "municipality",
        datetime.now(UTC).replace(microsecond=0),
        str(uuid.uuid4()),
    )
    produce(stack, [record])
    await stored(db, [record["alert_id"]])
    officer = await token(db, "municipality", target, "privacy_officer")

    items, _ = await all_pages(client, officer, {})
    assert [i["alert_id"] for i in items] == [record["alert_id"]]
    (shown,) = items
    assert set(shown) == ALERT_KEYS - {"subject"}
    assert (shown["kind"], shown["rule_id"], shown["status"]) == (
        "operator_action",
        "operator_action",
        "open",
    )
    assert shown["recipient"] == {"agency": "municipality", "org_id": target}
    assert shown["summary"] == record["summary"]
    assert "issued an API token for your organisation" in shown["summary"]

    others = [
        await token(db, "municipality", target, "coordinator"),
        await token(db, "municipality", other, "privacy_officer"),
        await token(db, "operator", OPERATOR_ORG, "operator"),
        await token(db, "operator", OPERATOR_ORG, "privacy_officer"),
    ]
    for bearer in others:
        items, _ = await all_pages(client, bearer, {"rule_id": "operator_action"})
        assert record["alert_id"] not in {i["alert_id"] for i in items}
        hidden = await client.get(f"/v1/alerts/{record['alert_id']}", headers=auth(bearer))
        assert hidden.status_code == 404

    ack = await client.post(f"/v1/alerts/{record['alert_id']}/ack", headers=auth(officer))
    assert ack.status_code == 200, ack.text
    assert ack.json()["status"] == "acknowledged"


# --- acknowledge and resolve ----------------------------------------------------------------


async def test_ack_and_resolve_are_idempotent(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Repeating ack or resolve is 200 with the alert unchanged; ack after resolve does nothing."""
    org = new_org()
    record = alert(stack, org)
    produce(stack, [record])
    await stored(db, [record["alert_id"]])
    bearer = await token(db, "municipality", org, "coordinator")
    url = f"/v1/alerts/{record['alert_id']}"

    first = await client.post(f"{url}/ack", headers=auth(bearer))
    assert first.status_code == 200
    assert first.json()["status"] == "acknowledged"
    assert first.json()["acknowledged_at"] is not None
    second = await client.post(f"{url}/ack", headers=auth(bearer))
    assert second.json() == first.json()
    token_id = await db.fetchval(
        "SELECT token_id FROM api_tokens WHERE org_id = $1 AND role = 'coordinator'", org
    )
    row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert row is not None
    assert row["acknowledged_by"] == token_id

    done = await client.post(f"{url}/resolve", headers=auth(bearer))
    assert done.status_code == 200
    body = done.json()
    assert (body["status"], body["resolution"]) == ("resolved", "resolved_by_recipient")
    assert body["resolved_at"] is not None
    assert (await client.post(f"{url}/resolve", headers=auth(bearer))).json() == body
    assert (await client.post(f"{url}/ack", headers=auth(bearer))).json() == body
    row = await db.fetchrow("SELECT * FROM alerts WHERE alert_id = $1", record["alert_id"])
    assert row is not None
    assert row["resolved_by"] == token_id


# --- escalation -----------------------------------------------------------------------------


async def test_unacknowledged_alerts_are_escalated_after_escalate_at(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """An alert still open at escalate_at is flagged; an acknowledged one is not."""
    org = new_org()
    # Far enough ahead that storing, acknowledging and reading back finish before it, even on a
    # loaded box (1 s was not).
    soon = datetime.now(UTC) + timedelta(seconds=6)
    left = alert(stack, org, escalate_at=soon)
    worked = alert(stack, org, escalate_at=soon)
    produce(stack, [left, worked])
    await stored(db, [left["alert_id"], worked["alert_id"]])
    bearer = await token(db, "municipality", org, "coordinator")
    await client.post(f"/v1/alerts/{worked['alert_id']}/ack", headers=auth(bearer))
    before = await client.get(f"/v1/alerts/{left['alert_id']}", headers=auth(bearer))
    assert before.json()["escalated"] is False

    row = await eventually(db, left["alert_id"], "escalated", True)
    assert row["escalated"] is True
    assert row["escalated_at"] >= soon
    await asyncio.sleep(0.5)
    items, _ = await all_pages(client, bearer, {"escalated": "true"})
    assert [i["alert_id"] for i in items] == [left["alert_id"]]
    items, _ = await all_pages(client, bearer, {"escalated": "false"})
    assert [i["alert_id"] for i in items] == [worked["alert_id"]]


# --- the live stream ------------------------------------------------------------------------


async def test_the_stream_sends_the_callers_new_and_changed_alerts(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A newly produced alert and its acknowledgement arrive; another org's alert does not."""
    org_a, org_b = new_org(), new_org()
    bearer = await token(db, "municipality", org_a, "coordinator")
    mine = alert(stack, org_a)
    theirs = alert(stack, org_b)
    theirs["subject_key"] = mine["subject_key"]  # one partition: theirs is stored first
    received: list[dict[str, Any]] = []

    async with client.stream("GET", "/v1/alerts/stream", headers=auth(bearer)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 10) == ": connected"
        await asyncio.to_thread(produce, stack, [theirs, mine])
        received.append(await asyncio.wait_for(next_alert(lines), 30))
        ack = await client.post(f"/v1/alerts/{mine['alert_id']}/ack", headers=auth(bearer))
        assert ack.status_code == 200
        received.append(await asyncio.wait_for(next_alert(lines), 10))

    assert [(a["alert_id"], a["status"]) for a in received] == [
        (mine["alert_id"], "open"),
        (mine["alert_id"], "acknowledged"),
    ]
    assert set(received[0]) == NAMED_ALERT_KEYS
    assert received[1] == ack.json()


async def test_the_stream_survives_a_lost_listen_connection(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """After the LISTEN connection is killed the stream says resync, then carries alerts again."""
    org = new_org()
    bearer = await token(db, "municipality", org, "coordinator")
    record = alert(stack, org)
    async with client.stream("GET", "/v1/alerts/stream", headers=auth(bearer)) as response:
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 10) == ": connected"
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            LISTENER_NAME,
        )
        assert killed == 1

        async def next_event() -> tuple[str, str]:
            event = ""
            async for line in lines:
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    return event, line.removeprefix("data: ")
            raise AssertionError("the stream ended")

        assert (await asyncio.wait_for(next_event(), 20))[0] == "resync"
        await asyncio.to_thread(produce, stack, [record])
        event, data = await asyncio.wait_for(next_event(), 30)
    assert (event, json.loads(data)["alert_id"]) == ("alert", record["alert_id"])


async def test_streams_are_let_go_when_their_client_leaves(
    inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The open-stream gauge goes back down after a client disconnects."""
    bearer = await token(db, "municipality", new_org(), "coordinator")

    async def streams() -> float:
        text = (await client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("carebus_inbox_streams "))
        return float(line.split()[1])

    baseline = await streams()
    async with client.stream("GET", "/v1/alerts/stream", headers=auth(bearer)) as response:
        assert await asyncio.wait_for(anext(response.aiter_lines()), 10) == ": connected"
        assert await streams() == baseline + 1
    for _ in range(100):
        if await streams() == baseline:
            break
        await asyncio.sleep(0.1)
    assert await streams() == baseline


# --- listing and paging ---------------------------------------------------------------------


async def test_alerts_page_in_breach_order_without_gaps_and_filter(
    stack: TestStack, inbox: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Following `next` lists every alert once by (breached_at, alert_id); filters narrow it."""
    org = new_org()
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    records = [
        alert(
            stack,
            org,
            breached_at=moment + timedelta(minutes=n % 3),  # shared times: ties by alert_id
            rule_id="housing-before-discharge" if n % 2 else "discharge-ready-reply",
        )
        for n in range(7)
    ]
    produce(stack, records)
    await stored(db, [r["alert_id"] for r in records])
    bearer = await token(db, "municipality", org, "coordinator")
    expected = [
        r["alert_id"] for r in sorted(records, key=lambda r: (r["breached_at"], r["alert_id"]))
    ]

    items, pages = await all_pages(client, bearer, {"limit": 3})
    assert ([i["alert_id"] for i in items], pages) == (expected, 3)
    items, pages = await all_pages(client, bearer, {})
    assert ([i["alert_id"] for i in items], pages) == (expected, 1)

    await client.post(f"/v1/alerts/{expected[0]}/ack", headers=auth(bearer))
    acked, _ = await all_pages(client, bearer, {"status": "acknowledged"})
    assert [i["alert_id"] for i in acked] == [expected[0]]
    still_open, _ = await all_pages(client, bearer, {"status": "open", "limit": 2})
    assert [i["alert_id"] for i in still_open] == expected[1:]
    housing, _ = await all_pages(client, bearer, {"rule_id": "housing-before-discharge"})
    assert {i["alert_id"] for i in housing} == {
        r["alert_id"] for r in records if r["rule_id"] == "housing-before-discharge"
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"escalated": "yes"}, "escalated"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"rule_id": ""}, "rule_id"),
    ],
)
async def test_bad_query_values_are_422_naming_the_parameter(
    inbox: ServiceProcess,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    params: dict[str, str],
    field: str,
) -> None:
    """Every unusable query value is answered 422 with the parameter as the detail's field."""
    bearer = await token(db, "municipality", new_org(), "coordinator")
    response = await client.get("/v1/alerts", params=params, headers=auth(bearer))
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


# --- the page and the shared routes ---------------------------------------------------------


async def test_the_page_is_self_contained_and_served_with_strict_headers(
    client: httpx.AsyncClient,
) -> None:
    """GET / is HTML with the DOM contract's ids, no external URL, a strict CSP, no inline
    script, style or event handler, and no caching."""
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    page = response.text
    script = (await client.get("/static/inbox.js")).text
    for marker in (
        '<a id="signin" href="/login">',
        'id="signed-in"',
        'id="live"',
        'id="filter-status"',
        'id="filter-rule"',
        'id="filter-escalated"',
        'id="alerts"',
        'id="error"',
        '<option value="active" selected>',
        '<script src="/static/inbox.js"></script>',
        '<link rel="stylesheet" href="/static/inbox.css">',
    ):
        assert marker in page, marker
    for marker in ('credentials: "same-origin"', '"X-Carebus-Request": "inbox"', "getReader()"):
        assert marker in script, marker
    # No token is asked for or kept by the page any more: people sign in as themselves.
    for marker in ("sessionStorage", "localStorage", "Authorization"):
        assert marker not in script, marker
    assert 'id="token"' not in page
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == [], "an inline script"
    assert "<style" not in page, "an inline style sheet"
    assert re.findall(r"\s(?:style|on[a-z]+)\s*=", page) == [], "an inline style or handler"
    for text in (page, script):
        assert "http://" not in text
        assert "https://" not in text
    assert "EventSource(" not in script


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/static/inbox.js", "text/javascript"), ("/static/inbox.css", "text/css")],
)
async def test_the_pages_script_and_styles_are_served_cacheable_with_their_types(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    """The page's own files: their content type, nosniff, cached but revalidated by ETag."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "public, no-cache"
    again = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_only_the_pages_own_files_are_served_as_static(client: httpx.AsyncClient) -> None:
    """Any other name under /static is 404 in the error shape; nothing outside is reachable."""
    for path in ("/static/index.htm", "/static/app.py", "/static/..%2Fapp.py"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path


async def test_health_metrics_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    """The shared routes answer, and the OpenAPI document lists every inbox path."""
    assert (await client.get("/healthz")).json()["service"] == "inbox"
    metrics = (await client.get("/metrics")).text
    assert "carebus_inbox_streams" in metrics
    assert "carebus_alerts_escalated_total" in metrics
    paths = set((await client.get("/openapi.json")).json()["paths"])
    assert {
        "/v1/alerts",
        "/v1/alerts/stream",
        "/v1/alerts/{alert_id}",
        "/v1/alerts/{alert_id}/ack",
        "/v1/alerts/{alert_id}/resolve",
        "/login",
        "/callback",
        "/logout",
    } <= paths
