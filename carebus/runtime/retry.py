"""One retry policy: exponential waits while a step fails with an outage, cut short by shutdown.

Every loop that waits out an outage (a store sink's database write, a router's publish, the SLA
engine's batch, the webhook dispatcher, a worker's first connection) uses `RetryPolicy.call`,
which returns the step's value. Which errors count as an outage is the caller's one list
(`carebus.adapters.outages.OUTAGES`); the waits go through `sleep`, so a test can run a policy
with a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# sleep(seconds, stop) waits `seconds` or until `stop` is set; True when stop was set.
Sleep = Callable[[float, "asyncio.Event | None"], Awaitable[bool]]
OnRetry = Callable[[str, BaseException, float], None]


class StopRequestedError(Exception):
    """Shutdown was requested while a step waited out an outage; the step did not complete."""


async def wait_or_stop(seconds: float, stop: asyncio.Event | None) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile; whether `stop` was set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt a step until it succeeds or fails with an error not in `retry_on`; between
    attempts wait `initial_s`, doubling up to `maximum_s`, unless shutdown is requested."""

    retry_on: tuple[type[BaseException], ...]
    initial_s: float = 0.2
    maximum_s: float = 30.0
    sleep: Sleep = wait_or_stop

    def delays(self) -> Iterator[float]:
        """The waits between attempts: initial_s, doubling, then maximum_s for ever."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.maximum_s)

    async def call(
        self,
        step: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        on_retry: OnRetry | None = None,
    ) -> T:
        """The value of `attempt()`, retried through outages; StopRequestedError if `stop` is
        set while waiting. Errors outside `retry_on` propagate at once."""
        for delay in self.delays():
            try:
                return await attempt()
            except self.retry_on as error:
                if on_retry is not None:
                    on_retry(step, error, delay)
            if await self.sleep(delay, stop):
                raise StopRequestedError(step)
        raise AssertionError("delays() never ends")  # pragma: no cover
