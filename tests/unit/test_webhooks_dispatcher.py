"""The dispatcher loop against an in-memory queue, a fake broker and httpx's mock transport."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from carebus.adapters.deadletter import DeadLetterPolicy
from carebus.adapters.sink import sink_retry
from carebus.domain.webhook_targets import TargetPolicy
from carebus.wire import plo
from carebus.wire.codec import Codec
from carebus.wire.outbound import Addressee, Format, RenderError
from consumers.webhooks import protocol
from consumers.webhooks.dispatcher import NAME as WEBHOOKS_NAME
from consumers.webhooks.dispatcher import Dispatcher
from consumers.webhooks.protocol import RetryPolicy, signature, verify_signature
from consumers.webhooks.queue import Claim, QueuedSource
from consumers.webhooks.targets import RefusedTargetError

CODEC = Codec.default()
SECRET = "webhook-secret"
NOW = 1764979200.0  # the dispatcher's clock in these tests (unix seconds)
LOCAL = TargetPolicy(allow_http=True, allow_private=True)
OUTBOUND: dict[str, Any] = {
    "event_id": "dps-1",
    "event_type": "admission",
    "occurred_at": "2026-12-07T08:15:00Z",
    "subject": {"nin": "15076500565"},
    "basis": "consent",
    "categories": [],
    "payload": {"home_municipality_org": "940493021"},
}


@dataclass
class Row:
    seq: int
    delivery_id: str
    subject_key: str
    body: bytes
    status: str = "pending"
    attempts: int = 0
    first_at: float | None = None
    next_at: float = 0.0
    last_error: str | None = None


@dataclass
class FakeQueue:
    """webhook_queue's rules in memory: one line per subject key, heads only, leases."""

    url: str | None = "http://receiver.test/hook"
    secrets: tuple[str, ...] = (SECRET,)
    rows: list[Row] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    lease_s: float | None = None  # instead of the dispatcher's (0: due again at once)
    format: Format = Format.CAREBUS
    sender: Addressee | None = None
    recipient: Addressee | None = None

    def add(self, delivery_id: str, subject_key: str = "a" * 64, body: bytes | None = None) -> None:
        body = body or f'{{"delivery_id":"{delivery_id}"}}'.encode()
        self.rows.append(Row(len(self.rows) + 1, delivery_id, subject_key, body))

    def _heads(self) -> list[Row]:
        seen: set[str] = set()
        heads = []
        for row in self.rows:
            if row.status == "pending" and row.subject_key not in seen:
                seen.add(row.subject_key)
                heads.append(row)
        return heads

    async def claim(
        self, limit: int, lease_s: float, *, passing_over: Sequence[int] = ()
    ) -> list[Claim]:
        now = time.monotonic()
        heads = [row for row in self._heads() if row.seq not in passing_over]
        due = [row for row in heads if row.next_at <= now][:limit]
        claims = []
        for row in due:
            row.attempts += 1
            row.first_at = row.first_at or now
            row.next_at = now + (lease_s if self.lease_s is None else self.lease_s)
            claims.append(
                Claim(
                    seq=row.seq,
                    delivery_id=row.delivery_id,
                    org_id="940493021",
                    agency="municipality",
                    subject_key=row.subject_key,
                    body=row.body,
                    attempts=row.attempts,
                    elapsed_s=now - row.first_at,
                    url=self.url,
                    secrets=self.secrets if self.url else (),
                    format=self.format,
                    sender=self.sender,
                    recipient=self.recipient,
                )
            )
        return claims

    async def next_due_in(self) -> float | None:
        heads = self._heads()
        return min(row.next_at for row in heads) - time.monotonic() if heads else None

    def _held(self, claim: Claim) -> Row | None:
        row = self.rows[claim.seq - 1]
        ok = row.status == "pending" and row.attempts == claim.attempts
        return row if ok else None

    async def delivered(self, claim: Claim, status: int) -> bool:
        row = self._held(claim)
        if row:
            row.status = "delivered"
            self.events.append(("delivered", claim.delivery_id))
        return row is not None

    async def reschedule(
        self, claim: Claim, delay_s: float, status: int | None, error: str
    ) -> bool:
        row = self._held(claim)
        if row:
            row.next_at = time.monotonic() + delay_s
            row.last_error = error
            self.events.append(("retry", claim.delivery_id))
        return row is not None

    async def dead(self, claim: Claim, status: int | None, error: str) -> bool:
        row = self._held(claim)
        if row:
            row.status, row.last_error = "dead", error
            self.events.append(("dead", claim.delivery_id))
        return row is not None

    async def source(self, claim: Claim) -> QueuedSource:
        return QueuedSource("care.deliveries.municipality.v1", 1, claim.seq, b"k" * 64, b"avro")

    async def unstick(self) -> int:
        return 0

    async def pending_by_agency(self) -> dict[str, tuple[int, float]]:
        return {"municipality": (sum(1 for row in self.rows if row.status == "pending"), 0.0)}


