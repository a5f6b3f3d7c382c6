"""Acknowledgements the database could not take: deliveries a receiver answered 2xx while
PostgreSQL was down, held in memory until the dispatcher can record them.

Such a delivery's row is still pending, under a lease that runs out during a long outage; a
claim after that would send the delivery again although the receiver has it. So the dispatcher
records what it holds before it claims anything, and its claims pass over the rows it holds:
a dispatcher never sends again a delivery that a receiver acknowledged to it. The memory is
the process's own: a dispatcher that stops or crashes while the database is down leaves those
rows to their lease, and they are sent again (at least once, docs/design.md; receivers
deduplicate on `Idempotency-Key`). So does another dispatcher that claims such a row first.
"""

from __future__ import annotations

from dataclasses import dataclass

from .queue import Claim


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """A 2xx (`status`) that the receiver gave for `claim`'s attempt, not yet recorded."""

    claim: Claim
    status: int
    outcome: str  # the attempt as described in logs


class Acknowledged:
    """The acknowledgements held, by queue row (pure bookkeeping)."""

    def __init__(self) -> None:
        self._held: dict[int, Acknowledgement] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, claim: Claim, status: int, outcome: str) -> None:
        self._held[claim.seq] = Acknowledgement(claim, status, outcome)

    def recorded(self, claim: Claim) -> None:
        """The acknowledgement of `claim` is in the database (or its row is no longer ours)."""
        self._held.pop(claim.seq, None)

    def rows(self) -> list[int]:
        """The queue rows held, which no claim may take."""
        return sorted(self._held)

    def oldest_first(self) -> list[Acknowledgement]:
        """In queue order, so each line's heads are finished in the order they were sent."""
        return [self._held[seq] for seq in sorted(self._held)]
