"""The dispatcher loop: send each line's due head, at most `concurrency` requests at a time.

It sleeps until the intake signals new rows, a request finishes (the next row of that line may
now be its head), the earliest backed-off head is due, or `idle_s` passes (rows that another
process enqueued) — never a hot poll. Each outcome is recorded before the line moves on, and a
dead delivery's dead letter is acknowledged by the broker before its row is marked dead, so
nothing is silently dropped. A 2xx that cannot be recorded (the database is down) is held in
memory and recorded before the next claim, never sent again (consumers.webhooks.acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TypeVar

import httpx

from carebus.adapters.deadletter import DeadLetterPolicy, Reason
from carebus.adapters.resources import TRANSIENT_ERRORS, count_retry
from carebus.adapters.sink import sink_retry
from carebus.domain.webhook_targets import TargetPolicy
from carebus.runtime import metrics
from carebus.runtime.retry import RetryPolicy as OutagePolicy
from carebus.runtime.retry import StopRequestedError
from carebus.runtime.telemetry import get_logger
from carebus.wire.outbound import RenderError
from carebus.wire.topics import AGENCIES

from .acknowledged import Acknowledged
from .protocol import (
    Attempt,
    Decision,
    Failure,
    RetryPolicy,
    Verdict,
    rendered_body,
    request_headers,
)
from .queue import Claim, WebhookQueue
from .targets import RefusedTargetError

log = get_logger(__name__)

T = TypeVar("T")
NAME: Final = "webhooks"
# A receiver's answer is drained up to this size (so the connection can be reused) and dropped.
_DRAIN_LIMIT: Final = 64 * 1024
# The shortest sleep when a head is due but was not claimed (another dispatcher had it locked).
_MIN_WAIT_S: Final = 0.05
_WEBHOOK_REMOVED: Final = (
    "the organisation's webhook was removed before delivery; "
    "the delivery stays readable over GET /v1/deliveries"
)


class Dispatcher:
    """Sends queued deliveries to their organisation's webhook, in order per person."""

    def __init__(
        self,
        *,
        queue: WebhookQueue,
        client: httpx.AsyncClient,
        dead_letters: DeadLetterPolicy,
        retry: RetryPolicy,
        targets: TargetPolicy,
        concurrency: int,
        timeout_s: float,
        idle_s: float = 5.0,
        gauge_every_s: float = 5.0,
        unstick_every_s: float = 60.0,
        flush_timeout_s: float = 10.0,
        outage_retry: OutagePolicy | None = None,
        random_fraction: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError("webhook_concurrency must be at least 1")
        for agency in AGENCIES:  # every series from the start, so increase() sees the first one
            metrics.WEBHOOK_DELIVERED.labels(agency)
            metrics.WEBHOOK_RETRIES.labels(agency)
        self._queue = queue
        self._client = client
        self._dead_letters = dead_letters
        self._retry = retry
        self._targets = targets
        self._clock = clock  # the signatures' time (unix seconds)
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        # Long enough for a request that runs into its timeout and the recording of its outcome;
        # only a dispatcher that died mid-request lets a lease run out.
        self._lease_s = 2 * timeout_s + 60.0
        self._idle_s = idle_s
        self._gauge_every_s = gauge_every_s
        self._unstick_every_s = unstick_every_s
        self._flush_timeout_s = flush_timeout_s
        self._outage_retry = outage_retry or sink_retry()
        self._on_retry = count_retry(NAME)
        self._random = random_fraction
        self._wake = asyncio.Event()
        # DeadLetterPolicy is not safe for concurrent send/flush: one dead letter at a time.
        self._dead_letter_lock = asyncio.Lock()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._acknowledged = Acknowledged()
        self._last_progress = time.monotonic()
        self._gauge_at = self._unstick_at = -float("inf")

    def wake(self) -> None:
        """Look for due heads now (the intake committed new rows)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def healthy(self, stale_after_s: float = 60.0) -> bool:
        """Whether the loop went round recently (not stuck on an unreachable database)."""
        return time.monotonic() - self._last_progress < stale_after_s

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set, then let the requests in flight finish and be recorded."""
        log.info("webhooks.dispatcher_started", concurrency=self._concurrency)
        relay = asyncio.create_task(self._wake_on(stop))
        delays = self._outage_retry.delays()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    timeout = await self._dispatch_once(stop)
                    delays = self._outage_retry.delays()
                except TRANSIENT_ERRORS as exc:  # outages worth waiting out, as every sink does
                    timeout = next(delays)
                    self._on_retry("dispatch", exc, timeout)
                    self._wake.clear()  # an outage is waited out, whatever arrives meanwhile
                self._last_progress = time.monotonic()
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            relay.cancel()
            if self._in_flight:
                log.info("webhooks.draining", in_flight=len(self._in_flight))
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self._record_acknowledged_before_stop()
            log.info("webhooks.dispatcher_stopped")

    async def _dispatch_once(self, stop: asyncio.Event) -> float:
        """Claim and start what is due; returns how long to sleep unless woken."""
        # First what an outage kept from the database: a held row whose lease ran out would
        # otherwise be claimed and sent again.
        await self._record_acknowledged()
        await self._unstick()
        free = self._concurrency - len(self._in_flight)
        claimed = 0
        if free > 0:
            claims = await self._queue.claim(
                free, self._lease_s, passing_over=self._acknowledged.rows()
            )
            for claim in claims:
                self._start(claim, stop)
            claimed = len(claims)
        await self._refresh_gauge()
        if free == 0:
            return self._idle_s  # a finishing request wakes the loop
        if claimed == free:
            return 0.0  # there may be more due heads than free slots
        due_in = await self._queue.next_due_in()
        if due_in is None:
            return self._idle_s
        return min(self._idle_s, max(due_in, _MIN_WAIT_S))

    def _start(self, claim: Claim, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self._deliver(claim, stop), name=f"webhook-{claim.seq}")
        self._in_flight.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight.discard(done)
            self._wake.set()  # a slot is free, and the line's next row may now be its head
            if not done.cancelled() and done.exception() is not None:
                log.error(
                    "webhook.delivery_failed",
                    delivery_id=claim.delivery_id,
                    subject_key=claim.subject_key,
                    error=type(done.exception()).__name__,
                )

        task.add_done_callback(finished)

    async def _deliver(self, claim: Claim, stop: asyncio.Event) -> None:
        attempt: Attempt | None = None
        if claim.url is None or not claim.secrets:
            decision = Decision(Verdict.DEAD, reason=Reason.OTHER, detail=_WEBHOOK_REMOVED)
        else:
            started = time.monotonic()
            attempt = await self._send(claim, claim.url, claim.secrets)
            decision = self._retry.decide(
                attempt,
                attempts=claim.attempts,
                elapsed_s=claim.elapsed_s + (time.monotonic() - started),
                random=self._random,
            )
        try:
            await self._record(claim, attempt, decision, stop)
        except StopRequestedError as exc:
            # The lease runs out and another dispatcher (or this one, restarted) sends it again.
            log.warning(
                "webhook.outcome_unrecorded",
                delivery_id=claim.delivery_id,
                subject_key=claim.subject_key,
                step=str(exc),
            )

    async def _send(self, claim: Claim, url: str, secrets: tuple[str, ...]) -> Attempt:
        refused = self._targets.scheme_problem(url)
        if refused is not None:  # registered before https was required
            return Attempt.failed(Failure.REFUSED, refused)
        now = self._clock()
        try:
            rendered = rendered_body(
                claim.body,
                claim.format,
                claim.sender,
                claim.recipient,
                datetime.fromtimestamp(now, UTC),
            )
        except RenderError as exc:  # a bug in carebus: dead-lettered with the reason, not sent
            return Attempt.failed(Failure.UNRENDERABLE, f"not valid {claim.format}: {exc}")
        headers = request_headers(
            claim.delivery_id, rendered.body, secrets, int(now), rendered.content_type
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):
                request = self._client.stream("POST", url, content=rendered.body, headers=headers)
                async with request as response:
                    attempt = Attempt.answered(
                        response.status_code, response.headers.get("content-type")
                    )
                    drained = 0
                    async for chunk in response.aiter_bytes():
                        drained += len(chunk)
                        if drained > _DRAIN_LIMIT:
                            break
        except RefusedTargetError as exc:  # the host resolves where carebus may not connect
            attempt = Attempt.failed(Failure.REFUSED, str(exc))
        except (TimeoutError, httpx.TimeoutException) as exc:
            attempt = Attempt.failed(Failure.TIMEOUT, type(exc).__name__)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # A bad URL is retried too: the organisation can correct its registration.
            attempt = Attempt.failed(Failure.CONNECTION, type(exc).__name__)
        finally:
            metrics.WEBHOOK_SEND_SECONDS.labels(claim.agency).observe(time.perf_counter() - started)
        return attempt

    async def _record(
        self, claim: Claim, attempt: Attempt | None, decision: Decision, stop: asyncio.Event
    ) -> None:
        status = attempt.status if attempt else None
        described = attempt.describe() if attempt else "not sent"
        fields = _outcome_fields(claim, described)

        async def delivered() -> bool:
            return await self._queue.delivered(claim, status or 0)

        async def reschedule() -> bool:
            return await self._queue.reschedule(claim, decision.delay_s, status, described)

        async def dead() -> bool:
            return await self._queue.dead(claim, status, f"{decision.reason}: {decision.detail}")

        if decision.verdict is Verdict.DELIVERED:
            try:
                held = await delivered()
            except TRANSIENT_ERRORS as exc:
                # The receiver has it: held until the loop can record it, not sent again.
                self._acknowledged.hold(claim, status or 0, described)
                metrics.SINK_RETRIES.labels(NAME, "record").inc()
                log.warning("webhook.acknowledgement_held", error=type(exc).__name__, **fields)
                return
            self._count_delivered(claim, held, fields)
            return
        if decision.verdict is Verdict.RETRY:
            held = await self._call("record", reschedule, stop)
            if held:
                metrics.WEBHOOK_RETRIES.labels(claim.agency).inc()
                retry_in_s = round(decision.delay_s, 2)
                log.warning("webhook.retry_scheduled", retry_in_s=retry_in_s, **fields)
        else:
            reason = decision.reason or Reason.OTHER
            await self._dead_letter(claim, reason, decision.detail, stop)
            held = await self._call("record", dead, stop)
            if held:
                metrics.WEBHOOK_DEAD.labels(claim.agency, reason.value).inc()
                log.error("webhook.dead", reason=reason.value, **fields)
        if not held:
            log.warning("webhook.claim_lost", **fields)

    @staticmethod
    def _count_delivered(claim: Claim, held: bool, fields: dict[str, object]) -> None:
        if held:
            metrics.WEBHOOK_DELIVERED.labels(claim.agency).inc()
            log.debug("webhook.delivered", **fields)
        else:
            log.warning("webhook.claim_lost", **fields)

    async def _record_acknowledged(self) -> None:
        """Record the held 2xx answers, oldest first; an outage raises, before any claim."""
        for acknowledgement in self._acknowledged.oldest_first():
            claim = acknowledgement.claim
            held = await self._queue.delivered(claim, acknowledgement.status)
            self._acknowledged.recorded(claim)
            self._count_delivered(claim, held, _outcome_fields(claim, acknowledgement.outcome))

    async def _record_acknowledged_before_stop(self) -> None:
        """One last try on stop; what stays unrecorded is sent again after its lease."""
        if not self._acknowledged:
            return
        try:
            await self._record_acknowledged()
        except TRANSIENT_ERRORS as exc:
            for acknowledgement in self._acknowledged.oldest_first():
                fields = _outcome_fields(acknowledgement.claim, acknowledgement.outcome)
                log.warning(
                    "webhook.outcome_unrecorded", step="record", error=type(exc).__name__, **fields
                )

    async def _dead_letter(
        self, claim: Claim, reason: Reason, detail: str, stop: asyncio.Event
    ) -> None:
        """Hand the delivery's source record to the dead-letter topic and wait for the broker."""

        source = await self._call("dead_letter_source", lambda: self._queue.source(claim), stop)
        async with self._dead_letter_lock:
            self._dead_letters.send(source, reason, detail)
            await self._call(
                "dead_letters", lambda: self._dead_letters.acknowledged(self._flush_timeout_s), stop
            )

    async def _call(self, step: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        """`attempt()` through outages, counted as this sink's retries."""
        return await self._outage_retry.call(step, attempt, stop=stop, on_retry=self._on_retry)

    async def _unstick(self) -> None:
        """The queue's safety net (see consumers.webhooks.queue), at start and now and then."""
        now = time.monotonic()
        if now - self._unstick_at < self._unstick_every_s:
            return
        self._unstick_at = now
        unstuck = await self._queue.unstick()
        if unstuck:
            log.warning("webhooks.heads_unstuck", rows=unstuck)

    async def _refresh_gauge(self) -> None:
        now = time.monotonic()
        if now - self._gauge_at < self._gauge_every_s:
            return
        self._gauge_at = now
        pending = await self._queue.pending_by_agency()
        for agency in {*AGENCIES, *pending}:
            count, oldest_s = pending.get(agency, (0, 0.0))
            metrics.WEBHOOK_PENDING.labels(agency).set(count)
            metrics.WEBHOOK_OLDEST_PENDING.labels(agency).set(oldest_s)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()


def _outcome_fields(claim: Claim, outcome: str) -> dict[str, object]:
    """What an outcome's log line says about the delivery (no personal data)."""
    return {
        "delivery_id": claim.delivery_id,
        "event_id": _event_id(claim.body),
        "subject_key": claim.subject_key,
        "org_id": claim.org_id,
        "agency": claim.agency,
        "attempt": claim.attempts,
        "outcome": outcome,
    }


def _event_id(body: bytes) -> str | None:
    """The event a delivery body is about, for log lines (the body is the delivery JSON)."""
    try:
        event_id = json.loads(body).get("event_id")
    except (ValueError, AttributeError):
        return None
    return event_id if isinstance(event_id, str) else None