@dataclass
class UnreliableQueue(FakeQueue):
    """A FakeQueue on a database that refuses the next `claim_outages` claims and the next
    `record_outages` recordings of a delivery (ConnectionRefusedError, an outage)."""

    claim_outages: int = 0
    record_outages: int = 0
    claims: int = 0
    refused_records: int = 0

    async def claim(
        self, limit: int, lease_s: float, *, passing_over: Sequence[int] = ()
    ) -> list[Claim]:
        self.claims += 1
        if self.claim_outages:
            self.claim_outages -= 1
            raise ConnectionRefusedError("database unreachable")
        return await super().claim(limit, lease_s, passing_over=passing_over)

    async def delivered(self, claim: Claim, status: int) -> bool:
        if self.record_outages:
            self.record_outages -= 1
            self.refused_records += 1
            raise ConnectionRefusedError("database unreachable")
        return await super().delivered(claim, status)


@dataclass
class FakeProducer:
    """Acknowledges every dead letter on flush (or fails it with the next of `failures`), and
    notes it in the queue's event list."""

    queue: FakeQueue
    produced: list[dict[str, Any]] = field(default_factory=list)
    reports: list[Callable[[Any, Any], None]] = field(default_factory=list)
    failures: list[KafkaError] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.produced.append(CODEC.decode(value or b"").record)
        if on_delivery:
            self.reports.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        for report in self.reports:
            failure = self.failures.pop(0) if self.failures else None
            report(failure, None)
            outcome = "dead_letter_failed" if failure else "dead_letter_acknowledged"
            self.queue.events.append((outcome, ""))
        self.reports.clear()
        return 0


Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


