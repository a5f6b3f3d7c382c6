"""Webhook request, signature and the meaning of each answer (consumers.webhooks.protocol)."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carebus.adapters.deadletter import Reason
from carebus.wire.sealing import DataKey, Keyring, new_data_key, seal
from consumers.webhooks.protocol import (
    SIGNATURE_TOLERANCE_S,
    Attempt,
    Failure,
    RetryPolicy,
    Verdict,
    media_type,
    opened_body,
    request_headers,
    signature,
    verify_signature,
    webhook_body,
)

NIN = "01017012345"
T = 1764979200  # a signature's time, unix seconds
POLICY = RetryPolicy(initial_s=1.0, maximum_s=600.0, retry_for_s=48 * 3600.0)


def delivery(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "delivery_id": "4a1f0c1e-0000-5000-8000-000000000001",
        "event_id": "dps-974705788-2026-000123",
        "event_type": "discharge",
        "occurred_at": datetime(2026, 11, 23, 7, 15, tzinfo=UTC),
        "decided_at": datetime(2026, 11, 23, 7, 15, 2, tzinfo=UTC),
        "source": {"agency": "dps", "org_id": "974705788", "system": "DIPS"},
        "recipient": {"agency": "municipality", "org_id": "940493021"},
        "subject": {"nin": NIN},
        "subject_key": "ab" * 32,
        "basis": "statutory",
        "categories": ["logistics"],
        "fields": ["destination"],
        "payload_json": '{"destination": "Tromsø"}',
        "emergency": None,
        "rule_id": "discharge-home-municipality",
        "policy_version": "1",
    }
    record.update(changes)
    return record


def test_body_is_compact_utf8_delivery_json() -> None:
    """The body is DESIGN's delivery JSON, compact, UTF-8 (not \\u-escaped)."""
    body = webhook_body(delivery())
    assert (
        body
        == (
            '{"delivery_id":"4a1f0c1e-0000-5000-8000-000000000001",'
            '"event_id":"dps-974705788-2026-000123","event_type":"discharge",'
            '"occurred_at":"2026-11-23T07:15:00Z","subject":{"nin":"01017012345"},'
            '"basis":"statutory","categories":["logistics"],"payload":{"destination":"Tromsø"}}'
        ).encode()
    )


def test_body_carries_the_emergency_notice() -> None:
    """An emergency delivery names its justification and accountable person."""
    record = delivery(emergency={"justification": "overdose risk", "accountable": "dr. A"})
    assert json.loads(webhook_body(record))["emergency"] == {
        "justification": "overdose risk",
        "accountable": "dr. A",
    }


@pytest.mark.parametrize(
    ("payload_json", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": -Infinity}', "not valid JSON"),
    ],
)
def test_body_refuses_a_bad_payload_without_quoting_it(payload_json: str, problem: str) -> None:
    """A payload that cannot become the body is refused with a message naming no value."""
    with pytest.raises(ValueError, match=problem) as raised:
        webhook_body(delivery(payload_json=payload_json))
    assert NIN not in str(raised.value)


