"""The one worker runtime: readiness, /healthz and /metrics, orderly shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from carebus.runtime.config import get_settings
from carebus.runtime.retry import StopRequestedError
from carebus.runtime.worker import Readiness, WorkerContext, run_worker, serve_health
from carebus_dev.testing import free_ports


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_ready_only_when_every_check_passes() -> None:
    readiness = Readiness()
    readiness.add("database", lambda: True)
    readiness.mark("consumer", False)
    readiness.refresh()
    assert readiness.report() == {"database": True, "consumer": False}
    assert not readiness.ready()
    readiness.mark("consumer", True)
    assert readiness.ready()


def test_a_check_that_raises_or_has_not_answered_yet_fails() -> None:
    def broker() -> bool:
        raise TimeoutError("no answer")

    readiness = Readiness(interval_s=3600)
    readiness.add("slow", lambda: True)
    assert readiness._answers == {}  # nothing asked yet: not ready
    readiness.add("broker", broker)
    readiness.refresh()
    assert readiness.report() == {"slow": True, "broker": False}


def test_checks_run_in_the_background_once_reported() -> None:
    asked = threading.Event()
    readiness = Readiness(interval_s=0.01)

    def database() -> bool:
        asked.set()
        return True

    readiness.add("database", database)
    readiness.report()  # starts the refresher; answers at once
    assert asked.wait(timeout=5)
    deadline = time.monotonic() + 5
    while not readiness.ready():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_healthz_is_503_naming_the_failing_check_and_metrics_are_served() -> None:
    [port] = free_ports(1)
    readiness = Readiness()
    up = [False]
    readiness.add("database", lambda: up[0])
    readiness.refresh()
    server = serve_health("event_store", "127.0.0.1", port, readiness)
    try:
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert json.loads(body) == {
            "status": "unready",
            "service": "event_store",
            "checks": {"database": False},
        }
        up[0] = True
        readiness.refresh()
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"# TYPE" in body
        status, body = get(f"http://127.0.0.1:{port}/nowhere")
        assert status == 404
        assert json.loads(body)["error"]["code"] == "not_found"
    finally:
        server.shutdown()


def test_a_port_in_use_is_a_clear_exit() -> None:
    [port] = free_ports(1)
    server = serve_health("router", "127.0.0.1", port, Readiness())
    try:
        with pytest.raises(SystemExit, match=f"router: cannot serve /metrics on 127.0.0.1:{port}"):
            serve_health("router", "127.0.0.1", port, Readiness())
    finally:
        server.shutdown()


async def test_resources_are_released_in_reverse_order_when_the_worker_stops() -> None:
    [port] = free_ports(1)
    released: list[str] = []

    async def body(context: WorkerContext) -> None:
        for name in ("pool", "producer", "consumer"):

            async def release(name: str = name) -> None:
                released.append(name)

            context.resources.push_async_callback(release)
        os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator sends
        await asyncio.wait_for(context.stop.wait(), timeout=5)

    await run_worker("test-worker", get_settings(), body, metrics_port=port)
    assert released == ["consumer", "producer", "pool"]


async def test_a_failing_body_still_releases_and_raises() -> None:
    [port] = free_ports(1)
    released: list[str] = []

    async def body(context: WorkerContext) -> None:
        async def release() -> None:
            released.append("pool")

        context.resources.push_async_callback(release)
        raise RuntimeError("fatal consumer error")

    with pytest.raises(RuntimeError, match="fatal consumer error"):
        await run_worker("test-worker", get_settings(), body, metrics_port=port)
    assert released == ["pool"]
    # The health server is gone with the worker: the port is free again.
    serve_health("again", "127.0.0.1", port, Readiness()).shutdown()


async def test_stopped_while_connecting_is_a_clean_exit() -> None:
    [port] = free_ports(1)

    async def body(context: WorkerContext) -> None:
        raise StopRequestedError("connect")

    await run_worker("test-worker", get_settings(), body, metrics_port=port)