async def dispatch(
    queue: FakeQueue,
    handler: Handler,
    *,
    until: Callable[[], bool],
    concurrency: int = 4,
    retry_for_s: float = 60.0,
    timeout_s: float = 2.0,
    producer: FakeProducer | None = None,
    targets: TargetPolicy = LOCAL,
) -> FakeProducer:
    """Run a dispatcher until `until()` holds (or 10 s pass), then stop it."""
    producer = producer or FakeProducer(queue)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    dispatcher = Dispatcher(
        queue=queue,  # type: ignore[arg-type]
        client=client,
        dead_letters=DeadLetterPolicy(producer, CODEC, "webhooks"),
        retry=RetryPolicy(initial_s=0.02, maximum_s=0.05, retry_for_s=retry_for_s),
        targets=targets,
        concurrency=concurrency,
        timeout_s=timeout_s,
        idle_s=0.2,
        outage_retry=sink_retry(initial_s=0.01, maximum_s=0.05),
        clock=lambda: NOW,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if until():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    await client.aclose()
    assert until(), "the dispatcher did not get there within 10 s"
    return producer


def finished(queue: FakeQueue) -> Callable[[], bool]:
    return lambda: all(row.status != "pending" for row in queue.rows)


async def test_posts_signed_json_with_idempotency_key() -> None:
    """Each delivery is POSTed once, signed over the exact body, keyed by its delivery id."""
    queue = FakeQueue()
    queue.add("d-1")
    queue.add("d-2", subject_key="b" * 64)
    requests: list[httpx.Request] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    await dispatch(queue, receiver, until=finished(queue))
    assert sorted(r.headers["Idempotency-Key"] for r in requests) == ["d-1", "d-2"]
    for request in requests:
        assert request.method == "POST"
        assert request.url == "http://receiver.test/hook"
        assert request.headers["Content-Type"] == "application/json"
        expected = signature(request.content, [SECRET], int(NOW))
        assert request.headers["X-Carebus-Signature"] == expected
    assert {row.status for row in queue.rows} == {"delivered"}


async def test_a_plo_webhook_gets_signed_plo_for_logistics_and_json_for_the_rest() -> None:
    """The body is rendered at sending in the webhook's format; the signature covers the bytes
    sent, and the Content-Type says which format they are."""
    sender = Addressee("974749025", "dps", "DPS", "59")
    recipient = Addressee("940493021", "municipality", "Kommune", None)
    queue = FakeQueue(format=Format.PLO, sender=sender, recipient=recipient)
    admission = dict(OUTBOUND, event_type="admission", delivery_id="d-1")
    police = dict(OUTBOUND, event_type="police_callout", delivery_id="d-2")
    queue.add("d-1", body=json.dumps(admission).encode())
    queue.add("d-2", subject_key="b" * 64, body=json.dumps(police).encode())
    requests: dict[str, httpx.Request] = {}

    async def receiver(request: httpx.Request) -> httpx.Response:
        requests[request.headers["Idempotency-Key"]] = request
        return httpx.Response(204)

    await dispatch(queue, receiver, until=finished(queue))
    plo_request, json_request = requests["d-1"], requests["d-2"]
    assert plo_request.headers["Content-Type"] == "application/xml"
    assert plo.read(plo_request.content).msg_id == "d-1"
    assert json_request.headers["Content-Type"] == "application/json"
    assert json.loads(json_request.content)["event_type"] == "police_callout"
    for request in requests.values():
        header = request.headers["X-Carebus-Signature"]
        assert verify_signature([SECRET], header, request.content, now=NOW)
    assert {row.status for row in queue.rows} == {"delivered"}


async def test_a_fhir_webhook_gets_a_signed_fhir_message_for_an_admission() -> None:
    """A webhook of format fhir gets an admission as a FHIR message Bundle
    (application/fhir+json), signed over the bytes sent; another event goes as JSON."""
    sender = Addressee("974749025", "dps", "", "59")  # a directory entry without a name
    recipient = Addressee("940493021", "municipality", "Kommune", None, "0301")
    queue = FakeQueue(format=Format.FHIR, sender=sender, recipient=recipient)
    admission = dict(OUTBOUND, event_type="admission", delivery_id="d-1", event_id="e-1")
    police = dict(OUTBOUND, event_type="police_callout", delivery_id="d-2")
    queue.add("d-1", body=json.dumps(admission).encode())
    queue.add("d-2", subject_key="b" * 64, body=json.dumps(police).encode())
    requests: dict[str, httpx.Request] = {}

    async def receiver(request: httpx.Request) -> httpx.Response:
        requests[request.headers["Idempotency-Key"]] = request
        return httpx.Response(204)

    await dispatch(queue, receiver, until=finished(queue))
    fhir_request, json_request = requests["d-1"], requests["d-2"]
    assert fhir_request.headers["Content-Type"] == "application/fhir+json"
    bundle = json.loads(fhir_request.content)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "message")
    assert bundle["identifier"]["value"] == "d-1"
    assert json_request.headers["Content-Type"] == "application/json"
    for request in requests.values():
        header = request.headers["X-Carebus-Signature"]
        assert verify_signature([SECRET], header, request.content, now=NOW)
    assert {row.status for row in queue.rows} == {"delivered"}


