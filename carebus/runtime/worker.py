"""The one way a carebus worker runs: logging, signals, /metrics and /healthz, orderly shutdown.

`run_worker` is what every worker without an HTTP API (the store sinks, webhook delivery) is:
it configures logging, turns SIGTERM/SIGINT into a stop event, serves `/metrics` and `/healthz`
on the worker's metrics port, and hands the worker's own body a `WorkerContext`. The body sets up
what it needs (a pool, producers, a consumer — `carebus.adapters.resources` has one function for
each, with retry), registering each resource on the context's exit stack and each check on its
readiness, then runs until `stop` is set. Resources are released in the reverse order of their
set-up, whatever ended the body. The stream processors (router, SLA engine) run on faust's own
worker, which owns their event loop and signals; they share the rest (`serve_health`,
`Readiness`) through `carebus.adapters.streams.run_stream`.

`/healthz` is readiness, not liveness: 200 only when every registered check passes (the broker
answers, the database answers, the consumer has its partitions, the loop is not stuck), else 503
with the failing checks named, so an orchestrator sends no work to and alerts on a worker that
is up but cannot do its job. The checks run in the background, so /healthz itself answers
at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from carebus.runtime.config import Settings
from carebus.runtime.retry import StopRequestedError
from carebus.runtime.telemetry import configure_logging, get_logger

log = get_logger(__name__)

Check = Callable[[], bool]
# How often the checks are asked, in the background: /healthz answers at once from the last
# answers (a probe may take seconds against a dead broker; an orchestrator's probe waits ~1 s).
CHECK_INTERVAL_S: Final = 2.0


class Readiness:
    """Named checks; ready when every one passes. A check that raises, or has not answered
    yet, counts as failing.

    Checks run on a background thread (started by the first `report`), every CHECK_INTERVAL_S,
    so they must be safe to call from another thread; a slow one delays only the next answer.
    """

    def __init__(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        self._checks: dict[str, Check] = {}
        self._answers: dict[str, bool] = {}
        self._flags: dict[str, bool] = {}
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None

    def add(self, name: str, check: Check) -> None:
        """Ask `check()` in the background; its last answer is reported."""
        self._checks[name] = check

    def mark(self, name: str, ready: bool) -> None:
        """A check whose answer the worker keeps up to date itself (e.g. partitions assigned)."""
        self._flags[name] = ready

    def refresh(self) -> None:
        """Ask every check now; each answer is reported as soon as it is in (a slow check
        does not hold back the others')."""
        for name, check in list(self._checks.items()):
            self._answers = {**self._answers, name: _answer(check)}

    def report(self) -> dict[str, bool]:
        """Each check's last answer, by name."""
        self._keep_refreshing()
        answers = self._answers
        return {**{name: answers.get(name, False) for name in self._checks}, **self._flags}

    def ready(self) -> bool:
        return all(self.report().values())

    def _keep_refreshing(self) -> None:
        with self._lock:
            if self._refresher is None and self._checks:
                self._refresher = threading.Thread(
                    target=self._refresh_forever, name="readiness", daemon=True
                )
                self._refresher.start()

    def _refresh_forever(self) -> None:
        while True:
            self.refresh()
            time.sleep(self._interval_s)


def _answer(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:  # a check that cannot answer is a check that fails
        return False


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Access lines would go to stderr unstructured; the scrape itself is not news.
        return


def serve_health(service: str, host: str, port: int, readiness: Readiness) -> WSGIServer:
    """Serve `/metrics` (Prometheus) and `/healthz` (readiness) on a daemon thread.

    Exits the process with a message naming the port when it cannot be bound.
    """
    prometheus = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            checks = readiness.report()
            ok = all(checks.values())
            status = "200 OK" if ok else "503 Service Unavailable"
            body = {"status": "ok" if ok else "unready", "service": service, "checks": checks}
            return _json(start_response, status, body)
        error = {"code": "not_found", "message": "no such path", "details": []}
        return _json(start_response, "404 Not Found", {"error": error})

    try:
        server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise SystemExit(
            f"{service}: cannot serve /metrics on {host}:{port} ({exc.strerror})"
        ) from None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def _json(start_response: Callable[..., Any], status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


@dataclass(frozen=True)
class WorkerContext:
    """What a worker's body gets: its settings, the stop event, where to register resources
    (released in reverse order when the body ends) and readiness checks."""

    name: str
    settings: Settings
    stop: asyncio.Event
    resources: AsyncExitStack
    readiness: Readiness


Body = Callable[[WorkerContext], Awaitable[None]]


async def run_worker(name: str, settings: Settings, body: Body, *, metrics_port: int) -> None:
    """Run `body` as the worker `name` until SIGTERM or SIGINT (or until the body returns)."""
    configure_logging(name, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    readiness = Readiness()
    server = serve_health(name, settings.http_host, metrics_port, readiness)
    try:
        async with AsyncExitStack() as resources:
            context = WorkerContext(name, settings, stop, resources, readiness)
            try:
                await body(context)
            except StopRequestedError as exc:  # stopped while a set-up step waited
                log.info("worker.stopped_during_setup", step=str(exc))
    finally:
        server.shutdown()
        server.server_close()
        log.info("worker.stopped", worker=name)