def test_signature_is_hmac_sha256_of_time_dot_body() -> None:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>` under the UTF-8 secret, as a
    receiver recomputes it; the time and the body are both signed."""
    body = webhook_body(delivery())
    signed = b"1764979200." + body
    expected = hmac.new(b"s3cret-\xc3\xa6", signed, hashlib.sha256).hexdigest()
    assert signature(body, ["s3cret-æ"], 1764979200) == f"t=1764979200,v1={expected}"
    assert signature(body + b" ", ["s3cret-æ"], 1764979200) != signature(body, ["s3cret-æ"], T)
    assert signature(body, ["s3cret-æ"], 1764979201) != signature(body, ["s3cret-æ"], T)


def test_a_rotation_signs_with_each_secret_current_first() -> None:
    """During a rotation's grace period the header carries one v1= per secret."""
    header = signature(b"{}", ["new", "old"], T)
    t, new, old = header.split(",")
    assert t == f"t={T}"
    assert new == "v1=" + hmac.new(b"new", f"{T}.{{}}".encode(), hashlib.sha256).hexdigest()
    assert old == "v1=" + hmac.new(b"old", f"{T}.{{}}".encode(), hashlib.sha256).hexdigest()


def test_request_headers() -> None:
    """JSON content type, the delivery id as Idempotency-Key, and the signature."""
    body = b"{}"
    headers = request_headers("d-1", body, ["k"], T)
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "d-1"
    assert headers["X-Carebus-Signature"] == signature(body, ["k"], T)


def test_a_receiver_verifies_a_fresh_signature_with_either_secret() -> None:
    """verify_signature accepts the header with the new or the old secret, within tolerance
    either way of the receiver's clock."""
    body = webhook_body(delivery())
    header = signature(body, ["new", "old"], T)
    assert verify_signature(["new"], header, body, now=T)
    assert verify_signature(["old"], header, body, now=T + SIGNATURE_TOLERANCE_S)
    assert verify_signature(["other", "old"], header, body, now=T - SIGNATURE_TOLERANCE_S)


@pytest.mark.parametrize(
    ("secrets", "header_of", "body", "now"),
    [
        (["wrong"], lambda b: signature(b, ["k"], T), b"{}", T),  # another secret
        (["k"], lambda b: signature(b, ["k"], T), b"{} ", T),  # another body
        (["k"], lambda b: signature(b, ["k"], T), b"{}", T + SIGNATURE_TOLERANCE_S + 1),  # replay
        (["k"], lambda b: signature(b, ["k"], T), b"{}", T - SIGNATURE_TOLERANCE_S - 1),  # future
        (["k"], lambda b: signature(b, ["k"], T).replace(f"t={T}", f"t={T + 9}"), b"{}", T),
        (["k"], lambda b: signature(b, ["k"], T).split(",", 1)[1], b"{}", T),  # no time
        (["k"], lambda b: f"t={T}", b"{}", T),  # no signature
        (["k"], lambda b: "sha256=" + hmac.new(b"k", b, hashlib.sha256).hexdigest(), b"{}", T),
        (["k"], lambda b: "", b"{}", T),
        # Hostile headers are answered False, never with an exception (a 500 at the receiver).
        (["k"], lambda b: "t=\u00b2,v1=00", b"{}", T),  # a digit to isdigit(), not to int()
        (["k"], lambda b: "t=" + "9" * 5000 + ",v1=00", b"{}", T),  # int() refuses > 4300 digits
        (["k"], lambda b: signature(b, ["other"], T) + ",v1=\u00e6", b"{}", T),
        (["k"], lambda b: f"t={T},v1=\u00e6\u00f8", b"{}", T),  # compare_digest refuses non-ASCII
    ],
)
def test_a_receiver_refuses_what_is_not_a_fresh_signature_of_the_body(
    secrets: list[str], header_of: Any, body: bytes, now: int
) -> None:
    """A wrong secret, a changed body or time, a stale or future time, the old header format
    or no header at all: verify_signature says no."""
    assert not verify_signature(secrets, header_of(b"{}"), body, now=now)


def test_the_documented_snippet_is_verify_signature() -> None:
    """docs/design.md's "Receiving webhooks" snippet is this module's verify_signature, so a
    receiver that copies it verifies what carebus signs."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    source = inspect.getsource(verify_signature)
    assert source in docs


def test_a_refused_target_is_dead_at_once_without_personal_data() -> None:
    """A target refused before sending is never retried: dead, with the kind of address."""
    attempt = Attempt.failed(Failure.REFUSED, "host resolves to an address that is loopback")
    decision = POLICY.decide(attempt, attempts=1, elapsed_s=0.0, random=lambda: 0.5)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is Reason.WEBHOOK_REJECTED
    assert "target refused: host resolves to an address that is loopback" in decision.detail


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    """Every 2xx answer completes the delivery."""
    decision = POLICY.decide(
        Attempt.answered(status), attempts=1, elapsed_s=0.0, random=lambda: 0.5
    )
    assert decision.verdict is Verdict.DELIVERED


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 301, 302, 100])
def test_other_answers_are_fatal_at_once(status: int) -> None:
    """4xx (except 408/429), and 1xx/3xx, dead-letter at the first attempt."""
    attempt = Attempt.answered(status, "application/problem+json; charset=utf-8")
    decision = POLICY.decide(attempt, attempts=1, elapsed_s=0.0, random=lambda: 0.5)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is Reason.WEBHOOK_REJECTED
    assert f"HTTP {status} (application/problem+json)" in decision.detail


@pytest.mark.parametrize(
    "attempt",
    [
        Attempt.answered(500),
        Attempt.answered(502),
        Attempt.answered(503, "text/html"),
        Attempt.answered(504),
        Attempt.answered(408),
        Attempt.answered(429),
        Attempt.failed(Failure.TIMEOUT, "ReadTimeout"),
        Attempt.failed(Failure.CONNECTION, "ConnectError"),
    ],
)
def test_transient_failures_are_retried(attempt: Attempt) -> None:
    """5xx, 408, 429, timeouts and connection errors are retried while time remains."""
    decision = POLICY.decide(attempt, attempts=3, elapsed_s=3600.0, random=lambda: 0.0)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay_s == 2.0  # base 4 s after the 3rd attempt, half of it fixed


def test_retries_last_at_least_retry_for() -> None:
    """The first failure at or after `retry_for_s` since the first attempt dead-letters."""
    attempt = Attempt.answered(503)
    just_before = POLICY.decide(attempt, attempts=300, elapsed_s=48 * 3600 - 1, random=lambda: 1)
    assert just_before.verdict is Verdict.RETRY
    after = POLICY.decide(attempt, attempts=301, elapsed_s=48 * 3600, random=lambda: 1)
    assert after.verdict is Verdict.DEAD
    assert after.reason is Reason.WEBHOOK_RETRIES_EXHAUSTED
    assert "301 attempts" in after.detail
    assert "HTTP 503" in after.detail


def test_default_settings_retry_for_at_least_24_hours() -> None:
    """DESIGN: retry with backoff for at least 24 h."""
    from carebus.runtime.config import Settings

    assert Settings().webhook_retry_for_s >= 24 * 3600


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (5, 8.0, 16.0), (10, 256.0, 512.0), (11, 300.0, 600.0)],
)
def test_backoff_is_exponential_capped_and_jittered(attempts: int, low: float, high: float) -> None:
    """Base initial*2^(n-1) capped at the maximum; the wait lies in [base/2, base]."""
    assert POLICY.delay(attempts, lambda: 0.0) == low
    assert POLICY.delay(attempts, lambda: 1.0) == high
    assert low < POLICY.delay(attempts, lambda: 0.5) < high


def test_backoff_survives_huge_attempt_counts() -> None:
    """No overflow after thousands of attempts: the cap holds."""
    assert POLICY.delay(100_000, lambda: 1.0) == 600.0


def test_descriptions_carry_no_response_body() -> None:
    """Only the status code and a bare media type describe an answer."""
    attempt = Attempt.answered(422, f'application/json; nin="{NIN}"')
    assert attempt.describe() == "HTTP 422 (application/json)"
    assert Attempt.answered(500).describe() == "HTTP 500 (no content type)"
    assert Attempt.failed(Failure.TIMEOUT, "ReadTimeout").describe() == "timeout"
    assert Attempt.failed(Failure.CONNECTION, "ConnectError").describe() == (
        "connection error (ConnectError)"
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Application/JSON; charset=utf-8", "application/json"),
        (f"text/{NIN} x", "unrecognised"),
        (f"application/{NIN}", "unrecognised"),
        ("audio/3gpp", "audio/3gpp"),
        ("nonsense", "unrecognised"),
    ],
)
def test_media_type_keeps_only_a_bare_type(header: str | None, expected: str | None) -> None:
    """A receiver-chosen header is reduced to `type/subtype` or `unrecognised`."""
    assert media_type(header) == expected


def test_a_queued_body_is_sent_with_its_sealed_fields_opened_byte_for_byte_as_before() -> None:
    """A body queued with the nin sealed is POSTed exactly as the clear body would have been;
    once the person's key is erased it names no one."""
    key = DataKey("ab" * 32, 1, new_data_key())
    clear = webhook_body(delivery())
    queued = webhook_body(delivery(subject={"nin": seal(key, "subject.nin", NIN)}))
    assert NIN.encode() not in queued

    assert opened_body(queued, key.subject_key, Keyring.of([key])) == clear
    erased = opened_body(queued, key.subject_key, Keyring.of([DataKey(key.subject_key, 1, None)]))
    assert NIN.encode() not in erased
    assert json.loads(erased)["subject"] is None
    assert json.loads(erased)["erased"] is True
    assert opened_body(clear, key.subject_key, Keyring({})) == clear  # queued before sealing
