"""Erasure by crypto-shredding end to end, on a stack of its own (docs/retention.md, "Erasure").

A person's events go through the gateway, are routed, stored, delivered over HTTP and by
webhook, and raise an alert. Before erasure the recipients read the nin and free text in clear,
and no store or topic holds either in clear: every text, JSON, byte and array column of every
table and every record of every topic are scanned. After the operator's data protection officer
erases the person, every sealed copy fails to open, the readers answer with the person erased,
and the counts and the disclosure log stay the same.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from carebus.adapters import person_keys
from carebus.adapters.auth import create_token
from carebus.adapters.kafka import consumer_config
from carebus.adapters.webhook_registrations import set_webhook
from carebus.domain.identity import random_nin, subject_key
from carebus.wire.codec import Codec, DecodeError
from carebus.wire.sealing import (
    SEALED_FIELDS,
    Keyring,
    KeyWrap,
    SealedUnreadableError,
    open_sealed,
)
from carebus_dev.stack.devdata import OPERATOR_ORG
from carebus_dev.testing import ServiceProcess, TestStack, at_least
from tests.integration.test_database_roles import connect_as
from tests.integration.test_routing import ORGS
from tests.integration.test_webhooks import Receiver, _Server, make_handler, wait_until

pytestmark = pytest.mark.integration

SERVICES: Final = (
    "gateway",
    "registry",
    "router",
    "sla",
    "event_store",
    "audit_store",
    "alert_store",
    "audit",
    "inbox",
)
FAST_RETRIES: Final = {
    "CAREBUS_WEBHOOK_BACKOFF_INITIAL_S": "0.2",
    "CAREBUS_WEBHOOK_BACKOFF_MAX_S": "0.5",
    "CAREBUS_WEBHOOK_TIMEOUT_S": "3",
}
# Column types that can hold a text: each is scanned whole.
TEXTUAL: Final = ("text", "character varying", "character", "jsonb", "json", "bytea", "ARRAY")
SEALED_VALUE: Final = re.compile(rb"sealed:v1:[0-9]+:[A-Za-z0-9_-]+")
CODEC: Final = Codec.default()
PATHS: Final = tuple(f"{obj}.{name}" for obj, name in SEALED_FIELDS)
COUNTED: Final = {
    "events": "SELECT count(*) FROM events WHERE subject_key = $1",
    "deliveries": "SELECT count(*) FROM deliveries WHERE subject_key = $1",
    "disclosures": "SELECT count(*) FROM disclosures WHERE subject_key = $1",
    "alerts": "SELECT count(*) FROM alerts WHERE subject_key = $1",
    "webhook_queue": "SELECT count(*) FROM webhook_queue WHERE subject_key = $1",
}


@dataclass
class Person:
    """The person erased, with a marker in every free text so a clear copy is found anywhere."""

    nin: str
    key: str
    marker: str = field(default_factory=lambda: "ZQ" + uuid.uuid4().hex[:10].upper())

    @property
    def ward(self) -> str:
        return f"Akutt {self.marker}W"

    @property
    def service(self) -> str:
        return f"Bolig {self.marker}S"

    @property
    def dps_contact(self) -> str:
        return f"Vakthavende {self.marker}D"

    @property
    def justification(self) -> str:
        return f"Fare for liv {self.marker}J"

    @property
    def accountable(self) -> str:
        return f"Overlege {self.marker}A"

    @property
    def clear(self) -> list[bytes]:
        """What must never be found in clear: the nin, and the marker of every free text."""
        return [self.nin.encode(), self.marker.encode()]


@dataclass
class Scan:
    """What a scan of every store or topic read, what it found in clear, and the sealed values
    it found (bytes, with the subject key they belong to, when known)."""

    places: set[str] = field(default_factory=set)  # tables.columns or topics
    units: int = 0  # columns or records read
    clear: list[str] = field(default_factory=list)  # where a clear value was found
    sealed: list[bytes] = field(default_factory=list)
    sealed_at: dict[str, int] = field(default_factory=dict)  # place -> sealed values found

    def found(self, place: str, sealed: list[bytes]) -> None:
        self.sealed.extend(sealed)
        if sealed:
            self.sealed_at[place] = self.sealed_at.get(place, 0) + len(sealed)


@pytest.fixture(scope="module")
def stack() -> Iterator[TestStack]:
    """A stack of its own: the scans read every table and topic, and the test erases."""
    with TestStack() as own:
        yield own


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    server = _Server(("127.0.0.1", 0), make_handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def services(stack: TestStack) -> Iterator[list[ServiceProcess]]:
    started = [stack.start_service(name) for name in SERVICES]
    started.append(stack.start_service("webhooks", env=FAST_RETRIES))
    yield started
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)  # the owner: reads every table
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Connection) -> dict[str, str]:
    made = {
        agency: await create_token(db, agency=agency, org_id=ORGS[agency], role="system")
        for agency in ("dps", "municipality", "police", "nav")
    }
    made["dps_privacy_officer"] = await create_token(
        db, agency="dps", org_id=ORGS["dps"], role="privacy_officer"
    )
    made["municipality_privacy_officer"] = await create_token(
        db, agency="municipality", org_id=ORGS["municipality"], role="privacy_officer"
    )
    made["operator"] = await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="operator"
    )
    made["dpo"] = await create_token(
        db, agency="operator", org_id=OPERATOR_ORG, role="privacy_officer"
    )
    return made


@pytest.fixture(scope="module")
async def http(stack: TestStack) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    settings = stack.settings
    clients = {
        name: httpx.AsyncClient(base_url=settings.service_url(port), timeout=30)
        for name, port in (
            ("gateway", settings.gateway_port),
            ("registry", settings.registry_port),
            ("audit", settings.audit_port),
            ("inbox", settings.inbox_port),
        )
    }
    yield clients
    for client in clients.values():
        await client.aclose()


def auth(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


async def publish(
    http: dict[str, httpx.AsyncClient],
    tokens: dict[str, str],
    agency: str,
    event_type: str,
    nin: str,
    payload: dict[str, Any],
    **extra: Any,
) -> str:
    event_id = f"{agency}-{uuid.uuid4().hex[:16]}"
    body = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": "2026-11-23T08:15:00+01:00",
        "source": {"agency": agency, "org_id": ORGS[agency]},
        "subject": {"nin": nin},
        "payload": payload,
        **extra,
    }
    response = await http["gateway"].post("/v1/events", json=body, headers=auth(tokens, agency))
    assert response.status_code == 202, response.text
    return event_id


def admission(person: Person) -> dict[str, Any]:
    return {
        "reason": "overdose",
        "admission_kind": "voluntary",
        "housing_status": "homeless",
        "needs_municipal_services": True,
        "home_municipality_org": ORGS["municipality"],
        "ward": person.ward,
    }


async def deliveries(
    http: dict[str, httpx.AsyncClient], tokens: dict[str, str], who: str, event_ids: set[str]
) -> list[dict[str, Any]]:
    response = await http["audit"].get(
        "/v1/deliveries", params={"limit": "1000"}, headers=auth(tokens, who)
    )
    assert response.status_code == 200, response.text
    return [d for d in response.json()["items"] if d["event_id"] in event_ids]


async def alerts(
    http: dict[str, httpx.AsyncClient], tokens: dict[str, str], who: str, event_id: str
) -> list[dict[str, Any]]:
    response = await http["inbox"].get("/v1/alerts", headers=auth(tokens, who))
    assert response.status_code == 200, response.text
    return [a for a in response.json()["items"] if event_id in a["event_ids"]]


async def counts(db: asyncpg.Connection, key: str) -> dict[str, int]:
    return {name: await db.fetchval(query, key) for name, query in COUNTED.items()}


async def scan_tables(db: asyncpg.Connection, needles: list[bytes]) -> Scan:
    """Every text, JSON, byte and array column of every table, read whole."""
    scan = Scan()
    columns = await db.fetch(
        """
        SELECT c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
          AND c.data_type = ANY($1::text[])
        ORDER BY c.table_name, c.ordinal_position
        """,
        list(TEXTUAL),
    )
    for column in columns:
        table, name = column["table_name"], column["column_name"]
        scan.places.add(f"{table}.{name}")
        scan.units += 1
        as_bytes = (
            f'"{name}"'
            if column["data_type"] == "bytea"
            else f"convert_to(\"{name}\"::text, 'UTF8')"
        )
        rows = await db.fetch(f'SELECT {as_bytes} AS v FROM "{table}" WHERE "{name}" IS NOT NULL')  # noqa: S608
        for row in rows:
            value = bytes(row["v"])
            for needle in needles:
                if needle in value:
                    scan.clear.append(f"{table}.{name}")
            scan.found(f"{table}.{name}", sealed_in(value))
    return scan


def scan_topics(stack: TestStack, needles: list[bytes]) -> Scan:
    """Every record (key, value, headers) of every topic on the broker, from its beginning."""
    scan = Scan()
    consumer = Consumer(
        consumer_config(
            stack.settings,
            f"test-erasure-{uuid.uuid4().hex}",
            **{"isolation.level": "read_uncommitted"},
        )
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        assigned, ends = [], {}
        for name, topic in metadata.topics.items():
            if name.startswith("__"):  # the broker's own offsets and transactions
                continue
            scan.places.add(name)
            for partition in topic.partitions:
                tp = TopicPartition(name, partition, OFFSET_BEGINNING)
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > low:
                    assigned.append(tp)
                    ends[(name, partition)] = high
        consumer.assign(assigned)
        deadline = time.monotonic() + 60
        while any(
            tp.offset < ends[(tp.topic, tp.partition)]
            for tp in consumer.position([TopicPartition(t, p) for (t, p) in ends])
        ):
            assert time.monotonic() < deadline, "the topics were not read to their ends"
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            scan.units += 1
            parts: list[bytes] = [_bytes(message.key()), _bytes(message.value())]
            parts += [_bytes(header[1]) for header in message.headers() or []]
            for part in parts:
                for needle in needles:
                    if needle in part:
                        scan.clear.append(str(message.topic()))
                scan.found(str(message.topic()), sealed_in(part))
        return scan
    finally:
        consumer.close()


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def sealed_in(value: bytes) -> list[bytes]:
    """The sealed values in a stored or published value: read from the decoded record when it
    is Avro (a binary string's end is not marked), else found in the text."""
    try:
        record = CODEC.decode(value).record
    except DecodeError:
        return SEALED_VALUE.findall(value)
    found: list[bytes] = []
    pending: list[object] = [record]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            found.extend(SEALED_VALUE.findall(item.encode()))
    return found


def opens(keys: Keyring, person: Person, sealed: bytes) -> str | None:
    """The clear text of a sealed value of the person (for whichever field it was sealed), or
    None when it does not open."""
    for path in PATHS:
        try:
            return open_sealed(keys, person.key, path, sealed.decode("ascii"))
        except SealedUnreadableError:
            continue
    return None


async def keyring(stack: TestStack, db: asyncpg.Connection, person: Person) -> Keyring:
    return await person_keys.keyring(db, KeyWrap.from_settings(stack.settings), [person.key])


@dataclass
class Story:
    """What the test module did to the person, for the tests after it."""

    person: Person
    admitted: str
    urgent: str
    applied: str
    discharged: str
    before: dict[str, int] = field(default_factory=dict)
    decisions: int = 0


@pytest.fixture(scope="module")
async def story(
    stack: TestStack,
    services: list[ServiceProcess],
    db: asyncpg.Connection,
    tokens: dict[str, str],
    http: dict[str, httpx.AsyncClient],
    receiver: Receiver,
) -> Story:
    """The person's events, routed, stored, delivered (the police's webhook answers 503 until
    after the erasure) and alerted."""
    nin = random_nin(random.Random())
    person = Person(nin, subject_key(nin, stack.settings.subject_key_secret.get_secret_value()))
    for agency in ("municipality", "police"):
        await set_webhook(db, ORGS[agency], receiver.url(ORGS[agency]), stack.settings)
    receiver.answers[ORGS["police"]] = lambda _key: 503
    admitted = await publish(http, tokens, "dps", "admission", nin, admission(person))
    urgent = await publish(
        http,
        tokens,
        "dps",
        "admission",
        nin,
        admission(person),
        emergency={
            "justification": person.justification,
            "accountable": person.accountable,
            "recipients": [{"agency": "police", "org_id": ORGS["police"]}],
        },
    )
    applied = await publish(
        http,
        tokens,
        "nav",
        "application_received",
        nin,
        {"application_id": f"A-{uuid.uuid4().hex[:8]}", "service": person.service},
    )
    # The home municipality's statutory discharge notice carries whom to contact at the DPS.
    discharged = await publish(
        http,
        tokens,
        "dps",
        "discharge",
        nin,
        {
            "admission_event_id": admitted,
            "destination": "home",
            "crisis_plan": False,
            "dps_contact": person.dps_contact,
        },
    )
    # Routed, stored and delivered: the first start of every service is slow, hence 180 s.
    await at_least(
        lambda: deliveries(http, tokens, "municipality", {admitted, urgent, discharged}),
        3,
        timeout_s=180,
    )
    await at_least(lambda: deliveries(http, tokens, "police", {urgent}), 1, timeout_s=60)
    await at_least(lambda: alerts(http, tokens, "dps_privacy_officer", urgent), 1, timeout_s=60)

    async def stored() -> list[dict[str, Any]]:
        rows = await db.fetch("SELECT event_id FROM events WHERE subject_key = $1", person.key)
        return [dict(row) for row in rows]

    await at_least(stored, 4, timeout_s=60)
    await wait_until(
        lambda: (
            len(receiver.delivered(ORGS["municipality"])) >= 3
            and bool(receiver.received(ORGS["police"]))
        ),
        timeout_s=60,
    )

    # The backdated discharge breaches its epikrise and follow-up deadlines at once: the counts
    # the later tests compare are taken after those alerts are stored.
    async def discharge_alerts() -> list[dict[str, Any]]:
        rows = await db.fetch(
            "SELECT DISTINCT rule_id FROM alerts WHERE subject_key = $1 AND $2 = ANY(event_ids)",
            person.key,
            discharged,
        )
        return [dict(row) for row in rows]

    await at_least(discharge_alerts, 2, timeout_s=60)
    return Story(person, admitted, urgent, applied, discharged)


def coverage(label: str, tables: Scan, topics: Scan) -> None:
    """The figures the issue asks for, printed with `pytest -s`."""
    print(
        f"\n{label}: {len({p.split('.')[0] for p in tables.places})} tables, "
        f"{tables.units} text/json/bytea/array columns scanned, {len(tables.sealed)} sealed "
        f"values in them; {len(topics.places)} topics, {topics.units} records scanned, "
        f"{len(topics.sealed)} sealed values in them"
    )
    print(f"  sealed values by column: {dict(sorted(tables.sealed_at.items()))}")
    print(f"  sealed values by topic: {dict(sorted(topics.sealed_at.items()))}")


async def test_before_erasure_recipients_read_the_clear_values_and_no_store_holds_them(
    stack: TestStack,
    story: Story,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    http: dict[str, httpx.AsyncClient],
    receiver: Receiver,
) -> None:
    """Deliveries over HTTP and webhook and the inbox's alert show the nin and free text as
    before sealing; no column of any table and no record of any topic holds them in clear,
    and every sealed value found opens under the person's key to one of them."""
    person = story.person
    municipal = await deliveries(http, tokens, "municipality", {story.admitted, story.urgent})
    assert [d["subject"] for d in municipal] == [{"nin": person.nin}] * 2
    assert [d["payload"]["ward"] for d in municipal] == [person.ward] * 2
    assert all("erased" not in d for d in municipal)
    [discharge] = await deliveries(http, tokens, "municipality", {story.discharged})
    assert discharge["payload"]["dps_contact"] == person.dps_contact
    [police] = await deliveries(http, tokens, "police", {story.urgent})
    assert police["subject"] == {"nin": person.nin}
    assert police["emergency"] == {
        "justification": person.justification,
        "accountable": person.accountable,
    }
    [alert] = await alerts(http, tokens, "dps_privacy_officer", story.urgent)
    assert alert["subject"] == {"nin": person.nin}
    assert person.justification in alert["summary"]
    assert "erased" not in alert
    hooked = [
        httpx.Response(200, content=r.body).json() for r in receiver.delivered(ORGS["municipality"])
    ]
    assert sorted(d["event_id"] for d in hooked) == sorted(
        [story.admitted, story.urgent, story.discharged]
    )
    assert all(d["subject"] == {"nin": person.nin} for d in hooked)
    assert [d["payload"].get("ward") or d["payload"]["dps_contact"] for d in hooked] == [
        person.dps_contact if d["event_id"] == story.discharged else person.ward for d in hooked
    ]
    tried = [httpx.Response(503, content=r.body).json() for r in receiver.received(ORGS["police"])]
    assert tried
    assert all(d["subject"] == {"nin": person.nin} for d in tried)

    # The scans see what is there: the subject key, which is in clear by design, is found.
    seen = await scan_tables(db, [person.key.encode()])
    assert {"events.subject_key", "deliveries.subject_key", "alerts.subject_key"} <= set(seen.clear)
    assert "care.events.v1" in scan_topics(stack, [person.key.encode()]).clear

    tables, topics = await scan_tables(db, person.clear), scan_topics(stack, person.clear)
    coverage("before erasure", tables, topics)

    assert tables.clear == []
    assert topics.clear == []
    assert {"care.events.v1", "care.alerts.v1"} <= topics.places
    assert {
        "events.payload",
        "deliveries.body",
        "alerts.nin",
        "webhook_queue.body",
    } <= tables.places
    keys = await keyring(stack, db, person)
    clear = {
        person.nin,
        person.ward,
        person.service,
        person.dps_contact,
        person.justification,
        person.accountable,
    }
    for sealed in [*tables.sealed, *topics.sealed]:
        assert opens(keys, person, sealed) in clear
    assert len(tables.sealed) >= 10  # events, deliveries, alerts, the webhook queue
    assert len(topics.sealed) >= 10  # the events, deliveries, alerts topics and changelogs
    story.before = await counts(db, person.key)
    assert story.before["events"] == 4
    assert story.before["deliveries"] >= 3
    assert story.before["alerts"] >= 1
    story.decisions = len(await decisions(http, tokens, person))


async def decisions(
    http: dict[str, httpx.AsyncClient], tokens: dict[str, str], person: Person
) -> list[dict[str, Any]]:
    response = await http["audit"].post(
        "/v1/disclosures/query", json={"nin": person.nin}, headers=auth(tokens, "dpo")
    )
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def erase(
    http: dict[str, httpx.AsyncClient], tokens: dict[str, str], who: str, body: object
) -> httpx.Response:
    return await http["registry"].post("/v1/erasures", json=body, headers=auth(tokens, who))


async def test_only_the_operators_data_protection_officer_may_erase(
    story: Story,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    http: dict[str, httpx.AsyncClient],
) -> None:
    """A bad body is 422 naming the field; anyone but the operator's privacy officer gets 403,
    audited in the person's refusals; nothing changes."""
    person = story.person
    ref = "DPO-2026-0042"
    for body, field_name in (
        ({"nin": "12345678901", "request_ref": ref}, "nin"),
        ({"nin": person.nin}, "request_ref"),
        ({"nin": person.nin, "request_ref": f"case-{person.nin}"}, "request_ref"),
        # Kept for good beside the erased key: a case number, never a name.
        ({"nin": person.nin, "request_ref": "Sletting Kari Nordmann"}, "request_ref"),
        ({"nin": person.nin, "request_ref": ref, "reason": "x"}, "reason"),
    ):
        refused = await erase(http, tokens, "dpo", body)
        assert refused.status_code == 422, refused.text
        assert [d["field"] for d in refused.json()["error"]["details"]] == [field_name]
        assert person.nin not in refused.text
    for who in ("municipality_privacy_officer", "operator", "dps"):
        refused = await erase(http, tokens, who, {"nin": person.nin, "request_ref": ref})
        assert refused.status_code == 403, refused.text
        assert person.nin not in refused.text

    async def audited() -> list[dict[str, Any]]:
        rows = await db.fetch(
            "SELECT actor_org, statement FROM authority_refusals "
            "WHERE subject_key = $1 AND rule_id = 'erasure.data_protection_officer'",
            person.key,
        )
        return [dict(row) for row in rows]

    refusals = await at_least(audited, 3)
    assert sorted(r["actor_org"] for r in refusals) == sorted(
        [ORGS["municipality"], OPERATOR_ORG, ORGS["dps"]]
    )
    assert {r["statement"] for r in refusals} == {"erasure"}
    stored = await db.fetch(
        "SELECT wrapped_key FROM person_keys WHERE subject_key = $1", person.key
    )
    assert [row["wrapped_key"] is not None for row in stored] == [True]


async def test_after_erasure_no_copy_opens_readers_answer_erased_and_counts_stay(
    stack: TestStack,
    story: Story,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    http: dict[str, httpx.AsyncClient],
    receiver: Receiver,
) -> None:
    """The erasure destroys the key: every sealed copy in every table and topic stops opening;
    deliveries, alerts and a webhook sent afterwards name no one; the counts of events,
    deliveries, disclosures and alerts and the disclosure log are unchanged."""
    assert story.before, "runs after the test that reads the stores before erasure"
    person = story.person

    done = await erase(http, tokens, "dpo", {"nin": person.nin, "request_ref": "DPO-2026-0042"})

    assert done.status_code == 201, done.text
    answer = done.json()
    assert set(answer) == {"erasure_id", "request_ref", "erased_at", "keys_erased"}
    assert (answer["request_ref"], answer["keys_erased"]) == ("DPO-2026-0042", 1)
    assert answer["erased_at"].endswith("Z")
    assert person.nin not in done.text
    assert person.key not in done.text
    kept = await db.fetchrow(
        "SELECT wrapped_key, erased_at, erasure_ref FROM person_keys WHERE subject_key = $1",
        person.key,
    )
    assert kept is not None
    assert kept["wrapped_key"] is None
    assert kept["erasure_ref"] == "DPO-2026-0042"
    recorded = await db.fetchval(
        "SELECT detail->>'erasure_id' FROM operator_actions "
        "WHERE action = 'person_erased' AND subject_key = $1",
        person.key,
    )
    assert recorded == answer["erasure_id"]

    tables, topics = await scan_tables(db, person.clear), scan_topics(stack, person.clear)
    coverage("after erasure", tables, topics)
    assert tables.clear == []
    assert topics.clear == []
    keys = await keyring(stack, db, person)
    assert len(tables.sealed) >= 10
    assert len(topics.sealed) >= 10
    assert [s for s in [*tables.sealed, *topics.sealed] if opens(keys, person, s) is not None] == []

    municipal = await deliveries(http, tokens, "municipality", {story.admitted, story.urgent})
    assert len(municipal) == 2
    for delivery in municipal:
        assert (delivery["subject"], delivery["erased"]) == (None, True)
        assert delivery["payload"]["ward"] is None
        assert delivery["payload"]["needs_municipal_services"] is True  # the rest stays
    [discharge] = await deliveries(http, tokens, "municipality", {story.discharged})
    assert (discharge["erased"], discharge["payload"]["dps_contact"]) == (True, None)
    assert discharge["payload"]["destination"] == "home"
    [police] = await deliveries(http, tokens, "police", {story.urgent})
    assert police["emergency"] == {"justification": None, "accountable": None}
    [alert] = await alerts(http, tokens, "dps_privacy_officer", story.urgent)
    assert (alert["subject"], alert["erased"]) == (None, True)
    assert "(erased)" in alert["summary"]
    assert person.marker not in alert["summary"]

    # The police's receiver comes back: the delivery it missed is sent now, naming no one.
    receiver.answers[ORGS["police"]] = lambda _key: 200
    await wait_until(lambda: bool(receiver.delivered(ORGS["police"])))
    [late] = receiver.delivered(ORGS["police"])
    assert person.nin.encode() not in late.body
    assert person.marker.encode() not in late.body
    sent = httpx.Response(200, content=late.body).json()
    assert (sent["subject"], sent["erased"], sent["event_id"]) == (None, True, story.urgent)

    assert await counts(db, person.key) == story.before
    assert len(await decisions(http, tokens, person)) == story.decisions

    again = await erase(http, tokens, "dpo", {"nin": person.nin, "request_ref": "DPO-2026-0043"})
    assert again.status_code == 201, again.text
    assert again.json()["keys_erased"] == 0


async def test_events_after_erasure_start_a_new_key_version_the_old_copies_stay_erased(
    stack: TestStack,
    story: Story,
    db: asyncpg.Connection,
    tokens: dict[str, str],
    http: dict[str, httpx.AsyncClient],
) -> None:
    """A new event about the person is sealed under version 2 and read in clear; what was
    sealed under the erased version 1 stays unreadable."""
    person = story.person
    versions = await db.fetch(
        "SELECT version FROM person_keys WHERE subject_key = $1 AND erased_at IS NOT NULL",
        person.key,
    )
    assert [row["version"] for row in versions] == [1], "runs after the erasure"

    later = await publish(http, tokens, "dps", "admission", person.nin, admission(person))

    [fresh] = await at_least(lambda: deliveries(http, tokens, "municipality", {later}), 1)
    assert fresh["subject"] == {"nin": person.nin}
    assert fresh["payload"]["ward"] == person.ward
    old = await deliveries(http, tokens, "municipality", {story.admitted, story.urgent})
    assert [d["erased"] for d in old] == [True, True]
    rows = await db.fetch(
        "SELECT version, wrapped_key IS NULL AS erased FROM person_keys "
        "WHERE subject_key = $1 ORDER BY version",
        person.key,
    )
    assert [(row["version"], row["erased"]) for row in rows] == [(1, True), (2, False)]

    # The first request again (a client's retry) erases nothing of the new lifecycle; the
    # fingerprints of the events accepted before the erasure are gone (a plain hash of the
    # event with its nin would give the nin back to a brute force; the gateway takes a retry
    # of such an event as a repeat).
    retried = await erase(http, tokens, "dpo", {"nin": person.nin, "request_ref": "DPO-2026-0042"})
    assert (retried.status_code, retried.json()["keys_erased"]) == (201, 0)
    [fresh] = await deliveries(http, tokens, "municipality", {later})
    assert fresh["subject"] == {"nin": person.nin}
    hashes = await db.fetch(
        "SELECT event_id, content_hash FROM accepted_events WHERE subject_key = $1", person.key
    )
    erased_hashes = {r["event_id"] for r in hashes if bytes(r["content_hash"]) == b"\x00"}
    assert story.admitted in erased_hashes
    assert later not in erased_hashes


async def test_no_role_may_restore_change_or_remove_a_key(
    stack: TestStack, story: Story, db: asyncpg.Connection
) -> None:
    """Services read (the gateway also creates) keys; none may change one; only the registry
    may erase (not even the operator's command role); even the owner cannot put an erased key
    back or delete one."""
    person = story.person
    gateway = await connect_as(stack, "gateway")
    audit = await connect_as(stack, "audit")
    operator = await connect_as(stack, "operator")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await gateway.execute(
                "UPDATE person_keys SET wrapped_key = NULL WHERE subject_key = $1", person.key
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await gateway.execute("DELETE FROM person_keys WHERE subject_key = $1", person.key)
        for conn in (audit, operator):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(
                    "SELECT carebus_erase_person($1, 'x', '918000008', gen_random_uuid())",
                    person.key,
                )
        assert await audit.fetchval("SELECT count(*) FROM person_keys") >= 2  # it reads
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the operator reads no key
            await operator.fetchval("SELECT count(*) FROM person_keys")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor inserts an erased row
            await gateway.execute(
                "INSERT INTO person_keys (subject_key, version, erased_at, erasure_ref)"
                " VALUES ($1, 99, now(), 'x')",
                person.key,
            )
    finally:
        await gateway.close()
        await audit.close()
        await operator.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only ever erased"):
        await db.execute(
            "UPDATE person_keys SET wrapped_key = '\\x00'::bytea, erased_at = NULL, "
            "erasure_ref = NULL WHERE subject_key = $1 AND version = 1",
            person.key,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only ever erased"):
        await db.execute("DELETE FROM person_keys WHERE subject_key = $1", person.key)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only ever erased"):
        await db.execute("TRUNCATE person_keys")


def test_no_service_logged_the_nin_or_the_free_text(
    stack: TestStack, story: Story, services: list[ServiceProcess]
) -> None:
    """Sealing, opening and erasing log subject keys only: no service's log holds the nin or
    any of the person's free text, and the registry logged the erasure."""
    for name in (*SERVICES, "webhooks"):
        text = stack.service_log(name).read_text()
        assert story.person.nin not in text, name
        assert story.person.marker not in text, name
    assert "person_erased" in stack.service_log("registry").read_text()