async def test_a_delivery_that_does_not_render_is_dead_lettered_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rendered message that fails its own validation is a carebus bug: never sent half-right,
    dead-lettered at once with the part that failed, never retried."""

    def broken(*_args: Any) -> None:
        raise RenderError("the PLO message does not validate at MsgHead/MsgInfo")

    monkeypatch.setitem(protocol.RENDERERS, Format.PLO, broken)
    queue = FakeQueue(
        format=Format.PLO,
        sender=Addressee("974749025", "dps", "DPS"),
        recipient=Addressee("940493021", "municipality", "Kommune"),
    )
    queue.add("d-1", body=json.dumps(dict(OUTBOUND, delivery_id="d-1")).encode())
    calls = 0

    async def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(204)

    producer = await dispatch(queue, receiver, until=finished(queue))
    assert calls == 0
    (letter,) = producer.produced
    assert letter["reason"] == "invalid_record"
    assert "not valid plo: the PLO message does not validate at MsgHead/MsgInfo" in letter["detail"]
    assert queue.rows[0].status == "dead"


async def test_during_a_rotation_each_delivery_is_signed_with_both_secrets() -> None:
    """With a previous secret in its grace period, a receiver still on the old secret and one
    already on the new secret both verify every delivery: nothing is rejected for it."""
    queue = FakeQueue(secrets=("new-secret", SECRET))
    queue.add("d-1")
    headers: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers["X-Carebus-Signature"])
        ok = verify_signature([SECRET], headers[-1], request.content, now=NOW)
        return httpx.Response(204 if ok else 401)

    await dispatch(queue, receiver, until=finished(queue))
    assert queue.rows[0].status == "delivered"
    (header,) = headers
    assert header.count("v1=") == 2
    assert verify_signature(["new-secret"], header, queue.rows[0].body, now=NOW)


async def test_a_refused_target_is_dead_lettered_at_once_and_never_retried() -> None:
    """A host that resolves into a private network is refused by the transport: one attempt,
    a dead letter whose detail names the kind of address, not the host or the address."""
    queue = FakeQueue(url="https://rebinding.example/hook")
    queue.add("d-1")
    calls = 0

    async def transport(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise RefusedTargetError("host resolves to an address that is loopback")

    producer = await dispatch(queue, transport, until=finished(queue), retry_for_s=60.0)
    assert calls == 1
    (letter,) = producer.produced
    assert letter["reason"] == "webhook_rejected"
    assert "target refused: host resolves to an address that is loopback" in letter["detail"]
    assert "rebinding.example" not in letter["detail"]
    assert queue.rows[0].status == "dead"


async def test_an_http_url_is_refused_where_only_https_is_allowed() -> None:
    """A URL registered as http before https was required is not sent to outside local
    development: dead-lettered without a request."""
    queue = FakeQueue(url="http://receiver.test/hook")
    queue.add("d-1")

    async def receiver(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    producer = await dispatch(
        queue, receiver, until=finished(queue), targets=TargetPolicy(allow_private=True)
    )
    (letter,) = producer.produced
    assert "target refused: URL is not https" in letter["detail"]


async def test_one_line_is_sent_in_order_one_at_a_time() -> None:
    """A person's next delivery is sent only after the previous one got its 2xx."""
    queue = FakeQueue()
    for n in range(5):
        queue.add(f"d-{n}")
    calls = 0
    sent: list[str] = []
    active = 0

    async def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal calls, active
        active += 1
        assert active == 1
        calls += 1
        await asyncio.sleep(0.01)
        active -= 1
        if calls % 2:  # every other attempt fails
            return httpx.Response(503)
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue))
    assert sent == [f"d-{n}" for n in range(5)]


async def test_concurrency_is_bounded() -> None:
    """No more than `concurrency` requests are in flight, across many lines."""
    queue = FakeQueue()
    for n in range(20):
        queue.add(f"d-{n}", subject_key=f"{n:064x}")
    active = peak = 0

    async def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue), concurrency=3)
    assert peak == 3


