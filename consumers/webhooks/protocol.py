"""What carebus promises a webhook receiver: the request, its signature, what each answer means.

Pure functions over plain data, so every rule here is unit-tested without a network:

- the body is the compact UTF-8 JSON of the delivery, stored once and sent unchanged on retries;
- `X-Carebus-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + the exact body bytes>`,
  keyed with the UTF-8 bytes of the organisation's secret; one `v1=` per secret that signs now
  (the new and the previous one during a rotation's grace period). Each attempt is signed anew
  with its own time, and a receiver refuses a `t` more than SIGNATURE_TOLERANCE_S away from its
  clock, so a captured request cannot be replayed later (`verify_signature`: docs/design.md,
  "Receiving webhooks"); `Idempotency-Key` is the delivery id;
- 2xx is delivered; 408, 429, 5xx, a timeout or a connection error is retried with capped
  exponential backoff (with jitter) until the first failure after `retry_for_s` since the first
  attempt; any other answer (4xx, and 1xx/3xx, which a POST receiver never legitimately sends
  and redirects are not followed) is fatal and dead-lettered at once, and so is a target
  refused before sending (consumers.webhooks.targets: it resolves into a private network).

DESIGN says "4xx fatal"; 408 (Request Timeout) and 429 (Too Many Requests) are retried all the
same, because both mean "not now" — dead-lettering a delivery because a receiver shed load
would lose it for a transient reason. A response body is never read or kept: a receiver can
echo the nin back, and a dead letter's detail must carry no personal data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from carebus.adapters.deadletter import Reason
from carebus.domain.deliveries import delivery_to_json
from carebus.wire import fhir_outbound, plo_outbound
from carebus.wire.outbound import (
    JSON_CONTENT_TYPE,
    Addressee,
    Format,
    Rendered,
    Renderer,
    RenderError,
    format_problem,
)
from carebus.wire.sealing import PREFIX, Keyring, open_body

SIGNATURE_HEADER: Final = "X-Carebus-Signature"
# How far a signature's time may be from the receiver's clock (either way), documented.
SIGNATURE_TOLERANCE_S: Final = 300
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
USER_AGENT: Final = "carebus-webhooks/1"

# Answers that mean "try again later" although they are 4xx.
_RETRYABLE_4XX: Final = frozenset({408, 429})
_MEDIA_TYPE: Final = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
# No registered media type has a long digit run; a receiver-chosen one might hold a nin.
_DIGIT_RUN: Final = re.compile(r"[0-9]{5,}")
_SEALED: Final = PREFIX.encode("ascii")


def webhook_body(record: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed for a `no.carebus.v1.Delivery` record (compact UTF-8 JSON).

    Raises ValueError for a record that cannot become JSON (payload_json not an object text;
    NaN and infinity are not JSON either); the message names the problem, never a value.
    """
    try:
        document = delivery_to_json(record)
    except json.JSONDecodeError:
        raise ValueError("payload_json is not valid JSON") from None
    if not isinstance(document["payload"], dict):
        raise ValueError("payload_json is not a JSON object")
    return _compact(document)


def opened_body(body: bytes, subject_key: str, keys: Keyring) -> bytes:
    """A queued body as it is POSTed: the nin and free text sealed under the person's data key
    opened, or the person's fields erased (docs/design.md, "Erasure"); a body with nothing
    sealed as it was queued."""
    if _SEALED not in body:
        return body
    return _compact(open_body(json.loads(body), subject_key, keys))


