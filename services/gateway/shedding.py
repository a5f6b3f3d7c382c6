"""Load shedding at the gateway's door: beyond a bounded number of ingest requests (or declared
body bytes) in flight, answer 503 with Retry-After at once, before the body is read.

One credential (the request's Authorization header, whoever it turns out to be) holds at most a
share of the requests in flight, so one organisation's slow batches — or a stolen token of one
small office — cannot take every slot while every other agency gets 503s. The door runs before
the token is checked (a refusal must cost nothing), so it counts credentials, not
organisations; requests without one share one count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from carebus.runtime import metrics


@dataclass(slots=True)
class InFlight:
    """The requests and declared body bytes in flight, against their limits (pure bookkeeping)."""

    max_requests: int
    max_bytes: int
    # The most requests one credential holds in flight (0: no share, max_requests).
    max_per_caller: int = 0
    requests: int = 0
    bytes: int = 0
    callers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_per_caller <= 0:
            self.max_per_caller = self.max_requests

    def admit(self, declared: int, caller: str = "") -> str | None:
        """Count a request of `caller` (a credential's digest) with `declared` body bytes in;
        the limit it would exceed instead."""
        if self.requests >= self.max_requests:
            return "requests"
        held = self.callers.get(caller, 0)
        if held >= self.max_per_caller:
            return "caller"
        # One request larger than the whole byte budget is still served alone (its own route's
        # body limit bounds it); otherwise the budget bounds the sum.
        if self.requests and self.bytes + declared > self.max_bytes:
            return "bytes"
        self.requests += 1
        self.bytes += declared
        self.callers[caller] = held + 1
        return None

    def release(self, declared: int, caller: str = "") -> None:
        self.requests -= 1
        self.bytes -= declared
        held = self.callers.pop(caller, 1) - 1
        if held > 0:
            self.callers[caller] = held


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
        caller = _credential(scope)
        refused = self._in_flight.admit(declared, caller)
        if refused is not None:
            metrics.GATEWAY_SHED.labels(refused).inc()
            await self._shed(send)
            return
        metrics.GATEWAY_IN_FLIGHT.set(self._in_flight.requests)
        metrics.GATEWAY_BYTES_IN_FLIGHT.set(self._in_flight.bytes)
        try:
            await self._app(scope, receive, send)
        finally:
            self._in_flight.release(declared, caller)
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


def _credential(scope: Scope) -> str:
    """A digest of the request's Authorization header ("" without one): who holds a slot, never
    kept beyond the request, never the token itself."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hashlib.blake2b(value, digest_size=16).hexdigest()
    return ""
