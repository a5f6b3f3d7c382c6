"""The held acknowledgements of the webhook dispatcher: rows passed over, recorded in order."""

from __future__ import annotations

from consumers.webhooks.acknowledged import Acknowledged
from consumers.webhooks.queue import Claim


def claim(seq: int, attempts: int = 1) -> Claim:
    return Claim(
        seq=seq,
        delivery_id=f"d-{seq}",
        org_id="940493021",
        agency="municipality",
        subject_key="a" * 64,
        body=b"{}",
        attempts=attempts,
        elapsed_s=0.0,
        url="https://receiver.test/hook",
        secrets=("secret",),
    )


def test_nothing_is_held_at_first() -> None:
    """A new ledger holds nothing and passes over no row."""
    acknowledged = Acknowledged()
    assert len(acknowledged) == 0
    assert acknowledged.rows() == []
    assert acknowledged.oldest_first() == []


def test_held_rows_are_passed_over_and_recorded_in_queue_order() -> None:
    """Whatever order the answers came in, the rows are recorded oldest first, so a line's
    heads are finished in the order they were sent."""
    acknowledged = Acknowledged()
    for seq in (7, 3, 5):
        acknowledged.hold(claim(seq), 200, "HTTP 200 (no content type)")
    assert acknowledged.rows() == [3, 5, 7]
    assert [a.claim.seq for a in acknowledged.oldest_first()] == [3, 5, 7]
    assert {a.status for a in acknowledged.oldest_first()} == {200}


def test_a_recorded_acknowledgement_is_let_go() -> None:
    """Once recorded (or found no longer the dispatcher's) a row may be claimed again; letting
    go of a row not held changes nothing."""
    acknowledged = Acknowledged()
    acknowledged.hold(claim(1), 204, "HTTP 204 (no content type)")
    acknowledged.hold(claim(2), 200, "HTTP 200 (no content type)")
    acknowledged.recorded(claim(1))
    acknowledged.recorded(claim(9))
    assert acknowledged.rows() == [2]
    assert len(acknowledged) == 1


def test_the_latest_answer_for_a_row_counts() -> None:
    """A row held twice (a later attempt of the same row) is held once, with the later claim."""
    acknowledged = Acknowledged()
    acknowledged.hold(claim(1, attempts=1), 200, "HTTP 200 (no content type)")
    acknowledged.hold(claim(1, attempts=2), 202, "HTTP 202 (no content type)")
    (held,) = acknowledged.oldest_first()
    assert (held.claim.attempts, held.status) == (2, 202)
