"""Fault (a): one of three Kafka brokers is killed with SIGKILL under load, stays down for
CAREBUS_FAULT_OUTAGE_SECONDS, and is started again; the other two keep the topics writable."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from carebus_dev.testing import TestStack
from tests.faults.harness import FaultConfig, Pipeline, blocking, run_scenario
from tests.faults.timeouts import scenario_timeout

pytestmark = pytest.mark.timeout(scenario_timeout())

CONFIG = FaultConfig.from_env()
VICTIM = 1  # not the first broker, which the stack's clients were first given to bootstrap


@pytest.fixture
def three_broker_stack() -> Iterator[TestStack]:
    """Three brokers (topics replicated to all three, min.insync.replicas 2) and a database."""
    with TestStack(brokers=3) as stack:
        yield stack


async def broker_killed(pipeline: Pipeline) -> dict[str, Any]:
    stack = pipeline.stack
    await blocking(lambda: stack.kill_broker(VICTIM, sig=signal.SIGKILL))
    await asyncio.sleep(CONFIG.outage_s)
    # Returns once the broker is back in the in-sync replicas of all its partitions.
    await blocking(lambda: stack.start_broker(VICTIM))
    return {"broker": VICTIM}


async def test_one_of_three_brokers_killed_loses_and_duplicates_nothing(
    three_broker_stack: TestStack,
) -> None:
    """kill -9 of one broker of three and its restart: every accepted event is stored, audited
    and delivered once, in order; the gateway answers 202 or 503 + Retry-After, never 500."""
    figures = await run_scenario(
        three_broker_stack,
        "a_broker_killed",
        f"broker {VICTIM} of 3 killed with SIGKILL, down {CONFIG.outage_s:.0f} s, started again",
        broker_killed,
        config=CONFIG,
    )
    assert figures.problems() == [], figures
