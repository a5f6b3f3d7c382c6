"""Per-organisation token buckets: how many requests one organisation may make of one process.

Each key (an organisation id, never a token or anything about a person) has a bucket of `burst`
tokens refilled at `rate_per_s`; a request takes one token, or is refused with the time until the
next token. The clock is a parameter, so tests step time instead of waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

Clock = Callable[[], float]

# Beyond this many remembered keys, full buckets are forgotten (a full bucket is the same as no
# bucket), so memory stays bounded whatever the number of organisations calling.
MAX_KEYS: Final = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key: `take(key)` is 0.0 when allowed, else seconds to wait."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Take one token from `key`'s bucket: 0.0 if there was one, else the seconds until
        there will be (nothing is taken then)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def __iter__(self) -> Iterator[str]:
        """The keys remembered now."""
        return iter(list(self._buckets))

    def _forget_full(self, now: float) -> None:
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.at) * self.rate_per_s < self.burst
        }
        if len(self._buckets) >= self._max_keys:
            # Every key was busy within one refill: forgetting one only lets it burst again,
            # which beats growing without bound.
            oldest = min(self._buckets, key=lambda key: self._buckets[key].at)
            del self._buckets[oldest]
