"""Webhook delivery against the real broker and database, POSTing to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import SecretStr

from carebus.adapters.auth import create_token, ensure_organisation
from carebus.adapters.directory import add_organisation
from carebus.adapters.kafka import consumer_config, producer_config
from carebus.adapters.webhook_registrations import SecretBox, get_webhook, set_webhook
from carebus.domain.deliveries import delivery_id, delivery_to_json
from carebus.domain.identity import random_nin, subject_key
from carebus.runtime.config import local_password_file
from carebus.wire import fhir, plo, topics
from carebus.wire.codec import Codec
from carebus.wire.outbound import Format
from carebus.wire.sealing import KeyWrap
from carebus.wire.translation import Party, StaticDirectory
from carebus_dev.stack.postgres import login_role
from carebus_dev.testing import ServiceProcess, TestStack, free_ports
from consumers.webhooks.protocol import verify_signature
from consumers.webhooks.queue import WebhookQueue

pytestmark = pytest.mark.integration

CODEC = Codec.default()
RNG = random.Random()
SMALL_BACKOFF = {
    "CAREBUS_WEBHOOK_BACKOFF_INITIAL_S": "0.1",
    "CAREBUS_WEBHOOK_BACKOFF_MAX_S": "0.5",
    "CAREBUS_WEBHOOK_TIMEOUT_S": "3",
    # Fewer slots than lines, so that a second worker gets heads to send too.
    "CAREBUS_WEBHOOK_CONCURRENCY": "2",
}

Answer = Callable[[str], int]  # delivery id -> HTTP status to answer
Check = Callable[[dict[str, str], bytes], int]  # headers, body -> HTTP status to answer


@dataclass(frozen=True)
class Received:
    org_id: str
    delivery_id: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


def _accept(_key: str) -> int:
    return 200


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request, answering per organisation."""

    port: int = 0
    answers: dict[str, Answer] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)  # before answers, when set
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, org_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{org_id}"

    def received(self, org_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.org_id == org_id]

    def delivered(self, org_id: str) -> list[Received]:
        """Requests answered 2xx, in the order they arrived."""
        return [r for r in self.received(org_id) if 200 <= r.status < 300]


def make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            org_id = self.path.rsplit("/", 1)[-1]
            key = self.headers.get("Idempotency-Key", "")
            check = receiver.checks.get(org_id)
            if check is not None:
                status = check(dict(self.headers), body)
            else:
                status = receiver.answers.get(org_id, _accept)(key)
            # A careless receiver echoes the request: the nin must still not reach a dead letter.
            answer = json.dumps({"status": status, "echo": body.decode()}).encode()
            with receiver.lock:
                receiver.requests.append(
                    Received(org_id, key, dict(self.headers), body, status, time.monotonic())
                )
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 resets connections when many requests arrive at once.
    request_queue_size = 128


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
def webhooks(stack: TestStack) -> Iterator[ServiceProcess]:
    """The worker as its own process; /healthz on a free port tells when it is up."""
    service = stack.start_service("webhooks", env=SMALL_BACKOFF)
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


def new_org_id() -> str:
    return f"{RNG.randrange(10**8, 10**9)}"


async def with_webhook(
    stack: TestStack, db: asyncpg.Connection, receiver: Receiver, agency: str = "municipality"
) -> tuple[str, str]:
    """A new organisation with a webhook at the receiver; returns (org_id, secret)."""
    org_id = new_org_id()
    await ensure_organisation(db, agency=agency, org_id=org_id)
    webhook = await set_webhook(db, org_id, receiver.url(org_id), stack.settings)
    return org_id, webhook.secret


def signed(request: Received, *secrets: str) -> bool:
    """Whether the request verifies with one of `secrets`, as a receiver checks it now."""
    header = request.headers["X-Carebus-Signature"]
    return verify_signature(secrets, header, request.body, now=time.time())


@dataclass(frozen=True)
class Person:
    nin: str
    key: str


def person(stack: TestStack) -> Person:
    nin = random_nin(RNG)
    return Person(nin, subject_key(nin, stack.settings.subject_key_secret.get_secret_value()))