async def test_4xx_is_dead_lettered_before_the_row_is_marked_dead() -> None:
    """A 4xx dead-letters at once (no body kept), and the line moves on."""
    queue = FakeQueue()
    queue.add("d-1")
    queue.add("d-2")

    async def receiver(request: httpx.Request) -> httpx.Response:
        if request.headers["Idempotency-Key"] == "d-1":
            return httpx.Response(422, json={"echo": "01017012345"})
        return httpx.Response(200)

    producer = await dispatch(queue, receiver, until=finished(queue))
    assert [row.status for row in queue.rows] == ["dead", "delivered"]
    assert queue.events[:3] == [
        ("dead_letter_acknowledged", ""),
        ("dead", "d-1"),
        ("delivered", "d-2"),
    ]
    (letter,) = producer.produced
    assert letter["reason"] == "webhook_rejected"
    assert "HTTP 422 (application/json)" in letter["detail"]
    assert "01017012345" not in letter["detail"]
    assert letter["source_topic"] == "care.deliveries.municipality.v1"
    assert letter["original_value"] == b"avro"


async def test_retries_until_retry_for_then_dead_letters() -> None:
    """5xx and connection errors are retried with backoff; after retry_for_s, dead."""
    queue = FakeQueue()
    queue.add("d-1")
    calls = 0

    async def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503)

    producer = await dispatch(queue, receiver, until=finished(queue), retry_for_s=0.3)
    assert calls >= 4
    (letter,) = producer.produced
    assert letter["reason"] == "webhook_retries_exhausted"
    assert queue.rows[0].status == "dead"


async def test_a_hanging_receiver_times_out_and_is_retried() -> None:
    """A request that outlives the timeout counts as a failed attempt."""
    queue = FakeQueue()
    queue.add("d-1")
    calls = 0

    async def receiver(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue), timeout_s=0.2)
    assert calls == 2
    assert queue.rows[0].status == "delivered"


async def test_removed_webhook_is_dead_lettered_not_dropped() -> None:
    """A row whose organisation no longer has a webhook is dead-lettered (reason other)."""
    queue = FakeQueue(url=None)
    queue.add("d-1")

    async def receiver(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    producer = await dispatch(queue, receiver, until=finished(queue))
    assert [letter["reason"] for letter in producer.produced] == ["other"]


async def test_stop_lets_requests_in_flight_finish_and_be_recorded() -> None:
    """On stop, a request in flight completes and its outcome is recorded."""
    queue = FakeQueue()
    queue.add("d-1")
    started = asyncio.Event()

    async def receiver(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(0.2)
        return httpx.Response(200)

    await dispatch(queue, receiver, until=started.is_set)
    assert queue.rows[0].status == "delivered"


def retries(step: str) -> float:
    value = REGISTRY.get_sample_value(
        "carebus_sink_retries_total", {"sink": WEBHOOKS_NAME, "step": step}
    )
    return value or 0.0


async def test_a_database_outage_while_claiming_is_waited_out() -> None:
    """Claims refused by an unreachable database are retried with backoff, counted as the
    dispatcher's retries; once it answers the delivery goes out."""
    queue = UnreliableQueue(claim_outages=3)
    queue.add("d-1")
    before = retries("dispatch")

    async def receiver(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue))
    assert queue.rows[0].status == "delivered"
    assert queue.claims >= 4
    assert retries("dispatch") - before == 3


async def test_an_outage_recording_the_outcome_is_retried_without_sending_again() -> None:
    """A 2xx whose recording meets an outage is recorded once the database answers; the
    receiver is not sent the delivery a second time."""
    queue = UnreliableQueue(record_outages=2)
    queue.add("d-1")
    sent: list[str] = []
    before = retries("record"), retries("dispatch")

    async def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue))
    assert sent == ["d-1"]
    assert queue.events == [("delivered", "d-1")]
    # The first refusal is the delivery's own; the loop waits out the second before claiming.
    assert (retries("record") - before[0], retries("dispatch") - before[1]) == (1, 1)


