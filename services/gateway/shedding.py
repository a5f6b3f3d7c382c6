"""Load shedding at the gateway's door: beyond a bounded number of ingest requests (or declared
body bytes) in flight, answer 503 with Retry-After at once, before the body is read."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from carebus.runtime import metrics


@dataclass(slots=True)
class InFlight:
    """The requests and declared body bytes in flight, against their limits (pure bookkeeping)."""

    max_requests: int
    max_bytes: int
    requests: int = 0
    bytes: int = 0

    def admit(self, declared: int) -> str | None:
        """Count a request with `declared` body bytes in; the limit it would exceed instead."""
        if self.requests >= self.max_requests:
            return "requests"
        # One request larger than the whole byte budget is still served alone (its own route's
        # body limit bounds it); otherwise the budget bounds the sum.
        if self.requests and self.bytes + declared > self.max_bytes:
            return "bytes"
        self.requests += 1
        self.bytes += declared
        return None

    def release(self, declared: int) -> None:
        self.requests -= 1
        self.bytes -= declared


_SHED_BODY = json.dumps(
    {
        "error": {
            "code": "unavailable",
            "message": "the gateway is at its limit of requests in flight; retry later",
            "details": [],
        }
    }
).encode()


class ShedLoad:
    """ASGI middleware: POSTs to `paths` are admitted by `in_flight` or answered 503 at once."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Collection[str],
        in_flight: InFlight,
        unknown_length: int,
        retry_after_s: int,
    ) -> None:
        self._app = app
        self._paths = frozenset(paths)
        self._in_flight = in_flight
        # A chunked body has no declared length: it is counted at its route's body limit.
        self._unknown_length = unknown_length
        self._retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self._paths:
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope, self._unknown_length)
        refused = self._in_flight.admit(declared)
        if refused is not None:
            metrics.GATEWAY_SHED.labels(refused).inc()
            await self._shed(send)
            return
        metrics.GATEWAY_IN_FLIGHT.set(self._in_flight.requests)
        metrics.GATEWAY_BYTES_IN_FLIGHT.set(self._in_flight.bytes)
        try:
            await self._app(scope, receive, send)
        finally:
            self._in_flight.release(declared)
            metrics.GATEWAY_IN_FLIGHT.set(self._in_flight.requests)
            metrics.GATEWAY_BYTES_IN_FLIGHT.set(self._in_flight.bytes)

    async def _shed(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_SHED_BODY)).encode()),
                    (b"retry-after", self._retry_after),
                    (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff"),
                    # The unread body makes the connection unusable for another request.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _SHED_BODY})


def _content_length(scope: Scope, unknown: int) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return unknown
    return unknown
