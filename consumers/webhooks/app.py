"""The one place webhook delivery is wired: broker, database, HTTP client, /metrics, signals."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import httpx

from carebus.adapters import resources
from carebus.adapters.deadletter import DeadLetterPolicy
from carebus.adapters.sink import BatchSink
from carebus.adapters.webhook_registrations import SecretBox
from carebus.runtime.config import Settings, get_settings
from carebus.runtime.telemetry import get_logger
from carebus.runtime.worker import WorkerContext, run_worker
from carebus.wire import topics
from carebus.wire.codec import Codec
from carebus.wire.sealing import KeyWrap

from .dispatcher import NAME, Dispatcher
from .protocol import RetryPolicy
from .queue import QueueWriter, WebhookQueue
from .targets import guarded_client

log = get_logger(__name__)

GROUP_ID: Final = "carebus-webhooks"
BATCH_SIZE: Final = 500


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        initial_s=settings.webhook_backoff_initial_s,
        maximum_s=settings.webhook_backoff_max_s,
        retry_for_s=settings.webhook_retry_for_s,
    )


async def run(settings: Settings) -> None:
    """Run intake and dispatcher until SIGTERM or SIGINT (or until either fails).

    /healthz is ready while the database and the broker answer, the intake consumer has its
    partitions and both loops made progress within the last minute.
    """
    # httpx logs every request with its URL at INFO; a webhook URL may embed the receiver's
    # own credentials, and the outcome lines below say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def body(context: WorkerContext) -> None:
        pool = await resources.database(context, max_size=min(settings.webhook_concurrency, 16) + 2)
        codec = Codec.default()
        # One producer per dead-letter policy: each policy tracks its own letters' reports.
        intake_letters = resources.producer(context, f"{NAME}-intake-deadletters")
        dispatch_letters = resources.producer(context, f"{NAME}-dispatch-deadletters")
        consumer = resources.consumer(context, GROUP_ID, topics.DELIVERIES)
        limits = httpx.Limits(
            max_connections=settings.webhook_concurrency,
            max_keepalive_connections=settings.webhook_concurrency,
        )
        targets = settings.webhook_targets()
        client = await context.resources.enter_async_context(
            guarded_client(targets, timeout_s=settings.webhook_timeout_s, limits=limits)
        )
        dispatcher = Dispatcher(
            queue=WebhookQueue(
                pool, SecretBox.from_settings(settings), KeyWrap.from_settings(settings)
            ),
            client=client,
            dead_letters=DeadLetterPolicy(dispatch_letters, codec, NAME),
            retry=retry_policy(settings),
            targets=targets,
            concurrency=settings.webhook_concurrency,
            timeout_s=settings.webhook_timeout_s,
        )
        # Woken after each committed batch: only then are the new rows visible to its claim.
        intake = BatchSink(
            on_committed=dispatcher.wake,
            name=NAME,
            group_id=GROUP_ID,
            consumer=consumer,
            pool=pool,
            codec=codec,
            writer=QueueWriter(),
            dead_letters=DeadLetterPolicy(intake_letters, codec, NAME),
            batch_size=BATCH_SIZE,
        )
        context.readiness.add("progress", lambda: intake.healthy() and dispatcher.healthy())
        await _run_both(intake, dispatcher, context.stop)

    await run_worker(NAME, settings, body, metrics_port=settings.metrics_port)


async def _run_both(intake: BatchSink, dispatcher: Dispatcher, stop: asyncio.Event) -> None:
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


def main() -> None:
    asyncio.run(run(get_settings()))


if __name__ == "__main__":
    main()