async def test_an_acknowledgement_held_through_an_outage_outlives_its_lease() -> None:
    """A 2xx held while the database is down is not sent again when the row's lease runs out
    meanwhile (here at once): the loop records it before claiming, and its claims pass over
    the row; the person's next delivery follows in order."""
    queue = UnreliableQueue(record_outages=5, lease_s=0.0)
    queue.add("d-1")
    queue.add("d-2")
    sent: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    await dispatch(queue, receiver, until=finished(queue))
    assert sent == ["d-1", "d-2"]
    assert queue.events == [("delivered", "d-1"), ("delivered", "d-2")]
    assert [row.attempts for row in queue.rows] == [1, 1]


async def test_claims_pass_over_held_acknowledgements_while_recording_fails() -> None:
    """While the held 2xx cannot be recorded nothing is claimed, so its row, due again, is not
    sent a second time; other lines wait with it."""
    queue = UnreliableQueue(record_outages=10**6, lease_s=0.0)
    queue.add("d-1")
    sent: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        if len(sent) == 1:
            queue.add("d-2", subject_key="b" * 64)
        return httpx.Response(200)

    await dispatch(queue, receiver, until=lambda: queue.refused_records >= 5)
    assert sent == ["d-1"]
    assert [row.status for row in queue.rows] == ["pending", "pending"]


async def test_a_dead_letter_the_broker_failed_is_sent_again_before_the_row_is_dead() -> None:
    """A row is marked dead only once its dead letter is on the broker."""
    queue = FakeQueue()
    queue.add("d-1")
    producer = FakeProducer(queue, failures=[KafkaError(KafkaError._MSG_TIMED_OUT)])

    async def receiver(request: httpx.Request) -> httpx.Response:
        return httpx.Response(410)

    await dispatch(queue, receiver, until=finished(queue), producer=producer)
    assert queue.events == [
        ("dead_letter_failed", ""),
        ("dead_letter_acknowledged", ""),
        ("dead", "d-1"),
    ]
    assert [letter["reason"] for letter in producer.produced] == ["webhook_rejected"] * 2


async def test_stop_during_an_outage_leaves_the_outcome_to_the_lease() -> None:
    """Shutdown while the outcome cannot be recorded ends the dispatcher promptly; the row
    stays pending, to be claimed again when its lease runs out (receivers deduplicate)."""
    queue = UnreliableQueue(record_outages=10**6)
    queue.add("d-1")
    sent: list[str] = []

    async def receiver(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    started = time.monotonic()
    await dispatch(queue, receiver, until=lambda: queue.refused_records >= 3)
    assert time.monotonic() - started < 2.0
    assert sent == ["d-1"]
    assert queue.rows[0].status == "pending"
    assert queue.events == []


async def test_an_outcome_for_a_lost_claim_is_not_counted() -> None:
    """When the row is no longer this dispatcher's (its lease ran out and it was claimed
    again), the outcome changes nothing and is not counted as delivered."""
    queue = FakeQueue()
    queue.add("d-1")
    agency = {"agency": "municipality"}
    before = REGISTRY.get_sample_value("carebus_webhook_delivered_total", agency) or 0.0

    async def receiver(request: httpx.Request) -> httpx.Response:
        queue.rows[0].attempts += 1  # another dispatcher claimed the row meanwhile
        return httpx.Response(200)

    await dispatch(queue, receiver, until=lambda: queue.rows[0].attempts >= 2)
    assert queue.events == []
    after = REGISTRY.get_sample_value("carebus_webhook_delivered_total", agency) or 0.0
    assert after == before


def test_concurrency_must_be_positive() -> None:
    """A zero concurrency setting is refused with a clear message."""
    with pytest.raises(ValueError, match="webhook_concurrency"):
        Dispatcher(
            queue=FakeQueue(),  # type: ignore[arg-type]
            client=httpx.AsyncClient(),
            dead_letters=DeadLetterPolicy(FakeProducer(FakeQueue()), CODEC, "webhooks"),
            retry=RetryPolicy(1, 1, 1),
            targets=LOCAL,
            concurrency=0,
            timeout_s=1,
        )
