"""HL7 v2 over MLLP: a TCP listener with the standard framing (`0x0B` message `0x1C 0x0D`),
each message answered with its ACK on the same connection, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from hl7.mllp import InvalidBlockError, start_hl7_server

log = structlog.get_logger("carebus.adapters.mllp")

# One message's bytes (inside the frame) to its ACK's bytes.
Handler = Callable[[bytes], Awaitable[bytes]]


class MllpListener:
    """Serves `handler` on host:port. A connection idle longer than `idle_timeout_s`, a frame
    larger than `max_message_bytes` or bytes outside a frame end the connection (a sender
    reconnects and resends what it has no ACK for: the same message maps to the same events);
    beyond `max_connections` open ones a new connection is closed at once."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_message_bytes: int,
        idle_timeout_s: float,
        max_connections: int = 64,
    ) -> None:
        self._handler = handler
        self._limit = max_message_bytes
        self._idle_timeout_s = idle_timeout_s
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await start_hl7_server(self._connected, host, port, limit=self._limit)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()

    def _connected(self, reader: Any, writer: Any) -> None:
        if len(self._connections) >= self._max_connections:
            log.info("mllp connection refused", reason="too many connections")
            writer.close()
            return
        # Kept until done (the event loop holds tasks weakly), and cancelled on stop.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self._idle_timeout_s)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except (InvalidBlockError, ValueError):
                    # Not MLLP, or a frame over the limit: nothing to answer to reliably.
                    log.info("mllp connection closed", reason="bad frame or too large")
                    return
                writer.writeblock(await self._handler(bytes(block)))
                # A sender that stops reading its ACKs holds no buffer of ours for long.
                await asyncio.wait_for(writer.drain(), self._idle_timeout_s)
        except (ConnectionError, TimeoutError):
            return
        except Exception as error:  # a bug must end this connection, not the listener
            log.error("mllp connection failed", error_type=type(error).__name__)
        finally:
            writer.close()
