"""The one retry policy (carebus.runtime.retry) and the one list of outages."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from carebus.adapters.outages import OUTAGES
from carebus.adapters.resources import TRANSIENT_ERRORS
from carebus.runtime.retry import RetryPolicy, StopRequestedError


class FakeClock:
    """Records the waits instead of waiting; reports `stop` after `stop_after` waits."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after

    async def __call__(self, seconds: float, stop: asyncio.Event | None) -> bool:
        self.waits.append(seconds)
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def failing(times: int, error: BaseException, value: str = "done"):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    async def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return value

    return attempt, calls


async def test_returns_the_value_after_waiting_out_outages() -> None:
    clock = FakeClock()
    policy = RetryPolicy((ConnectionError,), initial_s=0.5, maximum_s=3.0, sleep=clock)
    attempt, calls = failing(5, ConnectionError("refused"))
    seen: list[tuple[str, str, float]] = []

    value = await policy.call(
        "write", attempt, on_retry=lambda s, e, d: seen.append((s, type(e).__name__, d))
    )

    assert value == "done"
    assert calls["n"] == 6
    assert clock.waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert seen[0] == ("write", "ConnectionError", 0.5)
    assert len(seen) == 5


async def test_an_error_that_is_not_an_outage_propagates_at_once() -> None:
    clock = FakeClock()
    policy = RetryPolicy((ConnectionError,), sleep=clock)
    attempt, calls = failing(1, ValueError("bad row"))

    with pytest.raises(ValueError, match="bad row"):
        await policy.call("write", attempt)
    assert calls["n"] == 1
    assert clock.waits == []


async def test_shutdown_while_waiting_stops_the_step() -> None:
    clock = FakeClock(stop_after=2)
    policy = RetryPolicy((TimeoutError,), sleep=clock)
    attempt, calls = failing(100, TimeoutError())

    with pytest.raises(StopRequestedError, match="commit"):
        await policy.call("commit", attempt, stop=asyncio.Event())
    assert calls["n"] == 2


async def test_the_real_clock_is_cut_short_by_stop() -> None:
    stop = asyncio.Event()
    stop.set()
    policy = RetryPolicy((TimeoutError,), initial_s=60.0)
    attempt, _ = failing(1, TimeoutError())

    with pytest.raises(StopRequestedError):
        await asyncio.wait_for(policy.call("connect", attempt, stop=stop), timeout=5)


def test_delays_double_up_to_the_maximum() -> None:
    delays = RetryPolicy((), initial_s=0.2, maximum_s=1.0).delays()
    assert [next(delays) for _ in range(6)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_outages_are_connection_failures_not_refused_values() -> None:
    assert issubclass(asyncpg.exceptions.CannotConnectNowError, OUTAGES)
    assert issubclass(asyncpg.exceptions.AdminShutdownError, OUTAGES)
    assert issubclass(ConnectionRefusedError, OUTAGES)
    # a value the database refuses is the record's fault: never an outage
    assert not issubclass(asyncpg.exceptions.CharacterNotInRepertoireError, OUTAGES)
    assert not issubclass(asyncpg.exceptions.UniqueViolationError, OUTAGES)
    # a store sink waits out the outages and every other database error
    assert set(OUTAGES) < set(TRANSIENT_ERRORS)
