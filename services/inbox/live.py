"""Live alert changes: one LISTEN connection per inbox process, fanned out to its SSE streams.

The alert store sink and the inbox itself `pg_notify('carebus_alerts', alert_id)` in the
transaction that changes an alert. The feed queues the ids it hears, loads those alerts in
notification order (one loader, so a later state is never overtaken by an earlier one) and
hands each one, as a ready SSE frame, to every stream whose caller may see it.

A stream that falls too far behind is closed (its client reconnects and reloads the list). When
the LISTEN connection is lost the feed reconnects with backoff and tells every stream to reload,
since changes made while it was away were not heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from carebus.adapters.auth import Principal
from carebus.adapters.outages import OUTAGES
from carebus.runtime import metrics
from carebus.runtime.retry import RetryPolicy
from carebus.runtime.telemetry import get_logger
from services.inbox.alerts import AlertRow, alert_json, can_see
from services.inbox.store import CHANNEL

log = get_logger(__name__)

# The LISTEN connection's application_name, so operators (and tests) can find it.
LISTENER_NAME: Final = "carebus-inbox-listen"
# Sent to a stream after the LISTEN connection came back: changes may have been missed.
RESYNC_FRAME: Final = "event: resync\ndata: {}\n\n"
# Each stream's frames waiting to be sent; a stream that falls this far behind is closed.
STREAM_QUEUE: Final = 1000
# Alert ids heard but not yet loaded; past it they are dropped and every stream is told to
# resync (reload its list), which loses nothing a reader may see.
HEARD_QUEUE: Final = 10_000
# A database that does not answer is retried with backoff rather than waited on for asyncpg's 60 s.
LISTEN_CONNECT_TIMEOUT_S: Final = 5.0
# What the feed waits out: the database's outages, and any error of a lost LISTEN connection.
_CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (*OUTAGES, asyncpg.PostgresError)

Loader = Callable[[Sequence[str]], Awaitable[Sequence[AlertRow]]]


def alert_frame(alert: dict[str, Any]) -> str:
    """One alert as a server-sent event (JSON has no raw newline, so one `data:` line)."""
    return "event: alert\ndata: " + json.dumps(alert, separators=(",", ":")) + "\n\n"


@dataclass(eq=False)
class Subscriber:
    """One open stream: who is reading it, and the frames waiting to be sent (None: close)."""

    caller: Principal
    frames: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(STREAM_QUEUE))

    def offer(self, frame: str) -> None:
        """Queue `frame`; a stream that cannot keep up is told to close instead."""
        try:
            self.frames.put_nowait(frame)
        except asyncio.QueueFull:
            while not self.frames.empty():
                self.frames.get_nowait()
            self.frames.put_nowait(None)


class AlertFeed:
    """Listens for alert changes and hands each to the streams allowed to see it."""

    def __init__(
        self,
        dsn: str,
        load: Loader,
        *,
        ping_interval_s: float = 5.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._load = load
        self._ping_interval_s = ping_interval_s
        self._max_backoff_s = max_backoff_s
        self._subscribers: set[Subscriber] = set()
        self._heard: asyncio.Queue[str] = asyncio.Queue(HEARD_QUEUE)
        self.connected = False

    def room_for(self, caller: Principal, *, total: int, per_org: int) -> str | None:
        """None if `caller` may open another stream; else which cap is reached: "total" (this
        process holds `total` streams) or "organisation" (the caller's holds `per_org`)."""
        if len(self._subscribers) >= total:
            return "total"
        held = sum(1 for s in self._subscribers if s.caller.org_id == caller.org_id)
        return "organisation" if held >= per_org else None

    def subscribe(self, caller: Principal) -> Subscriber:
        subscriber = Subscriber(caller)
        self._subscribers.add(subscriber)
        metrics.INBOX_STREAMS.set(len(self._subscribers))
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        metrics.INBOX_STREAMS.set(len(self._subscribers))

    async def run(self) -> None:
        """Listen and fan out until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen())
            tasks.create_task(self._fan_out())

    def publish(self, rows: Sequence[AlertRow]) -> None:
        """Hand each alert to every stream whose caller may see it."""
        for row in rows:
            frame: str | None = None
            for subscriber in list(self._subscribers):
                if not can_see(subscriber.caller, row["recipient_org"], row["audience"]):
                    continue
                frame = frame or alert_frame(alert_json(row))
                subscriber.offer(frame)
                metrics.INBOX_STREAM_FRAMES.inc()

    def _heard_change(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._heard.put_nowait(str(payload))
        except asyncio.QueueFull:
            while not self._heard.empty():
                self._heard.get_nowait()
            log.warning("inbox.feed_overflow", dropped=HEARD_QUEUE)
            self._resync()

    def _resync(self) -> None:
        for subscriber in list(self._subscribers):
            subscriber.offer(RESYNC_FRAME)

    async def _fan_out(self) -> None:
        while True:
            alert_ids = [await self._heard.get()]
            while not self._heard.empty():
                alert_ids.append(self._heard.get_nowait())
            # An alert changed twice since the last load is loaded (and sent) once.
            unique = list(dict.fromkeys(alert_ids))
            try:
                rows = await self._load(unique)
            except _CONNECTION_ERRORS as exc:
                log.warning("inbox.feed_load_failed", error=type(exc).__name__)
                self._resync()
                continue
            self.publish(rows)

    async def _listen(self) -> None:
        connecting = RetryPolicy(_CONNECTION_ERRORS, initial_s=0.2, maximum_s=self._max_backoff_s)
        first = True
        while True:
            conn = await connecting.call("listen", self._connect, on_retry=_log_connect_failed)
            try:
                await self._listen_on(conn, first=first)
            except _CONNECTION_ERRORS as exc:
                log.warning("inbox.listen_lost", error=type(exc).__name__)
            finally:
                self.connected = False
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    conn.terminate()
            first = False
            await asyncio.sleep(connecting.initial_s)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn,
            timeout=LISTEN_CONNECT_TIMEOUT_S,
            server_settings={"application_name": LISTENER_NAME},
        )

    async def _listen_on(self, conn: asyncpg.Connection, *, first: bool) -> None:
        """Until the connection is lost: LISTEN, and ping so a silent loss is noticed too."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._heard_change)
        self.connected = True
        log.info("inbox.listening", reconnected=not first)
        if not first:
            metrics.INBOX_LISTEN_RECONNECTS.inc()
            self._resync()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval_s)
            except TimeoutError:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._ping_interval_s)


def _log_connect_failed(step: str, error: BaseException, delay: float) -> None:
    log.warning("inbox.listen_connect_failed", error=type(error).__name__, retry_in_s=delay)