def _compact(document: Mapping[str, Any]) -> bytes:
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def signature(body: bytes, secrets: Iterable[str], timestamp: int) -> str:
    """The `X-Carebus-Signature` value: `t=<timestamp>` and one `v1=<hex HMAC-SHA256 of
    "<timestamp>." + body>` per secret, in the order given."""
    signed = f"{timestamp}.".encode("ascii") + body
    parts = [f"t={timestamp}"]
    for secret in secrets:
        parts.append("v1=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest())
    return ",".join(parts)


def verify_signature(
    secrets: Iterable[str],
    header: str,
    body: bytes,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Whether `header` (X-Carebus-Signature) signs `body` with one of `secrets`, at a time
    within `tolerance_s` of `now` (unix seconds). For receivers: standard library only, copy it.

    `body` must be the raw request bytes, before any JSON parsing. Pass the old and the new
    secret while you switch to a new one; a sender's rotation signs with both meanwhile.
    """
    timestamp, signatures = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        # ASCII digits only, and few: "²" is a digit to isdigit() but not to int(), and a
        # non-ASCII candidate would make compare_digest raise instead of answering False.
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value.isascii():
            signatures.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance_s:
        return False
    signed = f"{timestamp}.".encode("ascii") + body
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return True
    return False


# The standard formats an organisation may choose for its webhook, and their renderers.
RENDERERS: Final[Mapping[Format, Renderer]] = {
    Format.PLO: plo_outbound.render,
    Format.FHIR: fhir_outbound.render,
}


def rendered_body(
    body: bytes,
    format: Format,
    sender: Addressee | None,
    recipient: Addressee | None,
    now: datetime,
) -> Rendered:
    """The request body in the webhook's `format`: `body` (the opened delivery JSON) itself
    for carebus JSON, for a delivery the format has no message for, and for a row queued before
    its sender was recorded; raises RenderError when a message does not validate."""
    renderer = RENDERERS.get(format)
    if renderer is None or sender is None or recipient is None:
        return Rendered(body, JSON_CONTENT_TYPE)
    if format_problem(format, recipient.agency) is not None:
        return Rendered(body, JSON_CONTENT_TYPE)  # registered before the rule: JSON, as allowed
    try:
        rendered = renderer(json.loads(body), sender, recipient, now)
    except RenderError:
        raise
    except Exception as exc:
        # Rendering is pure code over one delivery: whatever it raises is a bug about that
        # delivery, which is dead-lettered (RenderError) rather than left to stall its line
        # by failing every attempt. The class name only: a message could quote a value.
        raise RenderError(f"{type(exc).__name__} while rendering") from None
    return rendered if rendered is not None else Rendered(body, JSON_CONTENT_TYPE)


def request_headers(
    delivery_id: str,
    body: bytes,
    secrets: Iterable[str],
    timestamp: int,
    content_type: str = JSON_CONTENT_TYPE,
) -> dict[str, str]:
    """Every header of a webhook request, signed at `timestamp` (unix seconds)."""
    return {
        "Content-Type": content_type,
        IDEMPOTENCY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(body, secrets, timestamp),
        "User-Agent": USER_AGENT,
    }


class Failure(StrEnum):
    """How an attempt went wrong before any HTTP answer arrived."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    # Refused by carebus before connecting (consumers.webhooks.targets); never retried.
    REFUSED = "refused"
    # The delivery did not render as a valid message of the webhook's format (a carebus bug,
    # carebus.wire.outbound.RenderError); never sent, never retried.
    UNRENDERABLE = "unrenderable"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one request: an HTTP status (and its media type), or a failure."""

    status: int | None = None
    content_type: str | None = None
    failure: Failure | None = None
    # The exception's class name for a failure, never its message; for REFUSED, why (a fixed
    # text of carebus.domain.webhook_targets: the kind of address, never a host or an address).
    error: str | None = None

    @classmethod
    def answered(cls, status: int, content_type: str | None = None) -> Attempt:
        return cls(status=status, content_type=media_type(content_type))

    @classmethod
    def failed(cls, failure: Failure, error: str) -> Attempt:
        return cls(failure=failure, error=error)

    def describe(self) -> str:
        """A short text for logs, the queue's last_error and dead letters; no personal data."""
        if self.status is not None:
            kind = self.content_type or "no content type"
            return f"HTTP {self.status} ({kind})"
        if self.failure is Failure.TIMEOUT:
            return "timeout"
        if self.failure is Failure.REFUSED:
            return f"target refused: {self.error or 'not allowed'}"
        if self.failure is Failure.UNRENDERABLE:
            return f"not rendered: {self.error or 'invalid'}"
        return f"connection error ({self.error or 'unknown'})"


def media_type(content_type: str | None) -> str | None:
    """The bare media type of a Content-Type header; parameters and oddities is dropped."""
    if not content_type:
        return None
    match = _MEDIA_TYPE.fullmatch(content_type.split(";", 1)[0].strip())
    if match is None or _DIGIT_RUN.search(match.group(0)):
        return "unrecognised"
    return match.group(0).lower()[:100]


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a queued delivery after one attempt."""

    verdict: Verdict
    delay_s: float = 0.0
    reason: Reason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, for at least `retry_for_s` after the 1st attempt."""

    initial_s: float
    maximum_s: float
    retry_for_s: float

    def delay(self, attempts: int, random: Callable[[], float]) -> float:
        """The wait after failed attempt number `attempts`: half fixed, half random.

        The fixed half keeps a struggling receiver from being hammered; the random half spreads
        the retries of many lines that failed together.
        """
        exponent = min(max(attempts - 1, 0), 62)
        base = min(self.maximum_s, self.initial_s * 2.0**exponent)
        return base / 2 + random() * base / 2

    def decide(
        self, attempt: Attempt, *, attempts: int, elapsed_s: float, random: Callable[[], float]
    ) -> Decision:
        """The decision after `attempt`, the `attempts`-th, `elapsed_s` after the first one."""
        status = attempt.status
        if status is not None and 200 <= status < 300:
            return Decision(Verdict.DELIVERED)
        if status is not None and not (status >= 500 or status in _RETRYABLE_4XX):
            return Decision(
                Verdict.DEAD,
                reason=Reason.WEBHOOK_REJECTED,
                detail=(
                    f"webhook answered {attempt.describe()} at attempt {attempts}; "
                    "the response body is not kept"
                ),
            )
        if attempt.failure is Failure.REFUSED:
            return Decision(
                Verdict.DEAD,
                reason=Reason.WEBHOOK_REJECTED,
                detail=(
                    f"{attempt.describe()} at attempt {attempts}; nothing was sent "
                    "(docs/security.md, control 4b)"
                ),
            )
        if attempt.failure is Failure.UNRENDERABLE:
            return Decision(
                Verdict.DEAD,
                reason=Reason.INVALID_RECORD,
                detail=f"{attempt.describe()} at attempt {attempts}; nothing was sent",
            )
        if elapsed_s >= self.retry_for_s:
            return Decision(
                Verdict.DEAD,
                reason=Reason.WEBHOOK_RETRIES_EXHAUSTED,
                detail=(
                    f"no 2xx answer within {self.retry_for_s:.0f} s of the first attempt "
                    f"({attempts} attempts); last: {attempt.describe()}"
                ),
            )
        return Decision(Verdict.RETRY, delay_s=self.delay(attempts, random))
