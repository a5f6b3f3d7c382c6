"""The one place webhook delivery is wired: broker, database, HTTP client, /metrics, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Final

import asyncpg
import httpx
from confluent_kafka import Consumer, Message, Producer

from carebus.adapters.db import create_pool
from carebus.adapters.deadletter import DeadLetterPolicy
from carebus.adapters.kafka import consumer_config, producer_config
from carebus.adapters.sink import BatchSink, count_retry, serve_metrics, sink_retry
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.retry import StopRequestedError
from carebus.runtime.telemetry import configure_logging, get_logger
from carebus.wire import topics
from carebus.wire.codec import Codec

from .dispatcher import NAME, Dispatcher
from .protocol import RetryPolicy
from .queue import QueueWriter, WebhookQueue

log = get_logger(__name__)

GROUP_ID: Final = "carebus-webhooks"
BATCH_SIZE: Final = 500


class IntakeSink(BatchSink):
    """The store-sink batch loop over the deliveries topics, nudging the dispatcher per batch."""

    def __init__(self, *, on_committed: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_committed = on_committed

    async def process(self, messages: Sequence[Message], stop: asyncio.Event) -> None:
        await super().process(messages, stop)
        # Only now are the new rows committed and visible to the dispatcher's claim.
        self._on_committed()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        initial_s=settings.webhook_backoff_initial_s,
        maximum_s=settings.webhook_backoff_max_s,
        retry_for_s=settings.webhook_retry_for_s,
    )


async def run(settings: Settings) -> None:
    """Run intake and dispatcher until SIGTERM or SIGINT (or until either fails)."""
    configure_logging(NAME, settings)
    # httpx logs every request with its URL at INFO; a webhook URL may embed the receiver's
    # own credentials, and the outcome lines below say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    intake: IntakeSink | None = None
    dispatcher: Dispatcher | None = None

    def healthy() -> bool:
        return bool(intake and intake.healthy() and dispatcher and dispatcher.healthy())

    try:
        server = serve_metrics(settings.http_host, settings.metrics_port, healthy)
    except OSError as exc:
        raise SystemExit(
            f"{NAME}: cannot serve /metrics on {settings.http_host}:{settings.metrics_port} "
            f"({exc.strerror})"
        ) from None
    try:
        pool = await _connect(settings, stop)
        if pool is None:
            return
        kafka_log = logging.getLogger("librdkafka")
        codec = Codec.default()
        # One producer per dead-letter policy: each policy tracks its own letters' reports.
        intake_producer = Producer(
            producer_config(settings, f"{NAME}-intake-deadletters", logger=kafka_log)
        )
        dispatch_producer = Producer(
            producer_config(settings, f"{NAME}-dispatch-deadletters", logger=kafka_log)
        )
        consumer = Consumer(
            consumer_config(settings, GROUP_ID, **{"client.id": NAME}, logger=kafka_log)
        )
        limits = httpx.Limits(
            max_connections=settings.webhook_concurrency,
            max_keepalive_connections=settings.webhook_concurrency,
        )
        try:
            async with httpx.AsyncClient(
                timeout=settings.webhook_timeout_s, limits=limits, follow_redirects=False
            ) as client:
                dispatcher = Dispatcher(
                    queue=WebhookQueue(pool),
                    client=client,
                    dead_letters=DeadLetterPolicy(dispatch_producer, codec, NAME),
                    retry=retry_policy(settings),
                    concurrency=settings.webhook_concurrency,
                    timeout_s=settings.webhook_timeout_s,
                )
                intake = IntakeSink(
                    on_committed=dispatcher.wake,
                    name=NAME,
                    group_id=GROUP_ID,
                    consumer=consumer,
                    pool=pool,
                    codec=codec,
                    writer=QueueWriter(),
                    dead_letters=DeadLetterPolicy(intake_producer, codec, NAME),
                    batch_size=BATCH_SIZE,
                )
                consumer.subscribe(
                    list(topics.DELIVERIES),
                    on_revoke=intake.forget_partitions,
                    on_lost=intake.forget_partitions,
                )
                await _run_both(intake, dispatcher, stop)
        finally:
            # Leaving the group at once lets another member take the partitions without
            # waiting for the session timeout.
            await asyncio.to_thread(consumer.close)
            for producer in (intake_producer, dispatch_producer):
                await asyncio.to_thread(producer.flush, settings.produce_timeout_s)
            await pool.close()
    finally:
        server.shutdown()
        log.info("webhooks.stopped")


async def _run_both(intake: IntakeSink, dispatcher: Dispatcher, stop: asyncio.Event) -> None:
    """Both loops until `stop`; if one ends on its own (a fatal error), the other stops too."""
    tasks = [
        asyncio.create_task(intake.run(stop), name="intake"),
        asyncio.create_task(dispatcher.run(stop), name="dispatcher"),
    ]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def _connect(settings: Settings, stop: asyncio.Event) -> asyncpg.Pool | None:
    """A pool for both loops' short statements, retried until the database is up."""

    async def attempt() -> asyncpg.Pool:
        return await create_pool(
            settings, min_size=1, max_size=min(settings.webhook_concurrency, 16) + 2
        )

    try:
        return await sink_retry().call("connect", attempt, stop=stop, on_retry=count_retry(NAME))
    except StopRequestedError:
        return None


def main() -> None:
    asyncio.run(run(get_settings()))


if __name__ == "__main__":
    main()