def delivery(recipient: str, who: Person, *, agency: str = "municipality") -> dict[str, Any]:
    """A Delivery record (schemas/avro/delivery.avsc) as the router would produce it."""
    event_id = f"dps-974705788-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "delivery_id": delivery_id("974705788", event_id, recipient),
        "event_id": event_id,
        "event_type": "discharge",
        "occurred_at": now,
        "decided_at": now,
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "recipient": {"agency": agency, "org_id": recipient},
        "subject": {"nin": who.nin},
        "subject_key": who.key,
        "basis": "statutory",
        "categories": ["logistics"],
        "fields": ["destination"],
        "payload_json": json.dumps({"destination": "home"}),
        "emergency": None,
        "rule_id": "discharge-home-municipality",
        "policy_version": "test",
    }


Placed = tuple[str, int, int]  # topic, partition, offset


def produce(stack: TestStack, messages: Sequence[tuple[str, bytes, bytes]]) -> list[Placed]:
    """Produce (topic, key, value) in order; each one's (topic, partition, offset)."""
    producer = Producer(producer_config(stack.settings, f"test-webhooks-{uuid.uuid4().hex}"))
    placed: list[Placed | None] = [None] * len(messages)

    def report(index: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            placed[index] = (msg.topic(), msg.partition(), msg.offset())

        return on_delivery

    for index, (topic, key, value) in enumerate(messages):
        producer.produce(topic, value=value, key=key, on_delivery=report(index))
    assert producer.flush(30) == 0
    return [p for p in placed if p is not None]


def produce_deliveries(stack: TestStack, records: Sequence[dict[str, Any]]) -> list[Placed]:
    return produce(
        stack,
        [
            (
                topics.deliveries(r["recipient"]["agency"]),
                r["subject_key"].encode(),
                CODEC.encode("no.carebus.v1.Delivery", r),
            )
            for r in records
        ],
    )


async def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)


