"""A real webhook receiver on loopback for the fault tests: it records every request by
`delivery_id` (the `Idempotency-Key` header) and can be taken "down" (answering 503) and back."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Arrival:
    """One request the receiver answered."""

    delivery_id: str
    event_id: str
    status: int
    at: float  # time.monotonic()


@dataclass
class WebhookReceiver:
    """Answers 200 while up and 503 while down; every request is kept, in arrival order."""

    port: int = 0
    down: bool = False
    arrivals: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/carebus"

    def start(self) -> WebhookReceiver:
        server = _Server(("127.0.0.1", 0), _handler(self))
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, name="fault-receiver", daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, delivery_id: str, event_id: str) -> int:
        status = 503 if self.down else 200
        with self.lock:
            self.arrivals.append(Arrival(delivery_id, event_id, status, time.monotonic()))
        return status

    def delivered(self) -> list[Arrival]:
        """The requests answered 2xx, in arrival order."""
        with self.lock:
            return [a for a in self.arrivals if 200 <= a.status < 300]

    def delivered_ids(self) -> set[str]:
        return {a.delivery_id for a in self.delivered()}

    def duplicated(self) -> int:
        """Deliveries accepted (2xx) more than once: each extra acceptance counts."""
        counts = Counter(a.delivery_id for a in self.delivered())
        return sum(count - 1 for count in counts.values() if count > 1)

    def refused(self) -> int:
        with self.lock:
            return sum(1 for a in self.arrivals if a.status >= 500)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 resets connections when many requests arrive at once.
    request_queue_size = 128


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                event_id = str(json.loads(body).get("event_id", ""))
            except ValueError:
                event_id = ""
            status = receiver.answer(self.headers.get("Idempotency-Key", ""), event_id)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    return Handler
