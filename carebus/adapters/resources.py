"""What a worker sets up, one function each: a database pool, a producer, a consumer.

Each function registers the resource on the worker's exit stack (so it is released, in reverse
order, however the worker ends) and its readiness check on the worker's /healthz:

- `database`: retried with backoff until PostgreSQL answers (or shutdown is asked); ready while
  `SELECT 1` answers;
- `producer`: ready while the broker answers a metadata request; flushed on the way out;
- `consumer`: subscribed; ready once the group has assigned it its partitions (and again after
  it lost them); closed on the way out, which leaves the group at once so another member takes
  the partitions without waiting for the session timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition

from carebus.adapters.db import create_pool
from carebus.adapters.kafka import consumer_config, producer_config
from carebus.adapters.outages import OUTAGES
from carebus.runtime import metrics
from carebus.runtime.retry import OnRetry, RetryPolicy
from carebus.runtime.telemetry import get_logger
from carebus.runtime.worker import Check, WorkerContext

log = get_logger(__name__)

# How long a readiness probe may take before the dependency counts as unreachable.
PROBE_TIMEOUT_S: Final = 2.0
# A worker cannot tell a passing database refusal from a lasting one: beyond the outages, any
# database error that is not a row's fault is waited out too (the store sinks dead-letter the
# rows the database refuses for their content, SQLSTATE classes 22 and 23, before this applies).
TRANSIENT_ERRORS: Final[tuple[type[BaseException], ...]] = (*OUTAGES, asyncpg.PostgresError)
# The first connection is waited for like any other outage (a database still starting).
CONNECT_RETRY: Final = RetryPolicy(TRANSIENT_ERRORS, initial_s=0.2, maximum_s=30.0)
# librdkafka's own log lines then come out as JSON like every other line.
KAFKA_LOG: Final = logging.getLogger("librdkafka")


def count_retry(worker: str) -> OnRetry:
    """Count and log each retry of a worker's step (`carebus_sink_retries_total{sink,step}`)."""

    def on_retry(step: str, error: BaseException, delay: float) -> None:
        metrics.SINK_RETRIES.labels(worker, step).inc()
        log.warning("sink.retry", step=step, error=type(error).__name__, retry_in_s=round(delay, 2))

    return on_retry


async def database(
    context: WorkerContext,
    *,
    min_size: int = 1,
    max_size: int = 2,
    init: Callable[[Any], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool on the worker's database, once it answers; StopRequestedError if stopped first."""

    async def attempt() -> asyncpg.Pool:
        return await create_pool(context.settings, min_size=min_size, max_size=max_size, init=init)

    pool = await CONNECT_RETRY.call(
        "connect", attempt, stop=context.stop, on_retry=count_retry(context.name)
    )
    context.resources.push_async_callback(pool.close)
    context.readiness.add("database", pool_answers(pool))
    return pool


def pool_answers(pool: asyncpg.Pool) -> Check:
    """A readiness check, for another thread, that `pool`'s database answers `SELECT 1`.

    Must be made on the event loop the pool belongs to; the probe runs there."""
    loop = asyncio.get_running_loop()

    def answers() -> bool:
        probe = asyncio.run_coroutine_threadsafe(pool.fetchval("SELECT 1"), loop)
        return bool(probe.result(timeout=PROBE_TIMEOUT_S) == 1)

    return answers


def producer(context: WorkerContext, client_id: str) -> Producer:
    """An idempotent producer (for dead letters), flushed when the worker stops."""
    client = Producer(producer_config(context.settings, client_id, logger=KAFKA_LOG))

    async def flush() -> None:
        await asyncio.to_thread(client.flush, context.settings.produce_timeout_s)

    context.resources.push_async_callback(flush)
    context.readiness.add("broker", lambda: broker_answers(client))
    return client


def broker_answers(client: Producer | Consumer) -> bool:
    """Whether the cluster answers a metadata request within PROBE_TIMEOUT_S."""
    return client.list_topics(timeout=PROBE_TIMEOUT_S).brokers is not None


def consumer(context: WorkerContext, group_id: str, topics: Sequence[str]) -> Consumer:
    """A consumer of `topics` in `group_id`, closed (leaving the group) when the worker stops.

    Partitions taken away or lost drop their `carebus_consumer_lag` series: this member no
    longer reports them, and a stale series would show lag nobody has.
    """
    client = Consumer(
        consumer_config(context.settings, group_id, **{"client.id": context.name}, logger=KAFKA_LOG)
    )
    context.readiness.mark("consumer", False)

    def assigned(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        context.readiness.mark("consumer", True)

    def revoked(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(group_id, tp.topic, str(tp.partition))

    def lost(consumer_: Consumer, partitions: list[TopicPartition]) -> None:
        context.readiness.mark("consumer", False)
        revoked(consumer_, partitions)

    client.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=lost)

    async def close() -> None:
        await asyncio.to_thread(client.close)

    context.resources.push_async_callback(close)
    return client