def dead_letters(
    stack: TestStack, expected: set[Placed], timeout_s: float = 20.0
) -> dict[Placed, dict[str, Any]]:
    """Dead letters of deliveries-topic messages, by the (topic, partition, offset) they name."""
    consumer = Consumer(consumer_config(stack.settings, f"test-dlq-{uuid.uuid4().hex}"))
    meta = consumer.list_topics(topics.DEADLETTER, timeout=10).topics[topics.DEADLETTER]
    consumer.assign(
        [TopicPartition(topics.DEADLETTER, p, OFFSET_BEGINNING) for p in meta.partitions]
    )
    found: dict[Placed, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not expected <= set(found):
            for message in consumer.consume(100, 0.2):
                if message.error():
                    continue
                record = CODEC.decode(message.value() or b"").record
                where = (
                    record["source_topic"],
                    record["source_partition"],
                    record["source_offset"],
                )
                if where in expected:
                    found[where] = {**record, "key": message.key()}
    finally:
        consumer.close()
    return found


def in_order_exactly_once(received: list[Received], records: Sequence[dict[str, Any]]) -> None:
    """Each delivery answered 2xx exactly once, and per person in production order, and no
    request about a person went out before the previous delivery about them was done."""
    delivered = [r.delivery_id for r in received if 200 <= r.status < 300]
    assert sorted(delivered) == sorted({r["delivery_id"] for r in records})
    by_person: dict[str, list[str]] = {}
    for record in records:
        line = by_person.setdefault(record["subject_key"], [])
        if record["delivery_id"] not in line:
            line.append(record["delivery_id"])
    position = {d: (k, i) for k, line in by_person.items() for i, d in enumerate(line)}
    done_upto: dict[str, int] = {}
    for request in received:
        who, index = position[request.delivery_id]
        assert index == done_upto.get(who, 0), "a delivery was sent before its predecessor was done"
        if 200 <= request.status < 300:
            done_upto[who] = index + 1
    assert all(done_upto[k] == len(line) for k, line in by_person.items())


async def queue_statuses(db: asyncpg.Connection, org_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT delivery_id, status FROM webhook_queue WHERE org_id = $1", org_id)
    return {row["delivery_id"]: row["status"] for row in rows}


async def test_deliveries_are_posted_signed_with_idempotency_key(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """Each delivery is POSTed as DESIGN's delivery JSON, signed, keyed by its delivery id."""
    org_id, secret = await with_webhook(stack, db, receiver)
    people = [person(stack) for _ in range(3)]
    records = [delivery(org_id, who) for who in people for _ in range(3)]
    produce_deliveries(stack, records)

    await wait_until(lambda: len(receiver.delivered(org_id)) >= len(records))
    received = receiver.received(org_id)
    in_order_exactly_once(received, records)
    by_id = {r["delivery_id"]: r for r in records}
    for request in received:
        assert request.headers["Content-Type"] == "application/json"
        assert signed(request, secret)
        assert not signed(request, "another secret")
        expected = delivery_to_json(by_id[request.delivery_id])
        assert json.loads(request.body) == expected
        assert request.body == json.dumps(expected, separators=(",", ":")).encode()
    await wait_until_statuses(db, org_id, {r["delivery_id"] for r in records}, "delivered")


async def test_a_plo_webhook_gets_plo_messages_and_json_for_what_plo_cannot_say(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A municipality that chose PLO receives the discharge as a PLO message in MsgHead, valid
    against the XSDs, naming the DPS as sender; a police callout, which PLO has no message for,
    arrives as carebus JSON; both signed over the bytes sent."""
    org_id = new_org_id()
    await ensure_organisation(db, agency="municipality", org_id=org_id)
    await ensure_organisation(db, agency="dps", org_id="974705788")
    await set_webhook(db, org_id, receiver.url(org_id), stack.settings, Format.PLO)
    # A new secret without a format keeps the format: renewing never switches back to JSON.
    webhook = await set_webhook(db, org_id, receiver.url(org_id), stack.settings)
    assert webhook.format is Format.PLO
    who = person(stack)
    discharge = delivery(org_id, who)
    callout = {
        **delivery(org_id, who),
        "event_type": "police_callout",
        "payload_json": json.dumps({"kind": "welfare_check"}),
    }
    callout["delivery_id"] = delivery_id("974705788", callout["event_id"], org_id)
    produce_deliveries(stack, [discharge, callout])

    await wait_until(lambda: len(receiver.delivered(org_id)) >= 2)
    first, second = receiver.delivered(org_id)
    assert first.delivery_id == discharge["delivery_id"]
    assert first.headers["Content-Type"] == "application/xml"
    message = plo.read(first.body)
    assert message.msg_type == "LOG_UTSKREVET"
    assert message.msg_id == discharge["delivery_id"]
    assert message.nin == who.nin
    assert ("ENH", "974705788") in message.sender.idents
    assert ("ENH", org_id) in message.receiver.idents
    assert second.headers["Content-Type"] == "application/json"
    assert json.loads(second.body)["event_type"] == "police_callout"
    assert signed(first, webhook.secret)
    assert signed(second, webhook.secret)


async def test_a_fhir_webhook_gets_an_admission_as_a_fhir_message_the_adapter_reads_back(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A municipality that chose FHIR receives the admission as a FHIR R4 message Bundle
    (application/fhir+json), signed over the bytes sent, naming both organisations and the
    Patient's kommunenummer from the directory; carebus's own FHIR adapter reads it back as the
    admission of the same person, in that municipality."""
    org_id = new_org_id()
    number = await numbered_municipality(db, org_id)
    await ensure_organisation(db, agency="dps", org_id="974705788")
    webhook = await set_webhook(db, org_id, receiver.url(org_id), stack.settings, Format.FHIR)
    who = person(stack)
    admission = {
        **delivery(org_id, who),
        "event_type": "admission",
        "fields": ["home_municipality_org", "needs_municipal_services"],
        "payload_json": json.dumps(
            {"home_municipality_org": org_id, "needs_municipal_services": True}
        ),
    }
    produce_deliveries(stack, [admission])

    await wait_until(lambda: len(receiver.delivered(org_id)) >= 1)
    [request] = receiver.delivered(org_id)
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert signed(request, webhook.secret)
    bundle = json.loads(request.body)
    assert bundle["identifier"]["value"] == admission["delivery_id"]
    header = bundle["entry"][0]["resource"]
    assert header["eventCoding"]["code"] == "admission"
    assert header["sender"]["identifier"]["value"] == "974705788"
    assert header["destination"][0]["receiver"]["identifier"]["value"] == org_id
    directory = StaticDirectory(
        (Party(org_id, "municipality", None, number), Party("974705788", "dps"))
    )
    translation = fhir.translate_bundle(
        bundle, Party("974705788", "dps"), directory, b"read-back-secret"
    )
    [event] = translation.events
    assert (event["event_type"], event["subject"]) == ("admission", {"nin": who.nin})
    assert event["payload"]["home_municipality_org"] == org_id
    assert datetime.fromisoformat(event["occurred_at"]) == admission["occurred_at"]


async def numbered_municipality(db: asyncpg.Connection, org_id: str) -> str:
    """Register `org_id` as a municipality with a kommunenummer no other organisation has."""
    for _ in range(20):
        number = f"{RNG.randrange(9000, 10000)}"
        try:
            await add_organisation(
                db, agency="municipality", org_id=org_id, name="Kommune", municipality_number=number
            )
        except ValueError:
            continue
        return number
    raise AssertionError("no free kommunenummer")


async def wait_until_statuses(
    db: asyncpg.Connection, org_id: str, ids: set[str], status: str, timeout_s: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout_s
    statuses = await queue_statuses(db, org_id)
    while time.monotonic() < deadline and any(statuses.get(i) != status for i in ids):
        await asyncio.sleep(0.05)
        statuses = await queue_statuses(db, org_id)
    assert {statuses.get(i) for i in ids} == {status}


async def test_a_receiver_down_for_a_while_gets_everything_once_in_order(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """503 for the first 3 s, then 200: every delivery exactly once, in order per person —
    with two worker processes sharing the queue, and some deliveries produced twice."""
    second = stack.start_service("webhooks", name="webhooks-second", env=SMALL_BACKOFF)
    try:
        org_id, secret = await with_webhook(stack, db, receiver)
        first_seen: list[float] = []

        def answer(_key: str) -> int:
            time.sleep(0.02)  # requests overlap, across lines and across the two workers
            first_seen.append(time.monotonic())
            return 503 if time.monotonic() - first_seen[0] < 3.0 else 200

        receiver.answers[org_id] = answer
        people = [person(stack) for _ in range(6)]
        records = [delivery(org_id, who) for _ in range(10) for who in people]
        replayed = records[:7]  # a restarted router produces these again
        produce_deliveries(stack, records[:30])
        produce_deliveries(stack, replayed + records[30:])

        await wait_until(lambda: len(receiver.delivered(org_id)) >= len(records), timeout_s=60)
        await asyncio.sleep(1.0)  # late duplicates would show up now
        received = receiver.received(org_id)
        assert any(r.status == 503 for r in received)
        in_order_exactly_once(received, records)
        assert all(signed(r, secret) for r in received)
        await wait_until_statuses(db, org_id, {r["delivery_id"] for r in records}, "delivered")
        assert len(await queue_statuses(db, org_id)) == len(records)
        # Which worker sent what is up to timing (usually both send some); what must hold
        # either way is the exactly-once, in-order result above.
    finally:
        assert second.stop() == 0


async def test_only_the_head_of_a_line_is_due(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """Rows behind a pending head wait at infinity; they become due one by one as heads finish."""
    org_id, _secret = await with_webhook(stack, db, receiver)
    receiver.answers[org_id] = lambda _key: 503
    who = person(stack)
    records = [delivery(org_id, who) for _ in range(3)]
    produce_deliveries(stack, records)
    await wait_until(lambda: len(receiver.received(org_id)) >= 2)
    rows = await db.fetch(
        "SELECT delivery_id, next_attempt_at = 'infinity' AS waiting FROM webhook_queue"
        " WHERE org_id = $1 ORDER BY seq",
        org_id,
    )
    assert [(r["delivery_id"], r["waiting"]) for r in rows] == [
        (records[0]["delivery_id"], False),
        (records[1]["delivery_id"], True),
        (records[2]["delivery_id"], True),
    ]
    assert {r.delivery_id for r in receiver.received(org_id)} == {records[0]["delivery_id"]}
    receiver.answers[org_id] = lambda _key: 200
    await wait_until(lambda: len(receiver.delivered(org_id)) == 3)
    in_order_exactly_once(receiver.received(org_id), records)


async def test_a_head_left_waiting_is_swept_up(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """The safety net: a head wrongly left at infinity is made due and delivered."""
    org_id, _secret = await with_webhook(stack, db, receiver)
    who = person(stack)
    record = delivery(org_id, who)
    body = json.dumps(delivery_to_json(record), separators=(",", ":")).encode()
    await db.execute(
        """
        INSERT INTO webhook_queue (delivery_id, org_id, agency, subject_key, body, source_topic,
            source_partition, source_offset, source_value, next_attempt_at)
        VALUES ($1, $2, 'municipality', $3, $4, $5, 0, 0, $6, 'infinity')
        """,
        record["delivery_id"],
        org_id,
        who.key,
        body,
        topics.deliveries("municipality"),
        CODEC.encode("no.carebus.v1.Delivery", record),
    )
    pool = await asyncpg.create_pool(stack.settings.postgres_dsn, min_size=1, max_size=1)
    try:
        assert (
            await WebhookQueue(
                pool, SecretBox.from_settings(stack.settings), KeyWrap.from_settings(stack.settings)
            ).unstick()
            == 1
        )
    finally:
        await pool.close()
    # Nothing new is produced: the dispatcher's idle round finds the row.
    await wait_until(lambda: len(receiver.delivered(org_id)) == 1, timeout_s=15)
    assert [r.body for r in receiver.delivered(org_id)] == [body]


async def test_a_delivery_produced_again_later_is_not_sent_again(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A delivery re-produced after it was delivered is recognised by its delivery id."""
    org_id, _secret = await with_webhook(stack, db, receiver)
    who = person(stack)
    record = delivery(org_id, who)
    produce_deliveries(stack, [record])
    await wait_until(lambda: len(receiver.delivered(org_id)) == 1)
    marker = delivery(org_id, who)  # same line, after the duplicate: proves it was read
    produce_deliveries(stack, [record, marker])
    await wait_until(lambda: len(receiver.delivered(org_id)) >= 2)
    await asyncio.sleep(0.5)
    assert [r.delivery_id for r in receiver.received(org_id)] == [
        record["delivery_id"],
        marker["delivery_id"],
    ]


async def test_a_4xx_is_dead_lettered_and_the_next_delivery_still_arrives(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """422 is fatal: one attempt, a dead letter with status and content type but no body,
    and the person's next delivery goes through."""
    org_id, _secret = await with_webhook(stack, db, receiver, agency="nav")
    who = person(stack)
    rejected, following = delivery(org_id, who, agency="nav"), delivery(org_id, who, agency="nav")
    receiver.answers[org_id] = lambda key: 422 if key == rejected["delivery_id"] else 200
    placed = produce_deliveries(stack, [rejected, following])

    await wait_until(lambda: len(receiver.delivered(org_id)) >= 1)
    assert [(r.delivery_id, r.status) for r in receiver.received(org_id)] == [
        (rejected["delivery_id"], 422),
        (following["delivery_id"], 200),
    ]
    letters = dead_letters(stack, {placed[0]})
    letter = letters[placed[0]]
    assert letter["reason"] == "webhook_rejected"
    assert letter["consumer"] == "webhooks"
    assert "HTTP 422 (application/json)" in letter["detail"]
    assert who.nin not in letter["detail"]
    assert letter["key"] == who.key.encode()
    assert CODEC.decode(letter["original_value"]).record["delivery_id"] == rejected["delivery_id"]
    statuses = await queue_statuses(db, org_id)
    assert statuses[rejected["delivery_id"]] == "dead"


async def test_an_organisation_without_webhook_is_skipped(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """Deliveries for an organisation that reads over HTTP are not queued, only counted."""
    org_id, _secret = await with_webhook(stack, db, receiver, agency="housing")
    reader = new_org_id()
    await ensure_organisation(db, agency="housing", org_id=reader)
    who = person(stack)
    skipped = delivery(reader, who, agency="housing")
    marker = delivery(org_id, who, agency="housing")  # same partition, after it
    produce_deliveries(stack, [skipped, marker])
    await wait_until(lambda: len(receiver.delivered(org_id)) == 1)
    assert receiver.received(reader) == []
    assert await queue_statuses(db, reader) == {}
    async with httpx.AsyncClient() as client:
        exposition = (await client.get(f"{webhooks.url}/metrics")).text
    assert 'carebus_webhook_skipped_total{agency="housing"}' in exposition
    assert 'carebus_webhook_delivered_total{agency="housing"}' in exposition


async def test_retries_end_in_a_dead_letter_and_sigterm_is_clean(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A receiver that never recovers: retried for webhook_retry_for_s, then dead-lettered.

    Runs with a 2 s retry window, so the worker is restarted (SIGTERM exits 0) with it.
    """
    assert webhooks.stop() == 0
    webhooks.env["CAREBUS_WEBHOOK_RETRY_FOR_S"] = "2"
    webhooks.proc = None
    webhooks.start()
    try:
        org_id, _secret = await with_webhook(stack, db, receiver, agency="fastlege")
        receiver.answers[org_id] = lambda _key: 503
        who = person(stack)
        record = delivery(org_id, who, agency="fastlege")
        placed = produce_deliveries(stack, [record])
        letter = dead_letters(stack, set(placed), timeout_s=30)[placed[0]]
        assert letter["reason"] == "webhook_retries_exhausted"
        assert "HTTP 503" in letter["detail"]
        assert len(receiver.received(org_id)) >= 3
        await wait_until_statuses(db, org_id, {record["delivery_id"]}, "dead")
    finally:
        assert webhooks.stop() == 0
        del webhooks.env["CAREBUS_WEBHOOK_RETRY_FOR_S"]
        webhooks.proc = None
        webhooks.start()


async def test_a_new_secret_does_not_dead_letter_what_is_in_flight(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A registration issues a new secret while deliveries wait; the receiver still checks the
    old one and gets every delivery all the same (both secrets sign during the grace period),
    and a receiver already on the new secret verifies them too."""
    org_id, old = await with_webhook(stack, db, receiver)
    receiver.answers[org_id] = lambda _key: 503
    who = person(stack)
    records = [delivery(org_id, who) for _ in range(3)]
    produce_deliveries(stack, records)
    await wait_until(lambda: len(receiver.received(org_id)) >= 1)
    new = (await set_webhook(db, org_id, receiver.url(org_id), stack.settings)).secret

    def old_secret_only(headers: dict[str, str], body: bytes) -> int:
        header = headers["X-Carebus-Signature"]
        return 200 if verify_signature([old], header, body, now=time.time()) else 401

    receiver.checks[org_id] = old_secret_only
    await wait_until(lambda: len(receiver.delivered(org_id)) >= 3)
    in_order_exactly_once(receiver.received(org_id), records)
    assert all(signed(r, new) for r in receiver.delivered(org_id))
    await wait_until_statuses(db, org_id, {r["delivery_id"] for r in records}, "delivered")


async def test_a_target_in_the_private_network_is_dead_lettered_without_a_request(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A URL naming the metadata service (written behind the registration's back) is refused at
    send time, even where loopback receivers are allowed: one attempt, a dead letter saying
    so, never a retry."""
    org_id, _secret = await with_webhook(stack, db, receiver, agency="police")
    await db.execute(
        "UPDATE webhooks SET url = 'http://169.254.169.254/latest/meta-data/' WHERE org_id = $1",
        org_id,
    )
    record = delivery(org_id, person(stack), agency="police")
    placed = produce_deliveries(stack, [record])
    letter = dead_letters(stack, set(placed))[placed[0]]
    assert letter["reason"] == "webhook_rejected"
    assert "target refused: host is link-local" in letter["detail"]
    assert "169.254" not in letter["detail"]
    await wait_until_statuses(db, org_id, {record["delivery_id"]}, "dead")
    assert (
        await db.fetchval(
            "SELECT attempts FROM webhook_queue WHERE delivery_id = $1", record["delivery_id"]
        )
        == 1
    )


def redrive(stack: TestStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carebus.ops.cli", "webhook", "redrive", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_redrive_queues_dead_deliveries_again_once_with_their_ids(
    stack: TestStack, webhooks: ServiceProcess, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """`carebus webhook redrive` sends dead deliveries again (one named, then the rest), with
    their delivery ids, in order; a second run changes nothing; each run that revived
    something is in operator_actions."""
    org_id, _secret = await with_webhook(stack, db, receiver, agency="housing")
    receiver.answers[org_id] = lambda _key: 410
    who = person(stack)
    first, second = delivery(org_id, who, agency="housing"), delivery(org_id, who, agency="housing")
    ids = [first["delivery_id"], second["delivery_id"]]
    produce_deliveries(stack, [first, second])
    await wait_until_statuses(db, org_id, set(ids), "dead", timeout_s=30)
    receiver.answers[org_id] = _accept

    named = redrive(stack, "--org", org_id, "--delivery", ids[0])
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines() == [
        f"queued again  {ids[0]}",
        f"1 dead webhook deliveries of {org_id} queued again",
    ]
    await wait_until_statuses(db, org_id, {ids[0]}, "delivered")
    rest = redrive(stack, "--org", org_id, "--since", "2000-01-01")
    assert rest.returncode == 0, rest.stderr
    assert f"queued again  {ids[1]}" in rest.stdout
    await wait_until_statuses(db, org_id, set(ids), "delivered")
    again = redrive(stack, "--org", org_id)
    assert again.stdout.strip() == f"0 dead webhook deliveries of {org_id} queued again"

    assert [r.delivery_id for r in receiver.delivered(org_id)] == ids
    actions = await db.fetch(
        "SELECT action, detail FROM operator_actions WHERE target_org = $1 ORDER BY at", org_id
    )
    assert [a["action"] for a in actions] == ["webhook_redriven"] * 2
    assert [json.loads(a["detail"])["delivery_ids"] for a in actions] == [[ids[0]], [ids[1]]]
    assert redrive(stack, "--org", "12345").returncode == 1


# The staging registry seals with its own key; reading its rows back needs the same one.
STAGING_WEBHOOK_KEY = "another-long-random-secret-for-staging"


async def test_outside_local_development_registration_takes_public_https_urls_only(
    stack: TestStack, db: asyncpg.Connection
) -> None:
    """A registry outside local development answers 422 naming `url` for an http URL, a literal
    private or metadata address and a metadata name, changes nothing, and takes public https;
    GET shows until when the replaced secret still signs."""
    org_id = new_org_id()
    token = await create_token(db, agency="nav", org_id=org_id, role="system")
    registry = stack.start_service(
        "registry",
        name="registry-staging",
        port=free_ports(1)[0],
        # Outside development nothing falls back to the local stack's public defaults or its
        # password files: the secrets and the role's password are given as production does.
        env={
            "CAREBUS_ENVIRONMENT": "staging",
            "CAREBUS_SUBJECT_KEY_SECRET": "a-long-random-secret-for-staging",
            # The registry seals contact persons' names under each person's key (issue 17).
            "CAREBUS_PERSON_KEY_SECRET": "a-long-random-person-key-secret-for-staging",
            "CAREBUS_WEBHOOK_SECRET_KEY": STAGING_WEBHOOK_KEY,
            "CAREBUS_POSTGRES_PASSWORD": local_password_file(
                stack.state_dir, login_role("registry")
            )
            .read_text()
            .strip(),
        },
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert registry.url is not None
    try:
        async with httpx.AsyncClient(base_url=registry.url, headers=headers) as client:
            refused = [
                await client.put("/v1/webhooks", json={"url": url})
                for url in (
                    "http://nav.example/hook",
                    "https://127.0.0.1:18082/x",
                    "https://[::ffff:a9fe:a9fe]/latest",
                    "https://metadata.google.internal/computeMetadata/v1/",
                )
            ]
            missing = await client.get("/v1/webhooks")
            first = await client.put("/v1/webhooks", json={"url": "https://nav.example/hook"})
            unknown = await client.put(
                "/v1/webhooks", json={"url": "https://nav.example/hook", "format": "edifact"}
            )
            # NAV's deliveries never name their source: no standard format for NAV.
            not_for_nav = await client.put(
                "/v1/webhooks", json={"url": "https://nav.example/hook", "format": "fhir"}
            )
            second = await client.put(
                "/v1/webhooks", json={"url": "https://nav.example/hook", "format": "carebus"}
            )
            shown = await client.get("/v1/webhooks")
    finally:
        registry.stop()
    for response in refused:
        assert response.status_code == 422, response.text
        assert [d["field"] for d in response.json()["error"]["details"]] == ["url"]
    assert missing.status_code == 404
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["format"], second.json()["format"]) == ("carebus", "carebus")
    for response in (unknown, not_for_nav):
        assert response.status_code == 422, response.text
        assert [d["field"] for d in response.json()["error"]["details"]] == ["format"]
    assert shown.json()["format"] == "carebus"
    assert shown.json()["previous_secret_valid_until"] is not None
    staging = stack.settings.model_copy(
        update={"webhook_secret_key": SecretStr(STAGING_WEBHOOK_KEY)}
    )
    stored = await get_webhook(db, org_id, staging)
    assert stored is not None
    assert stored.signing_secrets == (second.json()["secret"], first.json()["secret"])
